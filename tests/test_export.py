"""Export: layout, checksums, model card, LoRA scaling, and stock diffusers loading it without our code."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import yaml
from diffusers import FluxFillPipeline, FluxTransformer2DModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from onereward.export import CardInfo, ExportConfig, export, find_tuned, verify_checksums
from onereward.policy.tiny import build_tiny_pipeline, save_pipeline

LORA = {"rank": 4, "alpha": 8.0, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}  # scale 2, not 1


def _perturbed(base, seed: int) -> FluxTransformer2DModel:
    tr = FluxTransformer2DModel.from_pretrained(base, subfolder="transformer")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tr.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return tr


def _lora_output(base, dest, seed: int) -> None:
    """What train_policy writes for LoRA: stock save_lora_weights of the PEFT state dict."""
    tr = FluxTransformer2DModel.from_pretrained(base, subfolder="transformer")
    tr.add_adapter(LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], target_modules=LORA["target_modules"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    FluxFillPipeline.save_lora_weights(dest, transformer_lora_layers=get_peft_model_state_dict(tr))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    base = root / "base"
    save_pipeline(build_tiny_pipeline(seed=0), base)
    full = root / "rl_full"
    _perturbed(base, 1).save_pretrained(full / "transformer")
    _perturbed(base, 2).save_pretrained(full / "transformer_ema")
    (full / "train_policy.json").write_text(json.dumps({"config": {"finetune": "full"}, "metrics": {"val_reward_end": 0.61}}))
    lora = root / "rl_lora"
    _lora_output(base, lora / "lora", 3)
    _lora_output(base, lora / "lora_ema", 4)
    (lora / "train_policy.json").write_text(json.dumps({"config": {"finetune": "lora", "lora": LORA}, "metrics": {}}))
    judge = root / "judge"
    judge.mkdir()
    (judge / "judge.json").write_text(json.dumps({"adapter": True, "base": "data/models/judge_base", "resolution": 56}))
    (judge / "adapter_config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(judge / "adapter_model.safetensors"))
    torch.save({"step": 1}, judge / "optimizer.pt")  # training state: must not be shipped
    card = CardInfo(params={"profile": {"name": "tiny"}, "export": {"weights": "ema"}}, code_version="abc123",
                    data_versions={"shard": {"data/shards": "f00.dir"}}, metrics={"reports/x.json": {"acc": 71.5}},
                    judge_base="data/models/judge_base")
    outs = {}
    for kind, tuned in (("full", full), ("lora", lora)):
        outs[kind] = root / f"export_{kind}"
        export(str(base), find_tuned(tuned, "ema"), judge, outs[kind], ExportConfig(), torch.float32, card)
    return {"root": root, "base": base, "full": full, "lora": lora, **{f"out_{k}": v for k, v in outs.items()}}


def test_find_tuned_prefers_ema_and_falls_back(exported, tmp_path):
    assert find_tuned(exported["full"], "ema").path.name == "transformer_ema"
    assert find_tuned(exported["full"], "live").path.name == "transformer"
    t = find_tuned(exported["lora"], "ema")
    assert t.kind == "lora" and t.path.parent.name == "lora_ema" and t.lora_config["lora_alpha"] == 8.0
    with pytest.raises(FileNotFoundError):
        find_tuned(tmp_path, "ema")
    with pytest.raises(ValueError):
        ExportConfig(weights="best")


def test_full_export_layout_card_and_checksums(exported):
    out = exported["out_full"]
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"model_index.json", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
            "judge/judge.json", "judge/adapter_model.safetensors", "export.json", "README.md", "SHA256SUMS"} <= files
    assert "judge/optimizer.pt" not in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in files)
    meta = json.loads((out / "export.json").read_text())
    assert meta["finetune"] == "full" and meta["weights"] == "ema" and meta["lora"] is None
    shipped = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    ema = load_file(str(exported["full"] / "transformer_ema" / "diffusion_pytorch_model.safetensors"))
    assert shipped.keys() == ema.keys() and all(torch.equal(shipped[k], ema[k]) for k in ema)
    card = (out / "README.md").read_text()
    for needle in ("abc123", "data/shards: f00.dir", "weights: ema", "acc", "val_reward_end", "not by human raters",
                   "FluxFillPipeline.from_pretrained", "sha256sum -c SHA256SUMS", "judge/optimizer.pt"):
        assert needle in card, needle
    assert verify_checksums(out) == []
    sums = (out / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == len(files) - 1 and all(len(line.split("  ")[0]) == 64 for line in sums)


def test_checksums_catch_a_changed_file(exported, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported["out_full"], copy)
    with open(copy / "transformer" / "config.json", "a") as f:
        f.write(" ")
    assert verify_checksums(copy) == ["transformer/config.json"]


def test_lora_export_is_merged_with_the_trained_scale(exported):
    out = exported["out_lora"]
    assert json.loads((out / "export.json").read_text())["lora"] == "lora/pytorch_lora_weights.safetensors"
    with safe_open(str(out / "lora" / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert "lora_adapter_metadata" in f.metadata()
    src = load_file(str(exported["lora"] / "lora_ema" / "pytorch_lora_weights.safetensors"))
    base = load_file(str(exported["base"] / "transformer" / "diffusion_pytorch_model.safetensors"))
    merged = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    name = "transformer_blocks.0.attn.to_q"
    a, b = src[f"transformer.{name}.lora_A.weight"], src[f"transformer.{name}.lora_B.weight"]
    expected = base[f"{name}.weight"] + (LORA["alpha"] / LORA["rank"]) * b @ a
    assert torch.allclose(merged[f"{name}.weight"], expected, atol=1e-6)
    untouched = "transformer_blocks.0.ff.net.2.weight"  # not a LoRA target
    assert torch.equal(merged[untouched], base[untouched])


STOCK_SCRIPT = r"""
import importlib.abc, json, sys

