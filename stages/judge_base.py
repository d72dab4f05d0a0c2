"""Stage `judge_base`: the judge's base checkpoint at ``data/models/judge_base``.

Tiny profile: build the random-init Qwen2.5-VL and its tokenizer in code and save them
(safetensors) so every later stage loads them by path. Real profile: write only a pointer
(``judge.json``) to the profile's model id or path; nothing is downloaded here.
"""

from dataclasses import dataclass, field
from pathlib import Path

from onereward.io import atomic_path
from onereward.judge.model import JudgeMeta
from onereward.judge.params import judge_section
from onereward.judge.tiny import TinyJudgeConfig, save_tiny_judge

OUT = Path("data/models/judge_base")


@dataclass(frozen=True)
class JudgeBaseConfig:
    """params.yaml `judge_base`."""

    resolution: int = 448
    """Side a square image is resized to (a multiple of 2 x the patch size: 28 for Qwen2.5-VL)."""
    min_pixels: int = 0
    """Fewest pixels of an image as the judge sees it, aspect ratio kept (0: ``resolution**2``)."""
    max_pixels: int = 0
    """Most pixels of an image as the judge sees it (0: ``resolution**2``)."""

    def meta(self, **kw) -> JudgeMeta:
        return JudgeMeta(resolution=self.resolution, min_pixels=self.min_pixels or None,
                         max_pixels=self.max_pixels or None, **kw)
    tiny: TinyJudgeConfig = field(default_factory=TinyJudgeConfig)
    """Sizes and seed of the tiny judge (tiny profile only)."""


def main() -> None:
    cfg, profile = judge_section(JudgeBaseConfig, "judge_base")
    factor = 2 * (cfg.tiny.patch_size if profile.is_tiny else 14)  # a merged 2x2 of patches
    if cfg.resolution % factor:
        raise SystemExit(f"judge_base.resolution must be a multiple of {factor}, got {cfg.resolution}")
    low, high = cfg.meta().pixels()
    if not factor * factor <= low <= high:
        raise SystemExit(f"judge_base: need {factor * factor} <= min_pixels <= max_pixels, got {low} and {high}")
    with atomic_path(OUT) as tmp:
        tmp.mkdir()
        if profile.is_tiny:
            if Path(profile.judge_model) != OUT:
                raise SystemExit(f"tiny profile: judge_model must be {OUT}, got {profile.judge_model}")
            save_tiny_judge(cfg.tiny, tmp)
            cfg.meta().write(tmp)
        else:
            cfg.meta(base=profile.judge_model).write(tmp)
    print(f"judge_base: {'tiny judge' if profile.is_tiny else 'pointer to ' + profile.judge_model} at {OUT}")


if __name__ == "__main__":
    main()
