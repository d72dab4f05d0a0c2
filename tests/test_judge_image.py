"""The differentiable judge image path against the stock Qwen2-VL image processor."""

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from sklearn.datasets import load_sample_image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from onereward.config import load_params
from onereward.judge.params import merged_section
from onereward.judge.image import VisionSpec, patchify, preprocess, resize, to_tensor

PHOTOS = {
    "astronaut": skimage.data.astronaut,
    "chelsea": skimage.data.chelsea,
    "coffee": skimage.data.coffee,
    "china": lambda: load_sample_image("china.jpg"),
}


def judge_inputs() -> list[tuple[int, int]]:
    """(resolution, patch size) of the judge of every profile in params.yaml (tiny: 64 px in 8 px
    patches; real: 448 in Qwen2.5-VL's 14)."""
    params = load_params()
    found = set()
    for p in params["profiles"]:
        section = merged_section("judge_base", p, params)
        patch = section["tiny"].get("patch_size", 14) if p == "tiny" else 14
        found.add((int(section["resolution"]), int(patch)))
    return sorted(found)


def stock(images, resolution: int, patch_size: int = 14) -> dict:
    """The stock processor with a pixel budget that maps a square image to resolution^2."""
    proc = Qwen2VLImageProcessorPil(patch_size=patch_size,
                                    size={"shortest_edge": resolution**2, "longest_edge": (resolution + patch_size) ** 2})
    return proc(images=images, return_tensors="pt"), VisionSpec.from_processor(proc)


@pytest.mark.parametrize("name", sorted(PHOTOS))
@pytest.mark.parametrize("square", [True, False], ids=["square", "native-aspect"])
@pytest.mark.parametrize("resolution,patch_size", judge_inputs())
def test_matches_stock_processor_and_has_pixel_gradients(name, square, resolution, patch_size):
    photo = np.ascontiguousarray(PHOTOS[name]())
    if square:  # the judge's setting: every image becomes resolution x resolution
        side = min(photo.shape[:2])
        photo = photo[:side, :side]
    ref, spec = stock([Image.fromarray(photo)], resolution, patch_size)
    grid = ref["image_grid_thw"][0]
    size = (int(grid[1]) * spec.patch_size, int(grid[2]) * spec.patch_size)
    if square:
        assert size == (resolution, resolution)

    x = to_tensor(photo)[None].requires_grad_(True)
    pixel_values, grid_thw = preprocess(x, size, spec)
    assert torch.equal(grid_thw, ref["image_grid_thw"])
    assert pixel_values.shape == ref["pixel_values"].shape
    assert (pixel_values - ref["pixel_values"]).abs().max().item() <= 1e-4

    weights = torch.randn(pixel_values.shape, generator=torch.Generator().manual_seed(0))
    (pixel_values * weights).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("resolution,patch_size", judge_inputs())
def test_batch_in_order(resolution, patch_size):
    """A batch preprocesses image by image in order, like the processor given a list."""
    photos = [np.ascontiguousarray(PHOTOS[n]()[:300, :300]) for n in ("chelsea", "coffee")]
    ref, spec = stock([Image.fromarray(p) for p in photos], resolution, patch_size)
    pixel_values, grid = preprocess(torch.stack([to_tensor(p) for p in photos]), (resolution, resolution), spec)
    assert torch.equal(grid, ref["image_grid_thw"])
    assert (pixel_values - ref["pixel_values"]).abs().max().item() <= 1e-4


def test_float_resize_is_close_and_quantized_resize_is_exact_on_the_uint8_grid():
    photo = np.ascontiguousarray(skimage.data.coffee())
    pil = np.asarray(Image.fromarray(photo).resize((84, 56), Image.BICUBIC)).astype(np.float32) / 255
    x = to_tensor(photo)[None]
    exact = resize(x, (56, 84))[0].permute(1, 2, 0).numpy()
    assert np.abs(exact - pil).max() <= 1e-6
    smooth = resize(x, (56, 84), quantize=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(smooth - pil).mean() < 2 / 255  # same filter, without rounding and clipping


def test_patchify_rejects_sizes_off_the_grid():
    with pytest.raises(ValueError, match="multiple of 28"):
        patchify(torch.zeros(1, 3, 56, 60), VisionSpec())


@pytest.mark.parametrize("size", [(56, 140), (80, 112), (56, 112), (80, 140), (32, 140), (100, 20), (32, 112),
                                  (32, 113), (16, 105), (16, 106), (63, 129)])
def test_quantized_resize_is_pillow_in_either_pass_order(size):
    """Pillow 13 resizes the rows first when the height shrinks by more than twice as many pixels
    as the width (e.g. 64 x 128 -> 32 x 113 but not 32 x 112)."""
    u8 = np.ascontiguousarray(skimage.data.coffee()[:64, :128])
    h, w = size
    pil = np.asarray(Image.fromarray(u8).resize((w, h), Image.BICUBIC)).astype(np.float64) / 255
    ours = resize(to_tensor(u8)[None], size)[0].permute(1, 2, 0).double().numpy()
    assert np.abs(ours - pil).max() <= 1e-6
