"""params.yaml `numerics` pins what decides CPU bits in every stage process, whatever the environment says."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onereward.numerics import NumericsConfig

REPO = Path(__file__).resolve().parents[1]
PROBE = ("import stages, torch; print(torch.get_num_threads(), torch.backends.cpu.get_cpu_capability(), "
         "torch._C._get_mkldnn_enabled(), torch._C._get_nnpack_enabled())")  # the switches torch reads, not module attributes
CONVOLVE = """
from onereward.numerics import NumericsConfig, pin
pin(NumericsConfig(nnpack={nnpack}))
import torch
from torch.profiler import profile
x, w = torch.rand(16, 8, 16, 16), torch.rand(8, 8, 3, 3)  # NNPACK's case: 3x3, a batch of 16 or more
with profile() as prof:
    torch.nn.functional.conv2d(x, w, padding=1)
print(torch.backends.nnpack.is_available())
print(sorted(e.key for e in prof.key_averages() if "conv" in e.key))
"""


def test_a_stage_process_ignores_the_machines_thread_and_isa_settings():
    env = {**os.environ, "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4", "ATEN_CPU_CAPABILITY": "default"}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    threads, isa, onednn, nnpack = out.stdout.split()
    cfg = NumericsConfig()  # params.yaml's values are the defaults
    assert int(threads) == cfg.threads and isa == cfg.cpu_isa.upper()
    assert onednn == "False"  # cache-size-blocked kernels off (portable_kernels)
    assert nnpack == str(cfg.nnpack)


@pytest.mark.parametrize("nnpack", [True, False])
def test_the_nnpack_switch_decides_which_kernel_convolves(nnpack):
    out = subprocess.run([sys.executable, "-c", CONVOLVE.format(nnpack=nnpack)], cwd=REPO, capture_output=True,
                         text=True, check=True)
    available, kernels = out.stdout.strip().splitlines()[-2:]
    if nnpack and available != "True":
        pytest.skip("NNPACK did not initialise on this CPU (it needs the CPU to report its cache sizes)")
    assert ("aten::_nnpack_spatial_convolution" in kernels) == nnpack
    assert ("aten::_slow_conv2d_forward" in kernels) == (not nnpack)  # torch's im2col + MKL GEMM


def test_every_layers_fingerprint_ignores_the_machines_settings():
    """`python -m onereward.bench bits` (the layer-by-layer check for comparing two machines) under
    what looks like another machine: other threads, ISA, MKL branch and OpenBLAS kernels."""
    machines = ({}, {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4", "ATEN_CPU_CAPABILITY": "default",
                     "MKL_CBWR": "AUTO", "OPENBLAS_CORETYPE": "Zen"})
    reports = []
    for extra in machines:
        out = subprocess.run([sys.executable, "-m", "onereward.bench", "bits"], cwd=REPO, env={**os.environ, **extra},
                             capture_output=True, text=True, check=True)
        reports.append(json.loads(out.stdout))
    assert reports[0]["machine"]["torch_capability"] == NumericsConfig().cpu_isa.upper()
    layers = reports[0]["fingerprints"]
    assert len(layers) >= 20 and len(set(layers.values())) == len(layers)  # each layer its own result
    assert reports[1]["fingerprints"] == layers


def test_environment_names_every_library():
    env = NumericsConfig(threads=2, cpu_isa="avx2").environment()
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["MKL_CBWR"] == "COMPATIBLE,STRICT"  # MKL's one branch equal on Intel and AMD
    assert env["OPENBLAS_CORETYPE"] == "Haswell" and env["OPENBLAS_NUM_THREADS"] == "2"
    assert "ATEN_CPU_CAPABILITY" not in NumericsConfig(cpu_isa="native").environment()


@pytest.mark.parametrize("bad", [{"threads": 0}, {"cpu_isa": "sse2"}])
def test_nonsense_is_refused(bad):
    with pytest.raises(ValueError, match="numerics"):
        NumericsConfig(**bad)


def test_the_optimisers_step_is_ieee_arithmetic_with_the_exact_square_root():
    # torch's float32 sqrt on CPU (MKL vsSqrt) is off by an ulp in about 15% of inputs and
    # differed between an Intel and an AMD machine; the project's AdamW step must match IEEE float32 arithmetic bit for bit
    import numpy as np
    import torch

    from onereward.numerics import adamw

    g = torch.Generator().manual_seed(0)
    n = (1 << 16) + 3  # the vector body and the scalar tail
    start, grad = torch.randn(n, generator=g), torch.randn(n, generator=g) * 1e-2
    lr, (b1, b2), eps, wd = 1e-3, (0.9, 0.999), 1e-8, 1e-2
    p = torch.nn.Parameter(start.clone())
    opt = adamw([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    p.grad = grad.clone()
    opt.step()
    f32, x, gr = np.float32, start.numpy(), grad.numpy()
    m, v = gr * f32(1 - b1), f32(1 - b2) * gr * gr  # the first step, from zero moments
    denom = np.sqrt(v) / f32((1 - b2) ** 0.5) + f32(eps)
    expected = x * f32(1 - lr * wd) - f32(lr / (1 - b1)) * m / denom
    assert np.array_equal(p.detach().numpy(), expected)


def test_exact_sqrt_is_correctly_rounded_and_differentiable():
    import numpy as np
    import torch

    from onereward.numerics import exact_sqrt

    x = (torch.rand(1 << 16, generator=torch.Generator().manual_seed(1)) * 10).requires_grad_()
    y = exact_sqrt(x)
    assert y.dtype == torch.float32
    assert np.array_equal(y.detach().numpy(), np.sqrt(x.detach().numpy().astype(np.float64)).astype(np.float32))
    y.sum().backward()
    assert torch.allclose(x.grad, 0.5 / y.detach(), rtol=1e-6)
