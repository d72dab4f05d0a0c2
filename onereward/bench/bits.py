"""Fingerprints of the layers that decide CPU bits: run on two machines, compare line by line.

A fresh clone regenerates the committed reports only where every layer below computes the same
bits as the machine that made them. When it does not, the first stage that differs says little
(``base_model`` runs all of them); the first fingerprint that differs names the library to pin.
Each runs under ``params.yaml`` ``numerics`` on seeded inputs; a fingerprint is the first 12
hex digits of the SHA-256 of the result's bytes. BENCHMARKS.md lists them by machine.
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = a.detach().contiguous().numpy() if hasattr(a, "detach") else a
        h.update(a.tobytes())
    return h.hexdigest()[:12]


def report() -> dict:
    """The machine and the fingerprints, with ``params.yaml`` ``numerics`` pinned before torch loads."""
    from onereward.numerics import pin_from_params

    pin_from_params()
    return {"machine": machine(), "fingerprints": fingerprints()}


def machine() -> dict:
    """What the libraries dispatch on: the CPU's vendor, model and vector extensions."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    import torch

    return {
        "vendor": fields.get("vendor_id", platform.processor()),
        "model": fields.get("model name", ""),
        "extensions": sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "avx_vnni"}),
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        # NNPACK initialises only where the CPU reports its L1-L3 caches; without it torch convolves
        # every batch with im2col + GEMM, other bits than numerics.nnpack's
        "nnpack_available": torch.backends.nnpack.is_available(),
    }


def fingerprints() -> dict[str, str]:
    """Layer -> fingerprint, from the data's inputs up to one training step of each tiny model
    (call :func:`report`, which pins the numerics first)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from onereward.data.photos import load_photos
    from onereward.numerics import adamw, exact_sqrt
    from onereward.policy.pretrain import PretrainConfig, example

    out = {"photos: decoded (imageio, Pillow, libjpeg-turbo)": _digest(*(p for _, p in load_photos()))}
    rng = np.random.default_rng([0, 0])
    drawn = [example(rng, 64, PretrainConfig()) for _ in range(32)]
    out["examples: numpy + Pillow drawing (base_model's pool)"] = _digest(*(np.asarray(t) for t, _, _ in drawn))

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(96, 256, generator=g), torch.randn(256, 80, generator=g)
    out["torch.randn (ATen's normal kernel)"] = _digest(a, b)
    out["matmul (MKL sgemm)"] = _digest(a @ b)
    x = torch.randn(4, 16, 32, 32, generator=g, requires_grad=True)
    w = torch.randn(32, 16, 3, 3, generator=g, requires_grad=True)
    y = F.conv2d(x, w, padding=1)
    y.square().sum().backward()
    out["conv2d forward + backward (im2col + GEMM without oneDNN)"] = _digest(y, x.grad, w.grad)
    h = torch.randn(8, 64, 128, generator=g)
    out["layer_norm, group_norm, softmax"] = _digest(F.layer_norm(h, (128,)), F.group_norm(h, 8), h.softmax(-1))
    q, k, v = (torch.randn(2, 4, 64, 32, generator=g) for _ in range(3))
    out["scaled_dot_product_attention"] = _digest(F.scaled_dot_product_attention(q, k, v))
    u = torch.randn(4099, generator=g)  # odd length: the vector body and the scalar tail
    for name, fn in (("exp", torch.exp), ("log", lambda t: t.abs().log()), ("tanh", torch.tanh), ("sigmoid", torch.sigmoid),
                     ("silu", F.silu), ("gelu tanh", lambda t: F.gelu(t, approximate="tanh")), ("erf", torch.erf),
                     ("sin/cos", lambda t: torch.sin(t) + torch.cos(t)), ("rsqrt", lambda t: t.abs().rsqrt())):
        out[f"unary: {name}"] = _digest(fn(u))
    out["reduction: sum"] = _digest(u.sum())
    img = torch.rand(2, 3, 64, 64, generator=g)
    out["interpolate bicubic (antialias)"] = _digest(F.interpolate(img, size=(112, 112), mode="bicubic", antialias=True))
    start, grad = torch.randn(64, 64, generator=g), torch.randn(64, 64, generator=g)
    for name, make in (("AdamW step: torch's default kernel (MKL vsSqrt; not used by the stages)", torch.optim.AdamW),
                       ("AdamW step: fused (numerics.adamw, the stages' optimiser)", adamw)):
        p = torch.nn.Parameter(start.clone())
        opt = make([p], lr=1e-3)
        p.grad = grad.clone()
        opt.step()
        out[name] = _digest(p)
    r = torch.rand(4099, generator=g) * 10
    out["sqrt: torch float32 (MKL vsSqrt; not used by the stages)"] = _digest(r.sqrt())
    out["sqrt: numerics.exact_sqrt"] = _digest(exact_sqrt(r))
    out.update(_model_steps())
    return out


def _model_steps() -> dict[str, str]:
    """One forward and backward of the tiny generator's VAE and transformer, built from seed 0."""
    import torch
    import torch.nn.functional as F

    from onereward.policy.adapter import FillPolicy
    from onereward.policy.tiny import build_tiny_pipeline

    policy = FillPolicy(build_tiny_pipeline(seed=0))
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 64, 64, generator=g)
    rec = policy.vae(images * 2 - 1).sample
    rec.square().mean().backward()
    vae_grads = [q.grad for q in policy.vae.parameters() if q.grad is not None]
    masks = torch.zeros(4, 1, 64, 64)
    masks[..., 16:48, 16:48] = 1
    cond, latents = policy.prepare(images, masks, ["a red circle", "", "a photo", "the text sign"], generator=g)
    vel = policy.velocity(latents, torch.full((4,), 500.0), cond)
    F.mse_loss(vel, torch.zeros_like(vel)).backward()
    tr_grads = [q.grad for q in policy.transformer.parameters() if q.grad is not None]
    with torch.no_grad():  # batches of 16 or more take NNPACK's Winograd kernels (numerics.nnpack)
        decoded = policy.vae.decode(torch.randn(16, policy.vae.config.latent_channels, 8, 8, generator=g)).sample
    return {"tiny VAE forward + backward": _digest(rec, *vae_grads),
            "tiny FLUX transformer forward + backward": _digest(vel, *tr_grads),
            "tiny VAE decoder, 16 latents (NNPACK Winograd)": _digest(decoded)}
