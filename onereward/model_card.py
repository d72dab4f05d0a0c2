"""The export's README.md: how to load it with stock diffusers, and what produced it.

Deterministic text (no dates, sorted keys), so the same inputs give the same card bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from onereward.export import CardInfo, Tuned


def _yaml(obj) -> str:
    return yaml.safe_dump(obj, sort_keys=True, default_flow_style=False).rstrip()


def _loading(meta: dict) -> str:
    if meta["full_pipeline"]:
        load = """pipe = FluxFillPipeline.from_pretrained("PATH/TO/EXPORT", dtype=torch.float32)"""
    else:
        load = (f"""transformer = FluxTransformer2DModel.from_pretrained("PATH/TO/EXPORT", subfolder="transformer", dtype=torch.bfloat16)
pipe = FluxFillPipeline.from_pretrained("{meta['base_model']}", transformer=transformer, dtype=torch.bfloat16)""")
    text = f"""```python
import torch
from diffusers import FluxFillPipeline, FluxTransformer2DModel

{load}
image = pipe(prompt="a red kite", image=image, mask_image=mask, height=image.height, width=image.width,
             guidance_scale=1.0, num_inference_steps=50, generator=torch.Generator().manual_seed(0)).images[0]
```

`FluxFillPipeline` itself has no true CFG; the official defaults below (negative prompt "nsfw", true
CFG 4.0 with both passes batched) are what `onereward fill --model PATH/TO/EXPORT ...` runs."""
    if meta.get("lora"):
        text += f"""

The LoRA in `{meta['lora']}` is the same update as an adapter for the **base** model (it is already
merged into `transformer/`; do not load it on top of this export):

```python
pipe = FluxFillPipeline.from_pretrained("{meta['base_model']}")
pipe.load_lora_weights("PATH/TO/EXPORT/lora")
```"""
    return text


def _files(root: Path) -> str:
    rows = ["| file | bytes |", "|---|---|"]
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "README.md"):
        rows.append(f"| `{f.relative_to(root).as_posix()}` | {f.stat().st_size} |")
    return "\n".join(rows)


def render_card(meta: dict, tuned: "Tuned", card: "CardInfo", skipped: list[str], root: Path) -> str:
    summary = tuned.summary or {}
    rl_metrics = summary.get("metrics")
    metrics = dict(card.metrics)
    if rl_metrics:
        metrics["train_policy.json (RL validation reward vs the frozen base)"] = rl_metrics
    front = {
        "library_name": "diffusers",
        "base_model": meta["base_model"],
        "pipeline_tag": "image-to-image",
        "tags": ["onereward", "flux", "inpainting", "outpainting", "object-removal"],
    }
    versions = {"code (sha256 of the upstream stages' code dependencies in dvc.lock)": card.code_version, "data and models (dvc.lock md5 of stage outputs)": card.data_versions}
    parts = [
        "---\n" + _yaml(front) + "\n---",
        "# OneReward FLUX.1-Fill policy (exported by the `export` stage)",
        f"A FLUX.1-Fill policy trained with OneReward RL (arXiv 2508.21066) by this project's pipeline: "
        f"base `{meta['base_model']}`, fine-tuning `{meta['finetune']}`, **{meta['weights']}** weights, "
        f"dtype {meta['dtype']}. Profile `{card.params.get('profile', {}).get('name', '?')}`"
        + (" (tiny models built in code: a pipeline demonstration, not a useful image model)."
           if card.params.get("profile", {}).get("name") == "tiny" else "."),
        "## Load with stock diffusers",
        _loading(meta),
        "## Inference defaults (official OneReward repository)",
        "negative prompt \"nsfw\", true CFG 4.0 (pred = neg + 4.0 * (pos - neg), both passes in one batch), "
        "guidance_scale 1.0, 50 steps, seed 0, output size = input size. Task presets: object removal uses the "
        "prompt \"remove\", image extend without a prompt uses \"high-definition, perfect composition\".",
        "## Judge",
        (f"`{meta['judge']}` is the reward model the policy was trained against"
         + (f" (base `{card.judge_base}`)" if card.judge_base else "")
         + "; load it with `onereward.judge.model.Judge.load` or, being a Qwen2.5-VL (PEFT adapter or full model), "
           "with stock transformers/peft." if meta.get("judge") else "Not included."),
        "## Versions",
        "```yaml\n" + _yaml(versions) + "\n```",
        "## Parameters",
        "```yaml\n" + _yaml(card.params) + "\n```",
        "## Metrics",
        ("```json\n" + json.dumps(metrics, indent=2, sort_keys=True) + "\n```") if metrics else "None recorded.",
        "Evaluation against the base (judge-scored GSB, Table 2 analogue) is in `reports/paper_tables.md` "
        "of the same commit; those numbers are scored by the judge above, not by human raters.",
        "## Files",
        _files(root) + "\n\n`sha256sum -c SHA256SUMS` verifies every file.",
    ]
    if skipped:
        parts.append("Not exported (pickled or training state): " + ", ".join(f"`{s}`" for s in skipped))
    return "\n\n".join(parts) + "\n"
