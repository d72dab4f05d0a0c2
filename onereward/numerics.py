"""What decides CPU numerics, fixed in one place from ``params.yaml`` ``numerics``.

On CPU, torch's results depend on how many threads split a reduction, on which vector
instruction set its kernels dispatch to, and on the CPU's vendor and cache sizes. All three
differ between machines by default, so every stage pins them before torch does any work:
``python -m stages.<name>`` calls :func:`pin_from_params` from ``stages/__init__.py``, ahead of
the first ``import torch``.

- Threads: one intra-op and one inter-op thread (the core count then decides nothing).
- ATen's own kernels (elementwise, reductions, softmax): compiled per ISA, the same code on any
  CPU that has it; ``ATEN_CPU_CAPABILITY`` fixes the ISA.
- MKL (float32 matmul and linear): its reproducible branches other than COMPATIBLE are "available
  only for Intel processors", so an AMD CPU given ``MKL_CBWR=AVX2`` computes other bits (seen:
  the committed reports did not regenerate on an AMD EPYC). COMPATIBLE (SSE2, no approximate
  reciprocals) is the one branch MKL keeps equal on Intel and AMD, with fixed cache sizes.
- oneDNN (convolutions, some linear layers): it blocks its loops by the cache sizes of the CPU at
  hand, so a CPU with another L2 gets other bits. ``portable_kernels`` turns it off.
- NNPACK (torch's 3x3 convolutions on batches of 16 images or more; smaller batches use torch's
  im2col + MKL GEMM): Winograd with the same FMA3 kernels on every AVX2 CPU. It splits the sum
  over input channels by the L1 cache, but only beyond 72 channels with any L1 of 16 KB or more
  per thread (``input_channels_block_max`` in NNPACK's convolution-output.c); the tiny VAE has
  at most 64, so its bits do not depend on the cache. ``nnpack`` keeps it on: off, sampling is
  2.6x slower (BENCHMARKS.md). NNPACK initialises only where the CPU reports its L1-L3 caches;
  elsewhere torch convolves without it, with other bits (``python -m onereward.bench bits`` says
  which). ``torch.backends.nnpack`` has no ``enabled`` property to assign;
  only ``set_flags`` reaches the switch.
- OpenBLAS (numpy's, inside scikit-image): ``OPENBLAS_CORETYPE`` fixes its kernel family.
- MKL's vector math (VML): torch's float32 ``sqrt`` on CPU is MKL's ``vsSqrt``, within one unit
  in the last place but not correctly rounded (15% of random inputs differ from IEEE's square
  root on an AMD EPYC, whatever ``MKL_CBWR`` says), and the bits are the vendor's: torch's default
  AdamW step was the one layer in ``python -m onereward.bench bits`` that differed between an
  Intel Xeon and an AMD EPYC. :func:`adamw` (torch's fused kernel: IEEE arithmetic and the
  hardware square root) and :func:`exact_sqrt` are what the project uses instead.

The environment variables are read when the libraries load, so they only take effect in a fresh
process; the thread counts and torch's backend flags are also applied to an imported torch.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from pathlib import Path

import yaml

ISA_VARIABLES = {
    # ATen's kernels; MKL's branch (the cross-vendor one, see above); oneDNN's ceiling (used only
    # where portable_kernels is off); OpenBLAS's kernel family
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "OPENBLAS_CORETYPE": "Haswell"},
    # AVX-512 machines only; MKL's AVX512 branch is Intel's alone
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AVX512,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
               "OPENBLAS_CORETYPE": "SkylakeX"},
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
    last decade, Intel or AMD, and gives the same bits on AVX-512 machines; ``native`` leaves the
    libraries' choice (fastest, but bits then depend on the CPU)."""
    portable_kernels: bool = True
    """oneDNN off: its cache-size blocking would make bits depend on the CPU model. Costs about
    45% on the tiny generator's sampling (BENCHMARKS.md); false: faster, machine-bound bits."""
    nnpack: bool = True
    """NNPACK's Winograd convolutions on (module docstring: their bits do not depend on the cache
    for up to 72 input channels); false: torch's im2col + GEMM for every convolution, 2.6x slower
    sampling on the tiny generator and other bits."""

    def __post_init__(self):
        if self.threads < 1 or self.interop_threads < 1:
            raise ValueError(f"params.numerics: threads and interop_threads must be >= 1, got {self.threads}, {self.interop_threads}")
        if self.cpu_isa != "native" and self.cpu_isa not in ISA_VARIABLES:
            raise ValueError(f"params.numerics.cpu_isa must be native or one of {sorted(ISA_VARIABLES)}, got {self.cpu_isa!r}")

    def environment(self) -> dict[str, str]:
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "OPENBLAS_NUM_THREADS": str(self.threads)}
        return {**env, **ISA_VARIABLES.get(self.cpu_isa, {})}


PINNED: NumericsConfig | None = None
"""What :func:`pin` last applied to this process (None: nothing)."""


def pin(cfg: NumericsConfig) -> None:
    """Apply ``cfg`` to this process (and the processes it starts); imports torch after the
    environment is set, so that its libraries load with it."""
    global PINNED
    os.environ.update(cfg.environment())
    import torch

    torch.set_num_threads(cfg.threads)
    try:
        torch.set_num_interop_threads(cfg.interop_threads)
    except RuntimeError:  # only settable before the first inter-op task; already fixed then
        pass
    if cfg.portable_kernels:
        torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(cfg.nnpack)
    PINNED = cfg


def _pin_then(cfg: NumericsConfig | None, initializer, initargs: tuple) -> None:
    if cfg is not None:
        pin(cfg)
    if initializer is not None:
        initializer(*initargs)


@contextmanager
def worker_pool(processes: int, initializer=None, initargs: tuple = ()):
    """A ``multiprocessing`` pool of fresh processes (spawned: torch in forked children can
    deadlock) that compute as this one does: the environment is inherited, and :func:`pin`'s
    backend flags are applied again in each worker before ``initializer(*initargs)``; a spawned
    worker imports no stage, so nothing else pins it. On leaving, the workers exit on their own
    (terminating them leaks their semaphores), or are stopped if the block raised."""
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(processes, _pin_then, (PINNED, initializer, initargs))
    try:
        yield pool
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()


def config_from_params(path: str | Path = "params.yaml") -> NumericsConfig:
    path = Path(path)
    section = (yaml.safe_load(path.read_text()) or {}).get("numerics") if path.is_file() else None
    return NumericsConfig(**(section or {}))


def pin_from_params(path: str | Path = "params.yaml") -> NumericsConfig:
    cfg = config_from_params(path)
    pin(cfg)
    return cfg


def adamw(params, **kwargs):
    """torch's AdamW with its fused kernel, the project's one optimiser. The default kernel takes the
    square root of the second moment with MKL's vendor-dependent ``vsSqrt`` (module docstring); the
    fused one uses only exactly rounded operations, so a step has the same bits on every CPU
    (``tests/test_numerics.py`` checks it against IEEE arithmetic)."""
    import torch

    return torch.optim.AdamW(params, fused=True, **kwargs)


def exact_sqrt(t):
    """The correctly rounded square root of a float32 tensor, differentiable: float64's square root
    (within an ulp) rounded to float32 is the correctly rounded float32 one, since a float's square
    root never lies that close to a rounding boundary; torch's float32 ``sqrt`` is not (see above)."""
    import torch

    return t.to(torch.float64).sqrt().to(t.dtype) if t.dtype == torch.float32 else t.sqrt()
