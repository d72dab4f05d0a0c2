"""Export the tuned policy so stock diffusers loads it, with its judge, a model card and checksums.

Layout of the export folder (``full_pipeline: true``, the tiny profile's default)::

    model_index.json, scheduler/, vae/, text_encoder*/, tokenizer*/   the base pipeline's parts
    transformer/            tuned FluxTransformer2DModel (config.json + safetensors; LoRA merged in)
    lora/pytorch_lora_weights.safetensors   only when trained with LoRA: the adapter for the *base*
    judge/                  the trained judge (PEFT adapter or full model) with judge.json
    export.json             what was exported (base model, weights, finetune mode, dtype)
    README.md               model card: loading code, params, code/data versions, metrics
    SHA256SUMS              ``sha256sum -c SHA256SUMS`` checks every other file

With ``full_pipeline: false`` (the real profile: no copy of the 12B base) only ``transformer/``
and the rest are written, the layout of the published OneReward transformer.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from onereward.io import canonical_safetensors, dumps_json

WEIGHTS = ("ema", "live")
LORA_FILE = "pytorch_lora_weights.safetensors"
# Never shipped: pickled weights and training state.
_SKIP_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class ExportConfig:
    """params.yaml `export`."""

    weights: str = "ema"
    """'ema': ship train_policy's EMA weights (falls back to the live ones when there is no EMA);
    'live': the optimiser's weights at the last step."""
    full_pipeline: bool = True
    """Write a complete FluxFillPipeline folder (base parts + tuned transformer). False: only the
    transformer (and LoRA), loaded on top of the base by its id; use it for FLUX.1-Fill-dev."""
    include_judge: bool = True
    """Copy the trained judge (adapter or full model) into ``judge/``."""

    def __post_init__(self):
        if self.weights not in WEIGHTS:
            raise ValueError(f"export.weights must be one of {WEIGHTS}, got {self.weights!r}")


@dataclass(frozen=True)
class Tuned:
    """Where the tuned weights are and what kind they are."""

    kind: str
    """'full' (a transformer folder) or 'lora' (a LoRA safetensors file for the base)."""
    path: Path
    weights: str
    """Which weights were found: 'ema' or 'live'."""
    lora_config: dict | None = None
    """LoraConfig kwargs (r, lora_alpha, target_modules) from train_policy.json, if known."""
    summary: dict | None = None
    """train_policy.json as written by the train_policy stage (config and metrics)."""


def find_tuned(tuned: str | Path, weights: str = "ema") -> Tuned:
    """Locate the weights in a train_policy output (or a pipeline / transformer folder)."""
    root = Path(tuned)
    summary = json.loads((root / "train_policy.json").read_text()) if (root / "train_policy.json").is_file() else None
    lora_cfg = None
    if summary and summary.get("config", {}).get("finetune") == "lora":
        spec = summary["config"].get("lora", {})
        lora_cfg = {"r": int(spec["rank"]), "lora_alpha": float(spec["alpha"]),
                    "target_modules": sorted(spec["target_modules"])}

    def pick(live: str, ema: str) -> tuple[Path, str]:
        if weights == "ema" and (root / ema).exists():
            return root / ema, "ema"
        return root / live, "live"

    if (root / "lora").is_dir() or (root / "lora_ema").is_dir():
        d, used = pick("lora", "lora_ema")
        return Tuned("lora", d / LORA_FILE, used, lora_cfg, summary)
    if (root / "transformer").is_dir():
        d, used = pick("transformer", "transformer_ema")
        return Tuned("full", d, used, None, summary)
    if (root / "config.json").is_file():
        return Tuned("full", root, "live", None, summary)
    if (root / LORA_FILE).is_file():
        return Tuned("lora", root / LORA_FILE, "live", lora_cfg, summary)
    raise FileNotFoundError(f"no tuned weights under {root}: expected transformer/, lora/ or {LORA_FILE}")


def _base_transformer_source(base: str) -> dict:
    return {"pretrained_model_name_or_path": base, "subfolder": "transformer"}


