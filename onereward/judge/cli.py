"""Score one pair of image files with the judge and print P(Yes).

    python -m onereward.judge.cli --judge data/models/judge --task fill --dimension consistency \
        first.png second.png [--prompt "a red car"] [--symmetric]

P(Yes) is the probability that the first image is better than the second on the dimension
(softmax over the answer tokens {Yes, No}). ``--symmetric`` prints the order-free score
mean(P(Yes | first, second), P(No | second, first)) instead.
"""

from __future__ import annotations

import argparse
import sys

from PIL import Image

from onereward.judge.queries import TEMPLATES_FILE, render_query
from onereward.tasks import DIMENSIONS, TASKS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m onereward.judge.cli", description=__doc__.split("\n\n")[0])
    p.add_argument("first", help="image file shown first")
    p.add_argument("second", help="image file shown second")
    p.add_argument("--judge", default="data/models/judge", help="judge directory or model id (default: %(default)s)")
    p.add_argument("--adapter", default=None, help="optional PEFT adapter directory on top of --judge")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--dimension", required=True, choices=sorted(DIMENSIONS))
    p.add_argument("--prompt", default=None, help="user prompt (used by text alignment only)")
    p.add_argument("--templates", default=str(TEMPLATES_FILE), help="query template file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--symmetric", action="store_true", help="print the order-symmetric score")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        query = render_query(args.task, args.dimension, args.prompt, templates=args.templates)
    except (KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from onereward.judge.model import Judge

    judge = Judge.load(args.judge, adapter=args.adapter, device=args.device, dtype=args.dtype)
    first, second = Image.open(args.first).convert("RGB"), Image.open(args.second).convert("RGB")
    if first.size != second.size:
        second = second.resize(first.size, Image.BICUBIC)  # the judge resizes both to one side anyway
    if args.symmetric:
        score = judge.symmetric_score([first], [second], [query])[0]
    else:
        score = judge.score([first], [second], [query])[0]
    print(f"{float(score):.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
