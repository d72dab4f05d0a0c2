"""Real photographs that ship inside pip packages (scikit-image, scikit-learn): no download."""

from __future__ import annotations

import functools
import warnings

import numpy as np

# Natural photos only (no synthetic charts or logos); all bundled with scikit-image itself.
SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "grass",
    "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket",
    "stereo_motorcycle",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def _rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


@functools.lru_cache(maxsize=1)
def load_photos() -> tuple[tuple[str, np.ndarray], ...]:
    """(name, HxWx3 uint8) for every bundled photo, in a fixed order."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    photos = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in SKIMAGE_PHOTOS:
            img = getattr(skimage.data, name)()
            photos.append((name, _rgb(img[0] if isinstance(img, tuple) else img)))
    for name in SKLEARN_PHOTOS:
        photos.append((name.split(".")[0], _rgb(load_sample_image(name))))
    return tuple(photos)
