"""The README picture: training-style hand crops (square, 1.5 x the 2-D joints' box) from generator 2 (top row)
and generator 3 (the 8 camera views of one frame, then frames of other subjects). Regenerate with

    uv run python -m amt.synth.montage --out packages/amt/docs/synthetic_hands.png
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import SERIALS, SUBJECTS, project
from ..synthetic import camera_intrinsics, render as render_v2, sample_frame
from .generator import make_synthetic_v3


def _crop(img: Image.Image, uv: np.ndarray, size: int) -> Image.Image:
    c = (uv.min(0) + uv.max(0)) / 2
    s = 0.75 * float((uv.max(0) - uv.min(0)).max())
    return img.crop((int(c[0] - s), int(c[1] - s), int(c[0] + s), int(c[1] + s))).resize((size, size), Image.Resampling.BILINEAR)


def montage(out: Path, size: int = 96, seed: int = 0) -> Path:
    rows = []
    rng = np.random.default_rng(seed)
    K = camera_intrinsics(rng)
    row = []
    for _ in range(8):
        J, c, r = sample_frame(rng, K, 1.0, False)
        row.append(_crop(render_v2(K, J, c, r, rng), project(K, J), size))
    rows.append(row)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic_v3(Path(tmp) / "v3", sequences_per_subject=1, frames_per_sequence=2, seed=seed,
                                 subjects=9, log=lambda m: None)
        seqs = [next((root / s).iterdir()) for s in SUBJECTS[:9]]
        views = []
        for seq in seqs:
            for serial in SERIALS:
                d = np.load(seq / serial / "labels_000001.npz")
                views.append(_crop(Image.open(seq / serial / "color_000001.jpg"), d["joint_2d"][0], size))
        rows.append(views[:8])                                    # one frame, its 8 cameras
        rows.append([views[8 * (i + 1) + (i * 3) % 8] for i in range(8)])  # one view each of 8 other subjects
    sheet = Image.new("RGB", (8 * size, len(rows) * size))
    for y, row in enumerate(rows):
        for x, im in enumerate(row):
            sheet.paste(im, (x * size, y * size))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp.png")
    sheet.quantize(colors=192, method=Image.Quantize.MEDIANCUT).save(tmp_out, optimize=True)
    tmp_out.replace(out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--size", type=int, default=96, help="crop side in pixels")
    a = ap.parse_args(argv)
    if not a.out.endswith(".png") or a.size < 16:
        print(f"error: --out {a.out!r} / --size {a.size}: expected a .png path and a size >= 16", file=sys.stderr)
        return 2
    p = montage(Path(a.out), a.size)
    print(f"wrote {p} ({p.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
