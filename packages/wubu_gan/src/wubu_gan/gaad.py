"""GAAD: Golden Aspect Adaptive Decomposition of a frame into boxes [x1, y1, x2, y2] (float pixels).

The boxes depend only on the frame size, so they are computed once per (H, W, N, kind) and cached
(the original recomputed them per batch item in Python loops). The same function serves training,
sampling and `wubu-gan info`, so the boxes can never differ between them.
"""
from __future__ import annotations

import math
from collections import deque
from functools import lru_cache

import torch

PHI = (1 + 5 ** 0.5) / 2
DECOMPOSITIONS = ("hybrid", "subdivide", "spiral")


def golden_subdivision(width: float, height: float, num_boxes: int, min_size_px: float = 4, max_depth: int = 6):
    """Overlapping hierarchical boxes, largest first; box 0 is the whole frame.

    Breadth-first: cut a landscape rectangle at x = w/phi, a portrait one at y = h/phi, an exact square
    vertically (only if w > phi*min_size); both children join the list and the queue, until 3*num_boxes
    boxes exist. Then drop degenerate boxes, de-duplicate, sort by area (stable), keep N, pad with the last.
    """
    boxes = [(0.0, 0.0, float(width), float(height))]
    queue = deque([(0.0, 0.0, float(width), float(height), 0)])
    while queue and len(boxes) < 3 * num_boxes:
        x, y, w, h, depth = queue.popleft()
        if min(w, h) < min_size_px or depth > max_depth:
            continue
        if w > h + 1e-9 or (abs(w - h) <= 1e-9 and w > PHI * min_size_px):
            cut = w / PHI
            children = [(x, y, cut, h), (x + cut, y, w - cut, h)]
        elif h > w + 1e-9:
            cut = h / PHI
            children = [(x, y, w, cut), (x, y + cut, w, h - cut)]
        else:
            continue
        for cx, cy, cw, ch in children:
            boxes.append((cx, cy, cx + cw, cy + ch))
            queue.append((cx, cy, cw, ch, depth + 1))
    seen, unique = set(), []
    for b in boxes:
        if b[2] - b[0] <= 1e-6 or b[3] - b[1] <= 1e-6:
            continue
        key = tuple(round(v, 3) for v in b)
        if key not in seen:
            seen.add(key)
            unique.append(b)
    unique.sort(key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))  # sort is stable: ties keep creation order
    unique = unique[:num_boxes]
    while len(unique) < num_boxes:
        unique.append(unique[-1])
    return unique


def phi_spiral(width: float, height: float, num_boxes: int):
    """Square boxes centred on a log spiral r = a*exp(b*theta) (r grows x phi per quarter turn).

    Point 0 is the frame centre with scale 0.25; the other n-1 points use angle step phi*2*pi/(n-1),
    a = 0.05*min(W,H), r capped at 0.6*max(W,H); scale = max(0.05, 0.2*exp(-0.5*r/(0.1*min))).
    """
    if num_boxes <= 0:
        return []
    W, H = float(width), float(height)
    short = min(W, H)
    cx, cy = W / 2, H / 2
    points = [(cx, cy, 0.25)]
    a = 0.05 * short
    b = math.log(PHI) / (math.pi / 2)
    step = PHI * 2 * math.pi / max(1, num_boxes - 1)
    for i in range(1, num_boxes):
        theta = i * step
        r = min(a * math.exp(b * theta), 0.6 * max(W, H))
        x = min(max(cx + r * math.cos(theta), 0.0), W)
        y = min(max(cy + r * math.sin(theta), 0.0), H)
        scale = max(0.05, 0.2 * math.exp(-0.5 * r / (0.1 * short)))
        points.append((x, y, scale))
    boxes = []
    for x, y, scale in points:
        half = short * scale / 2
        boxes.append((max(0.0, x - half), max(0.0, y - half), min(W, x + half), min(H, y + half)))
    return boxes


@lru_cache(maxsize=64)
def _boxes_cached(height: int, width: int, num_boxes: int, kind: str, min_size_px: float) -> tuple:
    if kind == "subdivide":
        boxes = golden_subdivision(width, height, num_boxes, min_size_px)
    elif kind == "spiral":
        boxes = phi_spiral(width, height, num_boxes)
    elif kind == "hybrid":
        n_sub = num_boxes // 2
        boxes = (golden_subdivision(width, height, n_sub, min_size_px) if n_sub else []) + \
            phi_spiral(width, height, num_boxes - n_sub)
    else:
        raise ValueError(f"unknown GAAD decomposition {kind!r}; expected one of {DECOMPOSITIONS}")
    return tuple(tuple(float(v) for v in b) for b in boxes)


