"""Pixel operations the scorers share: masks, means over masks, gradients, blurs, block means.

Images are float tensors ``[B, C, H, W]`` in [0, 1]; masks ``[B, 1, H, W]`` with 1 = counted.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def luma(x: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, 1, H, W]`` Rec. 601 luma."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def dilate(m: torch.Tensor, r: int) -> torch.Tensor:
    """Mask ``[B, 1, H, W]`` (values >= 0) grown by ``r`` pixels (square neighbourhood)."""
    if r <= 0:
        return m
    h, w = m.shape[-2:]
    p = F.pad(m, (r, r, 0, 0))  # zeros never win a max over values >= 0
    rows = torch.stack([p[..., :, i : i + w] for i in range(2 * r + 1)]).amax(0)
    p = F.pad(rows, (0, 0, r, r))
    return torch.stack([p[..., i : i + h, :] for i in range(2 * r + 1)]).amax(0)


def erode(m: torch.Tensor, r: int) -> torch.Tensor:
    """Binary mask shrunk by ``r`` pixels; the image border does not erode."""
    return m if r <= 0 else 1 - dilate(1 - m, r)


def masked_mean(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``[B]`` weighted mean of ``v`` ``[B, C, H, W]`` over pixels and channels; NaN where ``w`` is empty."""
    num = (v * w).sum((1, 2, 3))
    den = w.sum((1, 2, 3)) * v.shape[1]
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(num, math.nan))


def sobel(x: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` -> ``[B, 2, H, W]`` (d/dx, d/dy), scaled so a 0-to-1 step gives 1."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    h, w = x.shape[-2:]
    sy = p[..., 0:h, :] + 2 * p[..., 1 : h + 1, :] + p[..., 2 : h + 2, :]  # smoothed across y
    sx = p[..., :, 0:w] + 2 * p[..., :, 1 : w + 1] + p[..., :, 2 : w + 2]  # smoothed across x
    gx = sy[..., :, 2 : w + 2] - sy[..., :, 0:w]
    gy = sx[..., 2 : h + 2, :] - sx[..., 0:h, :]
    return torch.cat([gx, gy], dim=1) / 4


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]``, radius ``3 sigma``, replicate padding."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float64) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).tolist()
    h, w = x.shape[-2:]
    p = F.pad(x, (r, r, 0, 0), mode="replicate")
    x = sum(k[i] * p[..., :, i : i + w] for i in range(2 * r + 1))
    p = F.pad(x, (0, 0, r, r), mode="replicate")
    return sum(k[i] * p[..., i : i + h, :] for i in range(2 * r + 1))


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """Four-neighbour Laplacian of ``[B, C, H, W]``, replicate padding."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    h, w = x.shape[-2:]
    return p[..., 1:-1, 2:] + p[..., 1:-1, :-2] + p[..., 2:, 1:-1] + p[..., :-2, 1:-1] - 4 * x


def block_means(x: torch.Tensor, w: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of ``x`` over the ``w`` pixels of each ``block`` x ``block`` block, and each block's weight."""
    pad = (0, -x.shape[-1] % block, 0, -x.shape[-2] % block)
    x, w = F.pad(x, pad), F.pad(w, pad)
    s = F.avg_pool2d(x * w, block) * block * block
    n = F.avg_pool2d(w, block) * block * block
    return s / n.clamp_min(1e-12), n


def block_error(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, block: int) -> torch.Tensor:
    """``[B]`` mean absolute difference of block means over the ``w`` pixels (blocks weighted by pixel count)."""
    ma, n = block_means(a, w, block)
    mb, _ = block_means(b, w, block)
    return masked_mean((ma - mb).abs(), n)


def box_mask(boxes: list, shape: tuple[int, int], margin: int, device) -> torch.Tensor:
    """``[B, 1, H, W]``: 1 inside each sample's box (PIL's inclusive ``x0, y0, x1, y1``) grown by ``margin``."""
    h, w = shape
    out = torch.zeros(len(boxes), 1, h, w, device=device)
    for i, box in enumerate(boxes):
        if box is not None:
            x0, y0, x1, y1 = (int(v) for v in box)
            out[i, :, max(0, y0 - margin) : y1 + 1 + margin, max(0, x0 - margin) : x1 + 1 + margin] = 1
    return out


def shift_stack(x: torch.Tensor, t: int) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N * (2t + 1)^2, C, H, W]``: every shift by up to ``t`` pixels in each
    axis (zeros shifted in), shift-minor; ``t = 0`` returns ``x``."""
    if t <= 0:
        return x
    n, c, h, w = x.shape
    xp = F.pad(x, (t, t, t, t))
    crops = [xp[..., dy : dy + h, dx : dx + w] for dy in range(2 * t + 1) for dx in range(2 * t + 1)]
    return torch.stack(crops, dim=1).reshape(n * len(crops), c, h, w)
