"""The ``onereward`` command: a small dispatcher.

    onereward fill --image in.png --mask mask.png --prompt "a red kite" --output out.png
    onereward fill --task removal --image in.png --mask mask.png --output out.png
    onereward plan --gpus 8 --resolution 512   (memory per GPU at real scale, see onereward.plan)
    onereward judge ...            (delegates to ``python -m onereward.judge.cli`` when present)

``fill`` uses the official OneReward inference defaults (true CFG 4.0 with negative prompt
"nsfw", both passes batched; guidance 1.0; 50 steps; seed 0 on a CPU generator, also on GPU;
512 T5 tokens per prompt; output size = input size): for the same inputs and seed it gives
the official pipeline's image, and at true CFG 1 stock FluxFillPipeline's.
Bad inputs end with one line on stderr and exit status 2; see :mod:`onereward.fill` for the
rules and the automatic padding of sizes that are not a multiple of 16.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from onereward.config import ParamsError
from onereward.fill import (
    MAX_SEQUENCE_LENGTH,
    FillInputError,
    known_tasks,
    prepare_inputs,
    read_image,
    resolve_model,
    resolve_prompt,
)

DEFAULT_MODEL = "data/export"
EXIT_INPUT, EXIT_FAILED = 2, 1


def _fill_parser(sub) -> None:
    p = sub.add_parser("fill", help="generate inside a mask (fill, extend, removal)",
                       description="Mask-guided generation with true classifier-free guidance (OneReward defaults).")
    p.add_argument("--image", required=True, help="input image (any format Pillow reads)")
    p.add_argument("--mask", required=True, help="mask of the same size: white (255) = generate, black (0) = keep")
    p.add_argument("--prompt", default=None, help="what to generate; required for --task fill")
    p.add_argument("--output", required=True, help="where to write the result (.png, .jpg, .webp)")
    p.add_argument("--task", default="fill", choices=known_tasks(),
                   help="task preset: removal and prompt-less extend use the registry's fixed prompts (default: fill)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="FLUX.1-Fill pipeline folder or hub id, or an export folder (default: data/export)")
    p.add_argument("--transformer", default=None,
                   help="replace the pipeline's transformer (a diffusers transformer folder, e.g. the published OneReward one)")
    p.add_argument("--lora", default=None, help="LoRA (pytorch_lora_weights.safetensors or its folder) fused into the transformer")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default: 50)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument("--true-cfg", type=float, default=4.0, help="true CFG scale; 1 disables the negative pass (default: 4.0)")
    p.add_argument("--guidance", type=float, default=1.0, help="FLUX guidance-embedding value (default: 1.0)")
    p.add_argument("--negative-prompt", default="nsfw", help='negative prompt of true CFG (default: "nsfw")')
    p.add_argument("--max-sequence-length", type=int, default=MAX_SEQUENCE_LENGTH,
                   help=f"T5 tokens per prompt, as the pipeline's max_sequence_length (default: {MAX_SEQUENCE_LENGTH})")
    p.add_argument("--binarize", action="store_true", help="threshold a soft mask at 128 instead of rejecting it")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected failure")
    p.set_defaults(run=run_fill)


def _check_output(path: str) -> Path:
    from PIL import Image

    out = Path(path)
    if out.suffix.lower() not in Image.registered_extensions():
        raise FillInputError(f"cannot write {out}: unknown image extension {out.suffix!r} (use .png, .jpg or .webp)")
    if out.is_dir():
        raise FillInputError(f"output {out} is a directory; give a file name")
    return out


def run_fill(args: argparse.Namespace) -> int:
    # Everything a user can get wrong is checked before torch is imported.
    image, mask = read_image(args.image, "image"), read_image(args.mask, "mask")
    inputs = prepare_inputs(image, mask, binarize=args.binarize)
    prompt = resolve_prompt(args.task, args.prompt)
    if args.task == "removal" and args.prompt:
        print(f"onereward fill: note: removal ignores --prompt and uses {prompt!r}", file=sys.stderr)
    out = _check_output(args.output)
    if args.steps < 1:
        raise FillInputError(f"--steps must be >= 1, got {args.steps}")
    if args.true_cfg < 1:  # the official pipeline switches CFG off at <= 1; below 1 would be a silent no-op
        raise FillInputError(f"--true-cfg must be >= 1 (1 disables the negative pass), got {args.true_cfg}")
    if not 1 <= args.max_sequence_length <= MAX_SEQUENCE_LENGTH:
        raise FillInputError(f"--max-sequence-length must be in 1..{MAX_SEQUENCE_LENGTH}, got {args.max_sequence_length}")
    if args.model == DEFAULT_MODEL and not Path(DEFAULT_MODEL).exists():
        raise FillInputError(f"{DEFAULT_MODEL} not found: run `dvc repro export` or pass --model")
    resolve_model(args.model, args.transformer)  # a wrong path fails here, before any loading
    if inputs.padded:
        h, w = inputs.size
        print(f"onereward fill: note: {w}x{h} is not a multiple of 16; padded to "
              f"{inputs.image.shape[1]}x{inputs.image.shape[0]} and cropped back", file=sys.stderr)

    import torch
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    from onereward.fill import fill, load_policy
    from onereward.policy.inference import InferenceConfig

    dlog.disable_progress_bar()  # one result line, not loader bars
    tlog.disable_progress_bar()

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    try:
        policy = load_policy(args.model, args.transformer, args.lora, device, dtype, args.max_sequence_length)
    except FillInputError:
        raise
    except (OSError, ValueError) as e:  # missing or malformed model files
        raise FillInputError(f"cannot load model {args.model}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    cfg = InferenceConfig(negative_prompt=args.negative_prompt, true_cfg=args.true_cfg,
                          guidance_scale=args.guidance, num_inference_steps=args.steps, seed=args.seed)
    result = fill(policy, inputs, prompt, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.save(out)
    print(f"onereward fill: wrote {out} ({result.width}x{result.height}, task {args.task}, prompt {prompt!r})")
    return 0


def run_judge(argv: list[str]) -> int:
    """Hand every argument after ``judge`` to the judge's own command, untouched."""
    try:
        mod = importlib.import_module("onereward.judge.cli")
    except ModuleNotFoundError as e:
        if e.name != "onereward.judge.cli":
            raise
        print("onereward judge: error: the judge command is not available in this version "
              "(onereward.judge.cli)", file=sys.stderr)
        return EXIT_INPUT
    return int(mod.main(argv) or 0)


def _plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="memory per GPU of train_policy and train_judge at real scale (arithmetic)",
                       description="Bytes per GPU of weights, gradients, optimiser, EMA, reference, judge and "
                                   "activations, from the real architectures on the meta device (no download).")
    from onereward.plan import add_arguments

    add_arguments(p)
    p.set_defaults(run=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from onereward.plan import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onereward", description="OneReward: mask-guided generation and its judge.")
    sub = parser.add_subparsers(dest="command", required=True)
    _fill_parser(sub)
    _plan_parser(sub)
    sub.add_parser("judge", help="the judge's own command (python -m onereward.judge.cli ARGS)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["judge"]:  # delegated before parsing: its options are its own
        return run_judge(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (FillInputError, ParamsError) as e:
        print(f"onereward {args.command}: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"onereward {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # never a raw traceback from deep inside the model
        if getattr(args, "debug", False):
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"onereward {args.command}: error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
