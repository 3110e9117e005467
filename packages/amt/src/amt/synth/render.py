"""A skinned hand surface and its renderer: the hand is a dense union of spheres (capsules along the
phalanges, a filled palm, the thenar pad and the wrist/forearm) whose normals are blended by a soft-min over
the hit depths, so phalanges, palm and wrist read as one smooth skin. Rendering is exact ray-sphere
intersection, vectorised in numpy over pixel tiles x the spheres that reach each tile, with a z-buffer shared
with the grasped object (so the object occludes the hand and the hand the object), Lambert + ambient shading
under one light per frame, and one skin tone per subject with low-frequency albedo variation. Every finger gets
the same colour, so colour says nothing about which finger a pixel belongs to."""
from __future__ import annotations

import numpy as np

# radii (m) at the base, middle and tip joints of each finger's three phalanges: MCP, PIP, DIP, tip
FINGER_RADII = {5: (0.0098, 0.0088, 0.0077, 0.0066), 9: (0.0102, 0.0092, 0.0080, 0.0068),
                13: (0.0096, 0.0086, 0.0075, 0.0064), 17: (0.0086, 0.0076, 0.0067, 0.0058)}
THUMB_RADII = (0.0150, 0.0110, 0.0095, 0.0085)  # CMC, MCP, IP, tip
SPACING = 0.35  # sphere spacing along a capsule as a fraction of its radius (keeps the outline smooth)

# skin tones (sRGB, light to dark), one drawn per subject and jittered
SKIN_TONES = np.array([(247, 218, 196), (236, 192, 160), (224, 172, 138), (198, 140, 104), (170, 112, 80),
                       (130, 84, 58), (96, 62, 44)], np.float32)


def _capsule(a: np.ndarray, b: np.ndarray, ra: float, rb: float, trim_end: bool = False):
    """Sphere centres and radii along a -> b (radius interpolated). ``trim_end`` pulls the last sphere in by its
    radius, so that a fingertip joint lies on the skin, as DexYCB's tip joints do."""
    L = float(np.linalg.norm(b - a))
    if trim_end and L > rb:
        b = a + (b - a) * (L - rb) / L
        L -= rb
    n = max(2, int(np.ceil(L / (SPACING * min(ra, rb)))) + 1)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return a + t * (b - a), ra + t[:, 0] * (rb - ra)


