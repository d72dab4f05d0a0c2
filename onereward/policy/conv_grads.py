"""Input gradients of stride-1 convolutions computed as convolutions, for the VAE phase on CPU.

With oneDNN off (``numerics.portable_kernels``), torch's ``convolution_backward`` on CPU takes
its unfold-and-GEMM path, while the forward runs on NNPACK: in the tiny VAE's training step the
backward took 80% of the time, 6.6x the forward (BENCHMARKS.md). The input gradient of a stride-1
convolution is itself a convolution: the output gradient convolved with the kernel flipped in
space and its channel axes swapped, padded by ``kernel - 1 - padding``. Written as one, it runs on
NNPACK too (2-3.7x faster for the VAE's layers), with NNPACK's cache-independent bits (its
channels here stay under 72; ``onereward/numerics.py``). The weight and bias gradients stay
torch's own.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F


class _Conv2dInputGradAsConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        (ph, pw), (kh, kw) = ctx.padding, weight.shape[2:]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(2, 3).transpose(0, 1), padding=(kh - 1 - ph, kw - 1 - pw))
        _, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]], [1, 1], [ph, pw], [1, 1], False, [0, 0], 1,
            [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2]],
        )
        return grad_x, grad_w, grad_b, None


def _eligible(m: torch.nn.Module) -> bool:
    return (isinstance(m, torch.nn.Conv2d) and m.stride == (1, 1) and m.dilation == (1, 1) and m.groups == 1
            and m.bias is not None and m.padding_mode == "zeros" and isinstance(m.padding, tuple)
            and all(p <= k - 1 for p, k in zip(m.padding, m.kernel_size)))


@contextmanager
def input_grads_as_convolutions(model: torch.nn.Module):
    """Inside, every eligible ``Conv2d`` of ``model`` (stride 1, zero padding, bias) computes its
    input gradient as a convolution; the modules are as they were afterwards."""
    patched = [m for m in model.modules() if _eligible(m)]
    for m in patched:
        m.forward = lambda x, m=m: _Conv2dInputGradAsConv.apply(x, m.weight, m.bias, m.padding)
    try:
        yield len(patched)
    finally:
        for m in patched:
            del m.forward
