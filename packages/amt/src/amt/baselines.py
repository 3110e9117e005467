"""No-information baselines for hand pose, and handedness from 3-D geometry (numpy only).

PA-MPJPE removes rotation, translation and scale, so the constant it must beat is the mean hand *in the hand's
own frame*: a generalised-Procrustes mean of the training hands (right-hand frame, proper rotations). A mean
taken in camera frames averages hands seen from every side into a shrunken blob and flatters any model.
For root-relative MPJPE the matching constant is that hand turned to each frame's true orientation (an oracle
that knows only where the hand points, nothing of how the fingers bend).
"""
from __future__ import annotations

import numpy as np

# joint indices (DexYCB / MANO / MediaPipe order)
WRIST, INDEX_MCP, MIDDLE_MCP, LITTLE_MCP = 0, 5, 9, 17
FINGERS = ((5, 8), (9, 12), (13, 16), (17, 20))  # (mcp, tip) of index, middle, ring, little


def _proper_rotation(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """R (proper, det +1) minimising |A R^T - B| for centred [..., N, 3] sets (Kabsch), batched."""
    H = np.swapaxes(A, -1, -2) @ B
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(np.swapaxes(Vt, -1, -2) @ np.swapaxes(U, -1, -2)))
    d = np.where(d == 0, 1.0, d)
    D = np.zeros(H.shape)
    D[..., 0, 0] = D[..., 1, 1] = 1.0
    D[..., 2, 2] = d
    return np.swapaxes(Vt, -1, -2) @ D @ np.swapaxes(U, -1, -2)


def canonical_hand(joints: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Generalised-Procrustes mean of hands [N,21,3] (already in the right-hand frame), proper rotations.

    Each hand is centred and scaled to unit size, all are rotated onto the running mean, the mean is
    re-normalised; repeated until it stops moving. Returned root-relative (wrist at 0), at the hands' mean
    centroid size, so it is a plausible hand in metres.
    """
    J = np.asarray(joints, dtype=np.float64)
    if J.ndim != 3 or J.shape[1:] != (21, 3) or len(J) == 0:
        raise ValueError(f"canonical_hand needs [N,21,3] joints, got {J.shape}")
    X = J - J.mean(1, keepdims=True)
    size = np.linalg.norm(X.reshape(len(X), -1), axis=1)
    X = X / np.maximum(size, 1e-12)[:, None, None]
    mean = X[0]
    for _ in range(iterations):
        R = _proper_rotation(X, np.broadcast_to(mean, X.shape))
        aligned = X @ np.swapaxes(R, -1, -2)
        new = aligned.mean(0)
        new = new / np.linalg.norm(new)
        # fix the gauge: keep the first mean's orientation so iterations compare like with like
        new = new @ _proper_rotation(new, mean).T
        moved = np.abs(new - mean).max()
        mean = new
        if moved < 1e-10:
            break
    mean = mean * size.mean()
    return mean - mean[WRIST]


def orient_like(template: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The root-relative template [21,3] turned about its wrist by the proper rotation that best fits each
    root-relative target [B,21,3] (no scale change): the oracle-orientation prediction for root-relative MPJPE.
    The fit is about the wrist, the point root-relative MPJPE pins, so the oracle's error is articulation and
    hand size only."""
    T = np.asarray(template, dtype=np.float64)
    T = T - T[WRIST]
    G = np.asarray(targets, dtype=np.float64)
    G = G - G[:, WRIST:WRIST + 1]
    R = _proper_rotation(np.broadcast_to(T, G.shape), G)
    return np.broadcast_to(T, G.shape) @ np.swapaxes(R, -1, -2)


def chirality(joints: np.ndarray) -> np.ndarray:
    """Per hand [N] a signed score: > 0 bends like a right hand, < 0 like a left hand (mirror image).

    With x = little MCP -> index MCP (towards the thumb), y = wrist -> middle MCP (along the palm) and z the
    direction the fingers curl to (their tips' offset from the palm line, i.e. the palm side), a right hand has
    x, y, z right-handed (det > 0); a mirror image flips the sign. Normalised by the hand size cubed.
    """
    J = np.asarray(joints, dtype=np.float64).reshape(-1, 21, 3)
    x = J[:, INDEX_MCP] - J[:, LITTLE_MCP]
    y = J[:, MIDDLE_MCP] - J[:, WRIST]
    yn = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    curl = np.zeros_like(x)
    for mcp, tip in FINGERS:
        d = J[:, tip] - J[:, mcp]
        curl += d - (d * yn).sum(1, keepdims=True) * yn
    det = np.einsum("bi,bi->b", np.cross(x, y), curl)
    return det / np.maximum(np.linalg.norm(y, axis=1), 1e-12) ** 3


def handedness(joints: np.ndarray) -> list[str]:
    """'right' / 'left' per hand from :func:`chirality`."""
    return ["right" if c >= 0 else "left" for c in chirality(joints)]
