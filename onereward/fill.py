"""Mask-guided generation for users: checked inputs, any FLUX.1-Fill checkpoint, official defaults.

Input rules (each broken rule is a :class:`FillInputError` with a one-line message):

- image and mask must exist and be readable images; the mask must have the image's size;
- the mask is binary (0 = keep, 255 = generate); ``binarize=True`` thresholds a soft mask at
  > 127 instead (the data format's rule), e.g. a JPEG-compressed mask;
- the mask must select something;
- sizes that are not a multiple of 16 (FLUX: VAE factor 8, 2x2 packing) are fixed
  automatically: image and mask are padded at the bottom and right by repeating their edge
  pixels, generated, and the result is cropped back, so the output always has the input's size.

Torch and diffusers are imported only once the inputs pass, so bad inputs fail in a moment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from onereward.tasks import TASKS, generation_prompt, get_task, has_user_prompt

if TYPE_CHECKING:  # heavy imports stay lazy
    from onereward.policy.adapter import FillPolicy
    from onereward.policy.inference import InferenceConfig

SIZE_MULTIPLE = 16
MAX_SEQUENCE_LENGTH = 512
"""T5 tokens per prompt: FluxFillPipeline's and the official OneReward pipeline's default."""
EXPORT_META = "export.json"
"""Written by the export stage; names the base pipeline of a transformer-only export."""


class FillInputError(ValueError):
    """A problem with the user's inputs or model path, worded for a one-line message."""


@dataclass(frozen=True)
class FillInputs:
    """Validated inputs, padded to a multiple of 16."""

    image: np.ndarray
    """uint8 ``[H', W', 3]`` (padded)."""
    mask: np.ndarray
    """uint8 ``[H', W']`` with values 0 (keep) and 1 (generate) (padded)."""
    size: tuple[int, int]
    """(height, width) of the user's image: the output is cropped back to it."""

    @property
    def padded(self) -> bool:
        return self.image.shape[:2] != self.size


def read_image(path: str | Path, what: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FillInputError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError) as e:
        raise FillInputError(f"cannot read {what} {path}: {e}") from None


def prepare_inputs(image: Image.Image, mask: Image.Image, binarize: bool = False) -> FillInputs:
    """Check image and mask against the rules above; pad both to a multiple of 16."""
    if mask.size != image.size:
        raise FillInputError(
            f"mask size {mask.size[0]}x{mask.size[1]} differs from image size {image.size[0]}x{image.size[1]} (width x height)"
        )
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    grey = np.asarray(mask.convert("L"), dtype=np.uint8)
    levels = np.unique(grey)
    if not binarize and not set(levels.tolist()) <= {0, 255}:
        raise FillInputError(
            f"mask is not binary: {len(levels)} grey levels (expected 0 = keep, 255 = generate); "
            "pass --binarize to threshold it at 128"
        )
    binary = (grey > 127).astype(np.uint8)
    if not binary.any():
        raise FillInputError("mask selects nothing to generate (no pixel > 127)")
    h, w = binary.shape
    ph, pw = -h % SIZE_MULTIPLE, -w % SIZE_MULTIPLE
    if ph or pw:  # edge replication: the padded strip continues its neighbours, mask included
        rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge")
        binary = np.pad(binary, ((0, ph), (0, pw)), mode="edge")
    return FillInputs(rgb, binary, (h, w))


def resolve_prompt(task: str, prompt: str | None) -> str:
    """The generation prompt with the task preset; a fill without a prompt is an input error."""
    t = get_task(task)
    if t.prompt == "required" and not has_user_prompt(task, prompt):
        raise FillInputError(f"task {task!r} needs a prompt (--prompt); extend and removal work without one")
    return generation_prompt(task, prompt)


# ---- models ---------------------------------------------------------------------------------


def _transformer_dir(path: Path) -> Path:
    """A diffusers transformer folder, or a folder holding one in ``transformer/``."""
    if (path / "config.json").is_file():
        return path
    if (path / "transformer" / "config.json").is_file():
        return path / "transformer"
    raise FillInputError(f"no diffusers transformer (config.json) in {path} or {path}/transformer")