def write_lora(tuned: Tuned, dest: Path) -> None:
    """Re-save the LoRA with its LoraConfig as safetensors metadata (stock loaders then scale it right)."""
    from diffusers import FluxFillPipeline

    state = load_file(str(tuned.path))
    layers = {k.removeprefix("transformer."): v for k, v in state.items()}
    FluxFillPipeline.save_lora_weights(dest, transformer_lora_layers=layers,
                                       transformer_lora_adapter_metadata=tuned.lora_config)
    canonical_safetensors(Path(dest) / LORA_FILE)  # same bytes in every process


def tuned_transformer(base: str, tuned: Tuned, lora_dir: Path | None, dtype: torch.dtype):
    """The tuned FluxTransformer2DModel; a LoRA is loaded with stock diffusers and fused."""
    from diffusers import FluxTransformer2DModel

    if tuned.kind == "full":
        return FluxTransformer2DModel.from_pretrained(str(tuned.path), dtype=dtype, use_safetensors=True)
    tr = FluxTransformer2DModel.from_pretrained(**_base_transformer_source(base), dtype=torch.float32, use_safetensors=True)
    tr.load_lora_adapter(str(lora_dir), prefix="transformer", weight_name=LORA_FILE)
    tr.fuse_lora(lora_scale=1.0)
    tr.unload_lora()  # fused weights stay; the adapter modules go
    return tr if dtype == torch.float32 else tr.to(dtype)


def copy_model_dir(src: Path, dest: Path) -> list[str]:
    """Copy a model folder without pickled weights or training state; returns what was skipped."""
    skipped = []
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = f.relative_to(src)
        if f.suffix in _SKIP_SUFFIXES or any(part.startswith((".", "checkpoint")) for part in rel.parts):
            skipped.append(rel.as_posix())
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest / rel)
    return skipped


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(root: Path, name: str = "SHA256SUMS") -> dict[str, str]:
    """``sha256sum`` format over every file but itself, sorted by path."""
    sums = {f.relative_to(root).as_posix(): sha256(f) for f in sorted(root.rglob("*")) if f.is_file() and f.name != name}
    (root / name).write_text("".join(f"{h}  {p}\n" for p, h in sorted(sums.items())))
    return sums


def verify_checksums(root: str | Path, name: str = "SHA256SUMS") -> list[str]:
    """Paths whose bytes no longer match (empty: all good)."""
    root = Path(root)
    bad = []
    for line in (root / name).read_text().splitlines():
        h, p = line.split("  ", 1)
        if not (root / p).is_file() or sha256(root / p) != h:
            bad.append(p)
    return bad


CODE_FOLDERS = ("onereward/", "stages/", "templates/")
"""Dependencies under these folders are code; the rest of a stage's dependencies are data and params."""


def code_version(lock: Path = Path("dvc.lock"), stage: str = "export") -> str:
    """sha256 over the code dependencies (path and md5) that dvc.lock records for the stages
    ``stage`` is built from: the code that made its weights and data.

    From dvc.lock, not the git commit: the commit that records an export's hash in dvc.lock cannot
    be named inside that export, so a card holding it would never regenerate byte for byte in a
    fresh clone. Read from the lock, not from the files: an edit to code these stages do not run
    (or that has not run yet) changes nothing here, as it changes nothing in the weights. The
    export stage depends on every code folder in dvc.yaml, so it re-runs whenever this can change."""
    if not lock.is_file():
        return "unavailable (no dvc.lock)"
    lines = sorted(f"{name} {d['path']} {d.get('md5', '?')}\n" for name, st in _upstream_stages(lock, stage).items()
                   for d in st.get("deps", []) if d["path"].startswith(CODE_FOLDERS))
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def data_versions(lock: Path = Path("dvc.lock"), stage: str = "export") -> dict[str, dict[str, str]]:
    """Per stage whose outputs ``stage`` reads directly: output path -> md5, as dvc.lock records it.

    Direct inputs only: DVC re-runs ``stage`` when one of those changes, so the card never lags the
    lock. An older ancestor's output (a plot, a stats report) can change while these stay the same,
    and a card naming it would then differ between a fresh clone and the tree that made it."""
    return {name: {o["path"]: o.get("md5", "?") for o in st.get("outs", [])}
            for name, st in sorted(_upstream_stages(lock, stage, direct=True).items()) if st.get("outs")}


