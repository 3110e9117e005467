"""The default dataset: procedural animation-like videos in the eccv16 format.

Each video is a cut sequence of shots of three kinds, modelled on TV animation:
- **action** ("sakuga") shots (~20 %): a palette of their own, several shapes moving fast, drawn
  on ones or twos. These are the important shots (importance 0.6-1.0).
- **dialogue** shots (~60 %): two recurring set-ups per video (shot / reverse shot) with a static
  character whose mouth and eyes change, held on threes. The same set-up comes back several
  times with identical drawings (importance 0.0-0.3).
- **establishing** shots (~20 %): a landscape with a slow pan, held on threes (importance 0.2-0.5).

The rendered 64x64 frames ARE the 2 fps sampled stream (step t shows source frame 15 t of a
nominal 30 fps video), and drawings are held for 1-3 steps, so exact duplicate frames are real
content, as in limited animation. Features come from `dsn.features.frame_features` (the same
extractor as real videos), shots from KTS on those features (`dsn.kts`), not from the generator's
true cuts. Simulated annotators each rank shots by importance plus noise and mark a contiguous
70-100 % part of the top shots until their 10-17 % budget is spent (`user_summary`); `gtscore` is the
mean user summary at the picks (DSNet's convention). The true cuts and importances are stored
as extra datasets `shot_bounds` / `shot_importance` (ignored by eccv16 readers).
"""
from __future__ import annotations

import colorsys
import logging
from pathlib import Path

import h5py
import numpy as np

from .data import Video, make_splits, write_dataset
from .features import frame_features, segments_from_steps
from .kts import kts_segments

log = logging.getLogger(__name__)

SIZE = 64
STRIDE = 15  # source frames per step (30 fps -> 2 fps)
FPS = 30.0
_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _colour(rng: np.random.Generator, sat=(0.5, 1.0), val=(0.5, 1.0), hue=None) -> np.ndarray:
    h = rng.random() if hue is None else hue % 1.0
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val)), dtype=np.float32) * 255.0


def _background(c0, c1, angle, offset, stripes, stripe_colour):
    d = (np.cos(angle) * _XX + np.sin(angle) * _YY) / (SIZE * 1.5) + 0.5
    img = c0[None, None] * (1 - d[..., None]) + c1[None, None] * d[..., None]
    if stripes:
        band = np.sin((_XX + offset) * (2 * np.pi / stripes)) > 0.6
        img[band] = 0.6 * img[band] + 0.4 * stripe_colour
    return img


def _draw(img, kind, colour, cx, cy, r):
    if kind == 0:
        m = (_XX - cx) ** 2 + (_YY - cy) ** 2 < r * r
    elif kind == 1:
        m = (np.abs(_XX - cx) < r) & (np.abs(_YY - cy) < r * 0.7)
    elif kind == 2:
        m = (np.abs(_XX - cx) + np.abs(_YY - cy)) < r * 1.2
    else:
        d = (_XX - cx) ** 2 + (_YY - cy) ** 2
        m = (d < r * r) & (d > (r * 0.55) ** 2)
    img[m] = colour


def _bounce(p, lo, hi):
    span = hi - lo
    q = np.mod(p - lo, 2 * span)
    return lo + np.where(q > span, 2 * span - q, q)


class _Setup:
    """A dialogue set-up: fixed background and character; drawing state = (mouth, blink)."""

    def __init__(self, rng):
        self.bg = (_colour(rng, sat=(0.1, 0.4)), _colour(rng, sat=(0.1, 0.4)), rng.uniform(0, np.pi))
        self.skin = _colour(rng, sat=(0.2, 0.5), val=(0.8, 1.0))
        self.body = _colour(rng, sat=(0.4, 0.9), val=(0.3, 0.8))
        self.cx = rng.uniform(22, 42)

    def render(self, pose: int, mouth: int, blink: bool):
        dx, dy = ((0, 0), (-3, 0), (3, 1), (0, 2))[pose]
        cx = self.cx + dx
        img = _background(self.bg[0], self.bg[1], self.bg[2], 0, 0, None)
        _draw(img, 1, self.body, self.cx, 56, 14)
        _draw(img, 0, self.skin, cx, 30 + dy, 13)
        eye = np.array([20, 20, 20], np.float32)
        for ex in (cx - 5, cx + 5):
            _draw(img, 1 if blink else 0, eye, ex, 27 + dy, 2.2 if blink else 2)
        _draw(img, 1, np.array([120, 30, 30], np.float32), cx, 36 + dy, 1.5 + 1.5 * mouth)
        return img


