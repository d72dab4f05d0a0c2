"""params.yaml `evaluate`: every knob of the evaluation stage, typed and documented."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EvaluateConfig:
    """Benchmark size, generation settings and the decision rules of the reports."""

    split: str = "test"
    """Held-out split the benchmark is drawn from (never seen by the judge or the policy)."""
    per_setting: int = 4
    """Inputs per evaluation setting (registry EVAL_SETTINGS), the first by key; 0: all.
    The paper: 130 fill, 200 extend (half with prompt), 100 removal."""
    seed: int = 0
    """Base seed; each input's noise seed is derived from it and the input key, so base and
    tuned (and any batch composition) draw the same noise for the same input."""
    num_inference_steps: int = 50
    """Denoising steps for both models (official default 50; the tiny profile uses fewer)."""
    true_cfg: float = 4.0
    """True CFG scale (official 4.0)."""
    guidance_scale: float = 1.0
    """FLUX guidance-embedding value (official 1.0)."""
    negative_prompt: str = "nsfw"
    """Negative prompt of true CFG (official "nsfw")."""
    gsb_margin: float = 0.05
    """GSB rule: Good if the mean symmetric preference for tuned over base exceeds 0.5 + margin,
    Bad if below 0.5 - margin, Same otherwise."""
    rater_margin: float = 0.02
    """Rater GSB rule: Good if the tuned output's rater score (mean over its task's dimensions)
    exceeds the base's by more than this, Bad if it falls short by more, Same otherwise; also the
    smallest rater difference counted when the judge's agreement with the rater is measured."""
    usable_share: float = 0.5
    """Usability rule: an output is usable if, on every dimension of its task, the judge prefers
    it to at least this share of the input's annotated candidates."""
    judge_batch_size: int = 16
    """Image pairs per judge forward."""
    grid_scale: int = 2
    """Integer upscaling of images in the PNG grids (nearest neighbour)."""
    grid_rows: int = 12
    """Inputs shown per setting in the PNG grids (the first by key); the tables use all."""
    workers: int = 1
    """Processes generating and judging the inputs on CPU (each input is computed on its own, so
    the reports do not depend on it); on an accelerator the stage runs in one process."""

    def __post_init__(self):
        if not 0.0 <= self.gsb_margin < 0.5:
            raise ValueError(f"evaluate.gsb_margin must be in [0, 0.5), got {self.gsb_margin}")
        if not 0.0 < self.usable_share <= 1.0:
            raise ValueError(f"evaluate.usable_share must be in (0, 1], got {self.usable_share}")
        if min(self.num_inference_steps, self.grid_scale, self.grid_rows, self.workers) < 1 or self.per_setting < 0:
            raise ValueError("evaluate: num_inference_steps, grid_scale, grid_rows and workers must be >= 1, per_setting >= 0")

    def to_dict(self) -> dict:
        return asdict(self)