def _upstream_stages(lock: Path, stage: str, direct: bool = False) -> dict[str, dict]:
    """dvc.lock's entries of the ancestors of ``stage``: stages whose outputs are (or hold, or lie
    in) a dependency of it or of another ancestor. Only those: the entry of a stage downstream
    (the headline of the run before) would make the card, and with it the export's hash, depend
    on the previous run, and a fresh clone would never reproduce it. ``direct``: only the stages
    whose outputs ``stage`` reads itself. ``stage``'s own dependencies
    come from dvc.yaml beside the lock (its lock entry is the run before's, or none on a first
    run), else from its lock entry."""
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}
    spec = lock.with_name("dvc.yaml")
    if spec.is_file():
        own = (yaml.safe_load(spec.read_text()) or {}).get("stages", {}).get(stage, {}).get("deps", [])
        deps = [d for d in own if isinstance(d, str) and "${" not in d]
    else:
        deps = [d["path"] for d in stages.get(stage, {}).get("deps", [])]

    def feeds(out: str, dep: str) -> bool:
        return out == dep or dep.startswith(out.rstrip("/") + "/") or out.startswith(dep.rstrip("/") + "/")

    found = {}
    while deps:
        new = {name: st for name, st in stages.items() if name != stage and name not in found
               and any(feeds(o["path"], d) for o in st.get("outs", []) for d in deps)}
        found.update(new)
        deps = [] if direct else [d["path"] for st in new.values() for d in st.get("deps", [])]
    return found


def export(base: str, tuned: Tuned, judge: Path | None, out: Path, cfg: ExportConfig, dtype: torch.dtype,
           card: "CardInfo") -> dict:
    """Write the export into ``out`` (an empty or missing folder); returns export.json's contents."""
    from diffusers import FluxFillPipeline

    out.mkdir(parents=True, exist_ok=True)
    lora_dir = None
    if tuned.kind == "lora":
        lora_dir = out / "lora"
        write_lora(tuned, lora_dir)
    transformer = tuned_transformer(base, tuned, lora_dir, dtype)
    if cfg.full_pipeline:
        pipe = FluxFillPipeline.from_pretrained(base, transformer=transformer, dtype=dtype, use_safetensors=True)
        pipe.save_pretrained(str(out), safe_serialization=True)
    else:
        transformer.save_pretrained(str(out / "transformer"), safe_serialization=True)
    skipped = []
    if judge is not None and cfg.include_judge:
        skipped = [f"judge/{s}" for s in copy_model_dir(judge, out / "judge")]
    meta = {
        "base_model": base,
        "full_pipeline": cfg.full_pipeline,
        "finetune": tuned.kind,
        "weights": tuned.weights,
        "dtype": str(dtype).removeprefix("torch."),
        "lora": "lora/" + LORA_FILE if lora_dir else None,
        "judge": "judge/" if judge is not None and cfg.include_judge else None,
        "export_config": asdict(cfg),
    }
    (out / "export.json").write_text(dumps_json(meta))
    from onereward.model_card import render_card

    (out / "README.md").write_text(render_card(meta, tuned, card, skipped, out))
    write_checksums(out)
    return meta


@dataclass(frozen=True)
class CardInfo:
    """What the model card reports besides the export itself."""

    params: dict
    """params.yaml sections that shaped the model (profile, training stages, export)."""
    code_version: str
    """Digest of the upstream stages' code as dvc.lock records it (:func:`code_version`)."""
    data_versions: dict
    """dvc.lock: stage -> output -> md5."""
    metrics: dict
    """Metrics file path -> contents (judge accuracy, RL rewards), when present."""
    judge_base: str | None = None
    """Base model of the judge."""