def _shot_frames(kind: str, length: int, rng: np.random.Generator, setups) -> np.ndarray:
    frames = np.empty((length, SIZE, SIZE, 3), dtype=np.uint8)
    cache: dict = {}
    if kind == "dialogue":
        setup = setups[int(rng.integers(len(setups)))]
        hold = 3
        # The pose changes every ~2 drawings, the mouth every drawing, a blink now and then.
        n_draw = length // hold + 1
        poses = np.repeat(rng.integers(0, 4, n_draw // 2 + 1), 2)
        states = [(int(poses[i]), int(rng.integers(3)), bool(rng.random() < 0.15)) for i in range(n_draw)]
        for t in range(length):
            s = states[t // hold]
            if s not in cache:
                cache[s] = np.clip(setup.render(*s), 0, 255).astype(np.uint8)
            frames[t] = cache[s]
        return frames
    if kind == "establishing":
        hue = rng.random()
        c0, c1 = _colour(rng, hue=hue, sat=(0.3, 0.6)), _colour(rng, hue=hue + 0.3, sat=(0.3, 0.6))
        stripe = _colour(rng, hue=hue + 0.5)
        angle = rng.uniform(0, 2 * np.pi)
        pan = rng.uniform(0.5, 2.0) * rng.choice([-1, 1])
        objs = [(int(rng.integers(4)), _colour(rng, sat=(0.2, 0.6)), rng.uniform(5, 59), rng.uniform(35, 59), rng.uniform(4, 9))
                for _ in range(int(rng.integers(2, 4)))]
        hold = 3
        for t in range(length):
            td = (t // hold) * hold
            if td not in cache:
                img = _background(c0, c1, angle, pan * td, 9, stripe)
                for kd, col, x, y, r in objs:
                    _draw(img, kd, col, (x + pan * td) % SIZE, y, r)
                cache[td] = np.clip(img, 0, 255).astype(np.uint8)
            frames[t] = cache[td]
        return frames
    # action: own palette, many fast shapes, on ones or twos
    hue = rng.random()
    c0, c1 = _colour(rng, hue=hue, val=(0.2, 0.6)), _colour(rng, hue=hue + rng.uniform(0.1, 0.5), val=(0.5, 1.0))
    stripe = _colour(rng, hue=hue + 0.5)
    angle = rng.uniform(0, 2 * np.pi)
    pan = rng.uniform(2.0, 5.0) * rng.choice([-1, 1])
    n_obj = int(rng.integers(3, 7))
    objs = [(int(rng.integers(4)), _colour(rng, hue=hue + rng.uniform(0.3, 0.7)), rng.uniform(8, 56, 2), rng.uniform(-6, 6, 2),
             rng.uniform(4, 11)) for _ in range(n_obj)]
    hold = int(rng.choice([1, 2]))
    flash = rng.random() < 0.5  # impact frames: palette inversion now and then
    for t in range(length):
        td = (t // hold) * hold
        if td not in cache:
            img = _background(c0, c1, angle + 0.05 * td, pan * td, 7, stripe)
            for kd, col, p0, v, r in objs:
                x = _bounce(p0[0] + v[0] * td, 4, 60)
                y = _bounce(p0[1] + v[1] * td, 4, 60)
                _draw(img, kd, col, x, y, r * (1 + 0.25 * np.sin(0.7 * td)))
            if flash and td % 7 == 3:
                img = 255.0 - img
            cache[td] = np.clip(img, 0, 255).astype(np.uint8)
        frames[t] = cache[td]
    return frames


def _plan_shots(rng, n_shots):
    kinds = []
    for i in range(n_shots):
        r = rng.random()
        kinds.append("action" if r < 0.2 else ("dialogue" if r < 0.8 else "establishing"))
    if "action" not in kinds:
        kinds[int(rng.integers(n_shots))] = "action"
    if "dialogue" not in kinds:
        kinds[int(rng.integers(n_shots))] = "dialogue"
    lengths = {"action": (8, 22), "dialogue": (10, 28), "establishing": (12, 26)}
    imp = {"action": (0.6, 1.0), "dialogue": (0.0, 0.3), "establishing": (0.2, 0.5)}
    return [(k, int(rng.integers(*lengths[k])), float(rng.uniform(*imp[k]))) for k in kinds]


def _annotate(rng, shot_bounds, importance, n_frames, n_users, noise):
    users = np.zeros((n_users, n_frames), dtype=np.uint8)
    for u in range(n_users):
        budget = int(rng.uniform(0.10, 0.17) * n_frames)
        order = np.argsort(-(importance + rng.normal(0, noise, len(importance))))
        for s in order:
            f0, f1 = shot_bounds[s]
            length = f1 - f0 + 1
            take = int(length * rng.uniform(0.7, 1.0))
            take = min(take, budget)
            if take < STRIDE:
                continue
            start = f0 + int(rng.integers(0, length - take + 1))
            users[u, start : start + take] = 1
            budget -= take
            if budget < STRIDE:
                break
    return users


def make_video(key: str, rng: np.random.Generator, *, n_shots_range=(10, 16), n_users: int = 10,
               annotator_noise: float = 0.15) -> tuple[Video, np.ndarray, np.ndarray]:
    """One synthetic video; also returns its true shot bounds (frames, inclusive) and importances."""
    setups = [_Setup(rng) for _ in range(2)]
    plan = _plan_shots(rng, int(rng.integers(*n_shots_range)))
    frames = np.concatenate([_shot_frames(kind, length, rng, setups) for kind, length, _ in plan])
    n_steps = len(frames)
    picks = np.arange(n_steps, dtype=np.int64) * STRIDE
    n_frames = n_steps * STRIDE
    starts = np.cumsum([0] + [length for _, length, _ in plan[:-1]])
    ends = starts + np.array([length for _, length, _ in plan]) - 1
    shot_bounds = np.stack([starts * STRIDE, ends * STRIDE + STRIDE - 1], axis=1).astype(np.int64)
    importance = np.array([imp for _, _, imp in plan], dtype=np.float32)
    user_summary = _annotate(rng, shot_bounds, importance, n_frames, n_users, annotator_noise)
    features = frame_features(frames)
    cps, nfps = segments_from_steps(kts_segments(features), picks, n_frames)
    video = Video(
        key=key,
        features=features,
        picks=picks,
        n_frames=n_frames,
        change_points=cps,
        n_frame_per_seg=nfps,
        user_summary=user_summary,
        gtscore=user_summary[:, picks].mean(axis=0).astype(np.float32),
        frames=frames,
        fps=FPS,
    )
    return video, shot_bounds, importance


def make_dataset(out_dir, *, num_videos: int = 20, seed: int = 0, num_splits: int = 5, n_users: int = 10,
                 n_shots_range=(10, 16), annotator_noise: float = 0.15) -> Path:
    """Build the synthetic dataset (eccv16 h5 + frames + splits.json) in out_dir; returns out_dir.

    Deterministic by seed: every video draws from its own generator seeded by (seed, index).
    """
    if num_videos < 2:
        from trainkit.errors import UserError

        raise UserError(f"num_videos is {num_videos}", where="--num_videos", expected="at least 2 (train and test splits)")
    videos, extras = [], []
    for i in range(num_videos):
        rng = np.random.default_rng([seed, i])
        v, bounds, imp = make_video(f"video_{i + 1}", rng, n_shots_range=n_shots_range, n_users=n_users,
                                    annotator_noise=annotator_noise)
        videos.append(v)
        extras.append((bounds, imp))
    splits = make_splits([v.key for v in videos], num_splits=num_splits, seed=seed)
    out = write_dataset(out_dir, videos, splits, attrs={"feature_extractor": "dsn.features/v1", "generator": "dsn.synthetic",
                                                        "seed": int(seed), "sample_fps": 2.0})
    from .data import DATASET_FILE

    with h5py.File(Path(out) / DATASET_FILE, "a") as f:
        for v, (bounds, imp) in zip(videos, extras):
            f[v.key]["shot_bounds"] = bounds
            f[v.key]["shot_importance"] = imp
    return out