def hand_spheres(J: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sphere centres [S,3], radii [S] and a part label [S] (0 palm/wrist, 1 finger, 2 fingertip/nail sphere)
    for the 21 joints ``J`` (metres, any frame). The part label feeds nail shading, the same for every finger."""
    C, R, P = [], [], []

    def add(c, r, part):
        C.append(c), R.append(np.asarray(r) * scale), P.append(np.full(len(c), part))

    for k, radii in FINGER_RADII.items():
        for s in range(3):
            c, r = _capsule(J[k + s], J[k + s + 1], radii[s], radii[s + 1], trim_end=s == 2)
            add(c, r, 1)
        add(c[-1:], r[-1:], 2)
    for s in range(3):
        c, r = _capsule(J[1 + s], J[2 + s], THUMB_RADII[s], THUMB_RADII[s + 1], trim_end=s == 2)
        add(c, r, 1)
    add(c[-1:], r[-1:], 2)
    # palm: lines from a widened wrist base to each finger's MCP, filled between neighbours
    w = J[0]
    axis = J[9] - w
    axis_n = axis / (np.linalg.norm(axis) + 1e-9)
    lines = []
    for k in (5, 9, 13, 17):
        v = J[k] - w
        lateral = v - axis_n * (v @ axis_n)
        lines.append((w + 0.6 * lateral + 0.12 * axis, J[k]))
    fill = [lines[0]]
    for (a0, b0), (a1, b1) in zip(lines, lines[1:]):
        fill += [(0.5 * (a0 + a1), 0.5 * (b0 + b1)), (a1, b1)]
    for a, b in fill:
        c, r = _capsule(a, b, 0.0125, 0.0115)
        add(c, r, 0)
    # thenar pad between the thumb metacarpal and the index metacarpal
    c, r = _capsule(0.5 * (J[1] + w) + 0.15 * axis, 0.5 * (J[2] + J[5]), 0.0140, 0.0105)
    add(c, r, 0)
    # wrist and forearm, leaving the crop
    c, r = _capsule(w + 0.1 * axis, w - 2.6 * axis, 0.0215, 0.0260)
    add(c, r, 0)
    return np.concatenate(C), np.concatenate(R), np.concatenate(P)


def raycast(K: np.ndarray, centres: np.ndarray, radii: np.ndarray, box: tuple[int, int, int, int], tile: int = 24,
            tau: float = 0.004):
    """Ray-sphere z-buffer over the pixel box (x0, y0, x1, y1) of a camera with intrinsics K.

    Returns depth [h,w] (inf where nothing is hit), the index of the nearest sphere [h,w] (-1 where none) and a
    normal [h,w,3] blended over the spheres hit within ~``tau`` metres of the nearest surface (soft-min skin).
    """
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    depth = np.full((h, w), np.inf, np.float32)
    index = np.full((h, w), -1, np.int32)
    normal = np.zeros((h, w, 3), np.float32)
    if h <= 0 or w <= 0 or len(centres) == 0:
        return depth, index, normal
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    c = centres.astype(np.float32)
    r = radii.astype(np.float32)
    z = np.maximum(c[:, 2], 1e-3)
    u, v, rp = fx * c[:, 0] / z + cx, fy * c[:, 1] / z + cy, 1.15 * fx * r / z + 1  # projected discs (conservative)
    cc = (c * c).sum(1) - r * r
    for ty in range(y0, y1, tile):
        for tx in range(x0, x1, tile):
            ty1, tx1 = min(ty + tile, y1), min(tx + tile, x1)
            sel = np.nonzero((u + rp >= tx) & (u - rp <= tx1) & (v + rp >= ty) & (v - rp <= ty1))[0]
            if len(sel) == 0:
                continue
            gx, gy = np.meshgrid(np.arange(tx, tx1, dtype=np.float32) + 0.5, np.arange(ty, ty1, dtype=np.float32) + 0.5)
            d = np.stack([(gx.ravel() - cx) / fx, (gy.ravel() - cy) / fy, np.ones(gx.size, np.float32)], 1)  # [P,3]
            cs = c[sel]
            b = d @ cs.T                                   # [P,S]
            dd = (d * d).sum(1, keepdims=True)             # [P,1]
            disc = b * b - dd * cc[sel][None]
            hit = disc > 0
            t = np.where(hit, (b - np.sqrt(np.maximum(disc, 0))) / dd, np.inf)  # z of the hit (d has z = 1)
            k = t.argmin(1)
            tmin = t[np.arange(len(t)), k]
            any_hit = np.isfinite(tmin)
            gap = np.where(hit, t - np.where(any_hit, tmin, 0)[:, None], np.inf)
            wgt = np.exp(-gap / tau) / r[sel][None]        # 0 where the ray misses
            tw = np.where(hit, t, 0) * wgt
            n = tw.sum(1, keepdims=True) * d - wgt @ cs    # sum_w (t d - c) / r
            n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
            sl = (slice(ty - y0, ty1 - y0), slice(tx - x0, tx1 - x0))
            shape = (ty1 - ty, tx1 - tx)
            depth[sl] = tmin.reshape(shape)
            index[sl] = np.where(any_hit, sel[k], -1).reshape(shape)
            normal[sl] = n.reshape(shape + (3,))
    return depth, index, normal


def projected_box(K: np.ndarray, centres: np.ndarray, radii: np.ndarray, W: int, H: int) -> tuple[int, int, int, int]:
    z = np.maximum(centres[:, 2], 1e-3)
    u = K[0, 0] * centres[:, 0] / z + K[0, 2]
    v = K[1, 1] * centres[:, 1] / z + K[1, 2]
    rp = 1.2 * K[0, 0] * radii / z + 2
    return (int(max(0, np.floor((u - rp).min()))), int(max(0, np.floor((v - rp).min()))),
            int(min(W, np.ceil((u + rp).max()))), int(min(H, np.ceil((v + rp).max()))))