def resolve_model(model: str, transformer: str | None = None) -> tuple[str, str | None]:
    """(pipeline path or id, transformer folder or None) for a model argument.

    ``model`` may be a full pipeline folder (``model_index.json``), a transformer-only export
    (``transformer/`` plus ``export.json`` naming its base) or a hub id.
    """
    p = Path(model)
    looks_local = p.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1
    if not looks_local:
        return model, transformer  # a hub id such as black-forest-labs/FLUX.1-Fill-dev
    if not p.is_dir():
        raise FillInputError(f"model folder not found: {model} (run `dvc repro export` or pass --model)")
    if (p / "model_index.json").is_file():
        return model, transformer
    meta = p / EXPORT_META
    if meta.is_file() and (p / "transformer").is_dir():
        base = json.loads(meta.read_text()).get("base_model")
        if not base:
            raise FillInputError(f"{meta} names no base_model; pass the base pipeline as --model and this folder as --transformer")
        return resolve_model(base)[0], transformer or str(p / "transformer")
    raise FillInputError(f"{model} is neither a FLUX.1-Fill pipeline folder (model_index.json) nor an export")


def load_policy(model: str, transformer: str | None = None, lora: str | None = None,
                device: str = "cpu", dtype: str = "float32",
                max_sequence_length: int | None = None) -> "FillPolicy":
    """FillPolicy over a stock FluxFillPipeline, optionally with a replaced transformer and a LoRA.

    ``max_sequence_length``: T5 tokens per prompt. FLUX attends to the padding tokens too, so
    the length changes the image: the command passes the pipeline's own 512; None keeps
    FillPolicy's default (the tokenizer's length: 512 for FLUX.1-Fill-dev, 12 for the tiny
    model, the length it was trained and evaluated with).
    """
    import torch
    from diffusers import FluxFillPipeline, FluxTransformer2DModel

    from onereward.policy.adapter import DTYPES, FillPolicy

    torch_dtype = DTYPES[dtype]
    model, transformer = resolve_model(model, transformer)
    kwargs = {}
    if transformer:
        tdir = _transformer_dir(Path(transformer))
        kwargs["transformer"] = FluxTransformer2DModel.from_pretrained(str(tdir), dtype=torch_dtype, use_safetensors=True)
    pipe = FluxFillPipeline.from_pretrained(model, dtype=torch_dtype, use_safetensors=True, **kwargs)
    if lora:
        lp = Path(lora)
        if not lp.exists():
            raise FillInputError(f"LoRA not found: {lora}")
        if lp.is_file():
            pipe.load_lora_weights(str(lp.parent), weight_name=lp.name)
        else:
            pipe.load_lora_weights(str(lp))
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    for m in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        m.requires_grad_(False).eval()
    return FillPolicy(pipe, max_sequence_length=max_sequence_length)


def fill(policy: "FillPolicy", inputs: FillInputs, prompt: str, cfg: "InferenceConfig") -> Image.Image:
    """Generate with true CFG (``onereward.policy.inference.generate``) and crop to the input size.

    The last step is the pipeline's own (``image_processor.postprocess``), so the bytes match a
    stock or official pipeline call also in bfloat16 (it denormalises in the VAE's dtype).
    """
    import torch
    from diffusers.image_processor import VaeImageProcessor as vip

    from onereward.policy.inference import generate

    # Converted as the pipeline converts PIL inputs: same values and the same (channels-last)
    # memory layout, which the VAE's convolutions are sensitive to in the last bits.
    image = vip.numpy_to_pt(vip.pil_to_numpy(Image.fromarray(inputs.image)))
    mask = vip.numpy_to_pt(inputs.mask[None].astype(np.float32))
    latents = generate(policy, image, mask, [prompt], None, cfg, decode=False)
    ph, pw = inputs.image.shape[:2]
    with torch.no_grad():
        out = policy.pipe.image_processor.postprocess(policy.decode_raw(latents, ph, pw), output_type="pil")[0]
    h, w = inputs.size
    return out.crop((0, 0, w, h))


def known_tasks() -> list[str]:
    return list(TASKS)
