"""What decides CPU numerics, fixed in one place from ``params.yaml`` ``numerics``.

On CPU, torch's results depend on how many threads split a reduction and on which vector
instruction set its kernels (ATen, MKL, oneDNN) dispatch to. Both differ between machines by
default (torch uses one thread per core and the widest ISA the CPU has), so every stage pins
them before torch does any work: ``python -m stages.<name>`` calls :func:`pin_from_params`
from ``stages/__init__.py``, ahead of the first ``import torch``.

The ISA variables are read when torch's libraries load, so they only take effect in a fresh
process; the thread counts are also applied to an already-imported torch.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import yaml

ISA_VARIABLES = {
    # ATen's own kernels (elementwise, reductions, softmax, ...), MKL's code path (matmul; its
    # Conditional Numerical Reproducibility mode) and oneDNN's (mkldnn convolutions and matmuls)
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AVX512,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
}


@dataclasses.dataclass(frozen=True)
class NumericsConfig:
    """params.yaml `numerics`: read by every stage."""

    threads: int = 1
    """torch intra-op threads (and OMP/MKL threads). One thread: bits do not depend on the core
    count, and a busy neighbour costs little (BENCHMARKS.md: 2 threads run 42x slower beside one
    busy process, 1 thread 1.01x)."""
    interop_threads: int = 1
    """torch inter-op threads."""
    cpu_isa: str = "avx2"
    """Vector instruction set the CPU kernels dispatch to. ``avx2`` runs on every x86-64 CPU of the
    last decade and gives the same bits on AVX-512 machines; ``native`` leaves torch's choice
    (fastest, but bits then depend on the CPU)."""

    def __post_init__(self):
        if self.threads < 1 or self.interop_threads < 1:
            raise ValueError(f"params.numerics: threads and interop_threads must be >= 1, got {self.threads}, {self.interop_threads}")
        if self.cpu_isa != "native" and self.cpu_isa not in ISA_VARIABLES:
            raise ValueError(f"params.numerics.cpu_isa must be native or one of {sorted(ISA_VARIABLES)}, got {self.cpu_isa!r}")

    def environment(self) -> dict[str, str]:
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        return {**env, **ISA_VARIABLES.get(self.cpu_isa, {})}


def pin(cfg: NumericsConfig) -> None:
    """Apply ``cfg`` to this process (and the processes it starts)."""
    os.environ.update(cfg.environment())
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(cfg.threads)
        try:
            torch.set_num_interop_threads(cfg.interop_threads)
        except RuntimeError:  # only settable before the first inter-op task; already fixed then
            pass


def config_from_params(path: str | Path = "params.yaml") -> NumericsConfig:
    path = Path(path)
    section = (yaml.safe_load(path.read_text()) or {}).get("numerics") if path.is_file() else None
    return NumericsConfig(**(section or {}))


def pin_from_params(path: str | Path = "params.yaml") -> NumericsConfig:
    cfg = config_from_params(path)
    pin(cfg)
    return cfg