def gaad_boxes(height: int, width: int, num_boxes: int, kind: str = "hybrid", min_size_px: float = 4) -> torch.Tensor:
    """(num_boxes, 4) float32 tensor of [x1, y1, x2, y2]; cached per arguments."""
    return torch.tensor(_boxes_cached(int(height), int(width), int(num_boxes), kind, float(min_size_px)),
                        dtype=torch.float32)


def box_features(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Normalised (cx, cy, w, h) in [0, 1] per box (the original computed h as y1 - y2, a negative height)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height], -1)


def cache_info():
    return _boxes_cached.cache_info()


# ---------------------------------------------------------------- region sampling as two small matrix products
def _axis_weights(lo: float, hi: float, size: int, out: int) -> list[list[float]]:
    """(out, size) weights of torchvision's roi_align (aligned=True, adaptive sampling_ratio=-1) along one axis.

    roi_align averages a grid of bilinear samples per output bin; both the bilinear kernel and the sample grid
    factor over the two axes (a sample outside the map is zero in either axis), so a box's crop-resize is
    ``Wy @ image @ Wx^T`` with one such matrix per axis. Mirrors the kernel's rules: start at lo - 0.5, ceil(len
    / out) samples per bin, samples below -1 or above size dropped, clamped to the edge pixel otherwise.
    """
    start, length = lo - 0.5, hi - lo
    bin_size = length / out
    grid = max(1, math.ceil(length / out))
    rows = []
    for p in range(out):
        w = [0.0] * size
        for i in range(grid):
            y = start + p * bin_size + (i + 0.5) * bin_size / grid
            if y < -1.0 or y > size:
                continue
            y = max(y, 0.0)
            low = int(y)
            if low >= size - 1:
                low = high = size - 1
                y = float(low)
            else:
                high = low + 1
            frac = y - low
            w[low] += (1.0 - frac) / grid
            w[high] += frac / grid
        rows.append(w)
    return rows


@lru_cache(maxsize=64)
def _sampling_cached(height: int, width: int, boxes: tuple, out_h: int, out_w: int) -> tuple:
    wy = [_axis_weights(b[1], b[3], height, out_h) for b in boxes]
    wx = [_axis_weights(b[0], b[2], width, out_w) for b in boxes]
    return wy, wx


def region_sampling_matrices(boxes: torch.Tensor, height: int, width: int, out_h: int, out_w: int):
    """(R, out_h, H) and (R, out_w, W) float32 matrices such that ``region_crops`` equals roi_align's crops of
    the boxes; computed once per (frame size, boxes, output size) and cached."""
    key = tuple(tuple(round(float(v), 6) for v in b) for b in boxes.tolist())
    wy, wx = _sampling_cached(int(height), int(width), key, int(out_h), int(out_w))
    return torch.tensor(wy, dtype=torch.float32), torch.tensor(wx, dtype=torch.float32)


def _supports(wy: torch.Tensor, wx: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """Per box, the row and column range its sampling weights touch (y0, y1, x0, x1)."""
    out = []
    for a, b in zip(wy, wx):
        rows = torch.nonzero(a.abs().sum(0)).flatten()
        cols = torch.nonzero(b.abs().sum(0)).flatten()
        out.append((int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1))
    return out


def region_crops(images: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor, supports=None) -> torch.Tensor:
    """(N, C, H, W) -> (N, R, C, out_h, out_w): every box of every image, as batched matrix products
    (the same numbers as ``roi_align(images, rois, (out_h, out_w), 1.0, -1, aligned=True)``).

    With ``supports`` (see ``_supports``; what the model uses): per box, only its own rows and columns,
    batched over all images and channels, so the work is proportional to the boxes' area rather than R x the
    frame. Without: two dense products for all boxes at once."""
    if supports is not None:
        wy, wx = wy.to(images.dtype), wx.to(images.dtype)
        crops = []
        for r, (y0, y1, x0, x1) in enumerate(supports):
            crops.append(wy[r, :, y0:y1] @ images[:, :, y0:y1, x0:x1] @ wx[r, :, x0:x1].T)
        return torch.stack(crops, 1)
    n, c, h, w = images.shape
    r, oh, ow = wy.shape[0], wy.shape[1], wx.shape[1]
    wy, wx = wy.to(images.dtype), wx.to(images.dtype)
    cols = images.reshape(n * c * h, w) @ wx.reshape(r * ow, w).T                 # (N*C*H, R*ow)
    cols = cols.reshape(n * c, h, r, ow).permute(2, 1, 0, 3).reshape(r, h, n * c * ow)
    out = torch.bmm(wy, cols)                                                       # (R, oh, N*C*ow)
    return out.reshape(r, oh, n, c, ow).permute(2, 0, 3, 1, 4)
