"""Backgrounds from real photographs that ship inside scikit-image (``skimage/data/*.png|jpg``), read straight
from the installed package (no download, never ``../shared/realdata``), randomly cropped, flipped, blurred and
colour-jittered. Without scikit-image the generator falls back to procedural backgrounds and says so."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

# Photographs (not diagrams, charts or microscopy) bundled with the scikit-image wheel.
PHOTOS = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
          "gravel.png", "motorcycle_left.png", "motorcycle_right.png", "rocket.jpg", "page.png", "text.png",
          "moon.png", "clock_motion.png")

_POOL: list[np.ndarray] | None = None


def photo_dir() -> Path | None:
    try:
        import skimage
    except ImportError:
        return None
    d = Path(skimage.__file__).parent / "data"
    return d if d.is_dir() else None


def photo_pool() -> list[np.ndarray]:
    """The bundled photographs as uint8 RGB arrays (grey ones expanded to 3 channels); [] when unavailable."""
    global _POOL
    if _POOL is None:
        d, pool = photo_dir(), []
        if d is not None:
            for name in PHOTOS:
                p = d / name
                if p.is_file():
                    pool.append(np.asarray(Image.open(p).convert("RGB")))
        _POOL = pool
    return _POOL


def photo_background(rng: np.random.Generator, w: int, h: int) -> np.ndarray | None:
    """A w x h uint8 RGB crop of a random photograph, or None when no photographs are available."""
    pool = photo_pool()
    if not pool:
        return None
    img = pool[int(rng.integers(len(pool)))]
    H, W = img.shape[:2]
    # crop at the output aspect ratio, 35-100 % of the largest such window, anywhere in the photo
    s = rng.uniform(0.35, 1.0)
    cw = min(W, H * w / h) * s
    ch = cw * h / w
    x0, y0 = rng.uniform(0, W - cw), rng.uniform(0, H - ch)
    im = Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.4:  # the scene behind a hand is often out of focus
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 3.0)))
    # saturation, white balance and exposure as one colour matrix, applied by PIL in C (clipped to 0..255)
    sat = rng.uniform(0.5, 1.2)
    gain = rng.uniform(0.8, 1.2, 3) * rng.uniform(0.6, 1.2)
    M = gain[:, None] * (sat * np.eye(3) + (1 - sat) / 3)
    matrix = tuple(float(x) for row in M for x in (*row, 0.0))
    return np.asarray(im.convert("RGB", matrix=matrix))
