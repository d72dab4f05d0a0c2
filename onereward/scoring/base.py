"""One shape for "something that scores images": the judge (the reward), the rater and the checks.

A scorer is a class with a ``name``, a ``kind`` and the sample fields it reads
(``required_fields``); calling it returns a :class:`ScoreOutput` with one ``[B]`` tensor per
dimension. Two kinds:

- :class:`PointwiseScorer`: each image alone, against its own sample's fields (ground truth,
  mask, ...). The rater and the checks are pointwise.
- :class:`PairwiseScorer`: image A against image B, a preference for A in [0, 1]. The judge is
  pairwise: OneReward's reward is P(Yes | A, B, query).

A new reward or rater is one class with ``@register_scorer("its_name")``; stages build it by
name with :func:`build_scorer`, so params and reports name the scorer behind every number.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

BUILTIN_MODULES = ("onereward.scoring.rater", "onereward.scoring.checks", "onereward.scoring.judge")
"""Modules whose scorers register on import; imported on the first registry lookup, so that
importing this module stays cheap (the judge's module loads transformers only when built)."""

_REGISTRY: dict[str, type["Scorer"]] = {}


@dataclass
class ScoreOutput:
    """Scores of one batch from one scorer."""

    scores: dict[str, torch.Tensor]
    """Dimension (or measure) name -> ``[B]`` float tensor on the images' device; NaN where it does
    not apply to a sample."""
    scorer: str = ""
    """Registry name of the scorer that made these numbers, for reports."""
    info: dict[str, Any] = field(default_factory=dict)
    """Extra per-sample diagnostics (raw errors before mapping to a score, counts), ``[B]`` tensors or lists."""

    def __post_init__(self):
        sizes = {k: tuple(v.shape) for k, v in self.scores.items()}
        if len({s for s in sizes.values()}) > 1 or any(len(s) != 1 for s in sizes.values()):
            raise ValueError(f"scorer {self.scorer!r}: every score must be a [B] tensor of one size, got {sizes}")

    @property
    def batch_size(self) -> int:
        return next(iter(self.scores.values())).shape[0] if self.scores else 0

    def overall(self) -> torch.Tensor:
        """``[B]`` mean over the dimensions that apply to each sample (NaN where none does)."""
        if not self.scores:
            return torch.zeros(0)
        return torch.stack(list(self.scores.values())).float().nanmean(dim=0)

    def rows(self) -> list[dict[str, float]]:
        """One ``{dimension: score}`` per sample, dimensions that do not apply left out."""
        out: list[dict[str, float]] = [{} for _ in range(self.batch_size)]
        for d, v in self.scores.items():
            for i, x in enumerate(v.tolist()):
                if not math.isnan(x):
                    out[i][d] = x
        return out


class Scorer(ABC):
    """Base of all scorers: a name, a kind, the sample fields it reads."""

    name: ClassVar[str] = ""
    """Registry name; set by :func:`register_scorer`."""
    kind: ClassVar[str] = ""
    """"pointwise" or "pairwise"."""
    required_fields: ClassVar[tuple[str, ...]] = ()
    """Sample fields (keyword arguments) every call must pass besides the images."""
    optional_fields: ClassVar[tuple[str, ...]] = ()
    """Sample fields a call may pass; any other keyword is refused."""

    def check_fields(self, fields: dict[str, Any], batch: int) -> None:
        """Refuse missing or unknown fields, and per-sample fields of the wrong length, in one line."""
        missing = [f for f in self.required_fields if fields.get(f) is None]
        if missing:
            raise ValueError(f"scorer {self.name!r} needs fields {missing}; given {sorted(fields)}")
        unknown = sorted(set(fields) - set(self.required_fields) - set(self.optional_fields))
        if unknown:
            raise ValueError(f"scorer {self.name!r} does not take fields {unknown}; "
                             f"it takes {list(self.required_fields + self.optional_fields)}")
        for f, v in fields.items():
            if v is not None and len(v) != batch:
                raise ValueError(f"scorer {self.name!r}: field {f!r} has {len(v)} entries for {batch} images")


class PointwiseScorer(Scorer):
    """Scores each image alone against its own sample's fields."""

    kind: ClassVar[str] = "pointwise"

    def __call__(self, images: torch.Tensor, **fields) -> ScoreOutput:
        """``images`` ``[B, 3, H, W]`` in [0, 1]; sample fields as keywords, one entry per image."""
        self.check_fields(fields, images.shape[0])
        return self.score(images, **fields)

    @abstractmethod
    def score(self, images: torch.Tensor, **fields) -> ScoreOutput:
        """Per-sample scores; fields already checked."""


class PairwiseScorer(Scorer):
    """Scores image A against image B: a preference for A in [0, 1], 0.5 = none."""

    kind: ClassVar[str] = "pairwise"

    def __call__(self, first: torch.Tensor, second: torch.Tensor, **fields) -> ScoreOutput:
        """``first``/``second`` ``[B, 3, H, W]`` in [0, 1]; sample fields as keywords."""
        if first.shape != second.shape:
            raise ValueError(f"scorer {self.name!r}: first {tuple(first.shape)} and second {tuple(second.shape)} differ")
        self.check_fields(fields, first.shape[0])
        return self.score(first, second, **fields)

    @abstractmethod
    def score(self, first: torch.Tensor, second: torch.Tensor, **fields) -> ScoreOutput:
        """Per-pair preferences for ``first``; fields already checked."""


def register_scorer(name: str):
    """Class decorator: make a scorer buildable by ``name``."""

    def decorator(cls: type[Scorer]) -> type[Scorer]:
        if not (isinstance(cls, type) and issubclass(cls, (PointwiseScorer, PairwiseScorer))):
            raise TypeError(f"register_scorer({name!r}): {cls!r} is not a PointwiseScorer or PairwiseScorer")
        other = _REGISTRY.get(name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"scorer name {name!r} is taken by {other.__module__}.{other.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def available_scorers() -> dict[str, str]:
    """Registered scorer names -> kind, sorted by name."""
    _load_builtins()
    return {n: _REGISTRY[n].kind for n in sorted(_REGISTRY)}


def scorer_class(name: str) -> type[Scorer]:
    """The class registered as ``name``, or one given as ``package.module.Class``."""
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if "." in name:
        module, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise KeyError(f"scorer {name!r} could not be imported: {e}") from None
        if isinstance(cls, type) and issubclass(cls, (PointwiseScorer, PairwiseScorer)):
            return cls
        raise KeyError(f"{name!r} is not a PointwiseScorer or PairwiseScorer")
    raise KeyError(f"unknown scorer {name!r}; available: {sorted(_REGISTRY)}")


def build_scorer(name: str, **kwargs) -> Scorer:
    """An instance of the scorer registered as ``name``; ``kwargs`` go to its constructor."""
    return scorer_class(name)(**kwargs)