class NoProjectCode(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "onereward" or name.startswith("onereward."):
            raise ImportError("the export must load without the project's package")

sys.meta_path.insert(0, NoProjectCode())
import torch
from diffusers import FluxFillPipeline, FluxTransformer2DModel

full, lora, base, png = sys.argv[1:5]
tr = FluxTransformer2DModel.from_pretrained(full, subfolder="transformer")
assert tr.config.in_channels == 384
image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
mask = torch.zeros(1, 1, 32, 48)
mask[..., 8:24, 8:40] = 1

def run(pipe, output_type="pt"):
    return pipe(prompt="a kite", image=image, mask_image=mask, height=32, width=48, num_inference_steps=2,
                guidance_scale=1.0, generator=torch.Generator().manual_seed(0), output_type=output_type).images

FluxFillPipeline.from_pretrained(full)(prompt="a kite", image=image, mask_image=mask, height=32, width=48,
    num_inference_steps=2, guidance_scale=1.0).images[0].save(png)
with_lora = FluxFillPipeline.from_pretrained(base)
with_lora.load_lora_weights(lora + "/lora")
print(json.dumps({
    "lora_vs_merged": float((run(with_lora) - run(FluxFillPipeline.from_pretrained(lora))).abs().max()),
    "base_vs_merged": float((run(FluxFillPipeline.from_pretrained(base)) - run(FluxFillPipeline.from_pretrained(lora))).abs().max()),
    "project_imported": any(m.split(".")[0] == "onereward" for m in sys.modules),
}))
"""


def test_stock_diffusers_loads_and_runs_the_export_without_project_code(exported, tmp_path):
    script = tmp_path / "load_export.py"
    script.write_text(STOCK_SCRIPT)
    png = tmp_path / "generated.png"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(script), str(exported["out_full"]), str(exported["out_lora"]), str(exported["base"]), str(png)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["project_imported"] is False
    assert result["lora_vs_merged"] < 1e-4  # stock LoRA loading on the base == our merged transformer
    assert result["base_vs_merged"] > 1e-3  # and the LoRA does change the output
    from PIL import Image

    assert Image.open(png).size == (48, 32)


def test_transformer_only_export_loads_on_its_base(exported, tmp_path):
    """The real profile's layout (full_pipeline: false): `onereward fill --model EXPORT` finds the base."""
    from onereward.fill import load_policy, resolve_model

    out = tmp_path / "export"
    card = CardInfo(params={}, code_version="x", data_versions={}, metrics={})
    export(str(exported["base"]), find_tuned(exported["full"], "live"), None, out,
           ExportConfig(full_pipeline=False), torch.float32, card)
    assert not (out / "model_index.json").exists() and (out / "transformer" / "config.json").is_file()
    assert resolve_model(str(out)) == (str(exported["base"]), str(out / "transformer"))
    policy = load_policy(str(out))
    live = load_file(str(exported["full"] / "transformer" / "diffusion_pytorch_model.safetensors"))
    state = policy.transformer.state_dict()
    assert all(torch.equal(state[k], v) for k, v in live.items())


def test_code_version_names_the_code_dvc_lock_records_not_the_commit(tmp_path):
    """The same lock gives the same card bytes in any clone; only upstream code that ran changes it."""
    from onereward.export import code_version, data_versions

    def lock(train_code: str, export_code: str, data: str = "d1", headline: str = "h1", side: str = "s1") -> Path:
        path = tmp_path / f"{train_code}-{export_code}-{data}-{headline}-{side}.lock"
        path.write_text(yaml.safe_dump({"schema": "2.0", "stages": {
            "prepare": {"deps": [{"path": "onereward/data", "md5": "p1"}], "outs": [{"path": "data/shards", "md5": data}]},
            "train": {"deps": [{"path": "onereward/rl", "md5": train_code}, {"path": "data/shards", "md5": data}],
                      "outs": [{"path": "data/models/policy_rl", "md5": "w1"}]},
            "export": {"deps": [{"path": "onereward/export.py", "md5": export_code},
                                {"path": "data/models/policy_rl/lora", "md5": "w1"}],
                       "outs": [{"path": "data/export", "md5": "x1"}]},
            "headline": {"deps": [{"path": "onereward/headline.py", "md5": headline}, {"path": "data/export", "md5": "x1"}],
                         "outs": [{"path": "reports/headline.json", "md5": headline}]},
            "side": {"deps": [{"path": "onereward/bench", "md5": side}], "outs": [{"path": "reports/bench.json", "md5": side}]}}}))
        return path

    a = code_version(lock("c1", "e1"))
    assert a.startswith("sha256:") and a == code_version(lock("c1", "e1"))
    assert code_version(lock("c1", "e2")) == a  # the export's own code: not what made the weights
    assert code_version(lock("c1", "e1", data="d2")) == a  # data: the card's data versions say it
    assert code_version(lock("c2", "e1")) != a
    # a stage downstream of the export (its entry is the run before's) or beside it: not in the card
    assert code_version(lock("c1", "e1", headline="h2")) == a and code_version(lock("c1", "e1", side="s2")) == a
    assert sorted(data_versions(lock("c1", "e1"))) == ["train"]  # the inputs it reads, also through a folder
    assert code_version(tmp_path / "none.lock").startswith("unavailable")


def test_export_stage_declares_every_input_its_card_names():
    """The card names upstream code by dvc.lock's hashes; unless the export stage depends on that code,
    an upstream edit that leaves the weights alone leaves a stale card, and a fresh clone differs."""
    from onereward.export import CODE_FOLDERS

    spec = yaml.safe_load((pathlib.Path(__file__).parents[1] / "dvc.yaml").read_text())["stages"]
    own = [d for d in spec["export"]["deps"] if isinstance(d, str)]
    upstream_code = {d for name, st in spec.items() if name != "export"
                     for d in st.get("deps", []) if isinstance(d, str) and d.startswith(CODE_FOLDERS)}
    assert upstream_code, "dvc.yaml has no code dependencies to check"
    missing = [d for d in upstream_code if not any(d == o or d.startswith(o.rstrip("/") + "/") for o in own)]
    assert not missing, missing
