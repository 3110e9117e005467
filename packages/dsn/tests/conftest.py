"""Shared fixtures for the dsn tests.

- `write_eccv16(path, ...)`: an h5 file in the exact eccv16 schema of the SumMe/TVSum files
  (written with h5py directly, not through dsn.data, so the loader is tested against the real
  layout: no thumbnails, float user summaries, `gtsummary`, `video_name`, scalar n_frames).
- `eccv16_root`: a folder with such a file (4 videos, D=16) and a splits.json.
- `tiny_synthetic_root`: a small synthetic dataset (4 short videos, with thumbnails), built once
  per test session.
- `write_video(path, ...)`: a small MPEG-4 video written with PyAV.
The two writers are also served as fixtures (`eccv16_writer`, `video_writer`), since test modules
cannot import from conftest under --import-mode=importlib.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest


def write_eccv16(path, *, n_videos: int = 4, dim: int = 16, n_users: int = 3, seed: int = 0, stride: int = 15) -> Path:
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for i in range(1, n_videos + 1):
            n_steps = int(rng.integers(30, 50))
            n_frames = n_steps * stride - int(rng.integers(0, stride))
            picks = np.arange(n_steps) * stride
            bounds = np.sort(rng.choice(np.arange(2, n_steps - 2), size=3, replace=False)) * stride
            starts = np.concatenate([[0], bounds])
            ends = np.concatenate([bounds - 1, [n_frames - 1]])
            users = (rng.random((n_users, n_frames)) < 0.15).astype(np.float32)
            g = f.create_group(f"video_{i}")
            g["features"] = rng.standard_normal((n_steps, dim)).astype(np.float32)
            g["picks"] = picks.astype(np.int32)
            g["n_frames"] = float(n_frames)  # SumMe stores it as a float scalar
            g["n_steps"] = float(n_steps)
            g["change_points"] = np.stack([starts, ends], 1).astype(np.int32)
            g["n_frame_per_seg"] = (ends - starts + 1).astype(np.int32)
            g["user_summary"] = users
            g["gtscore"] = users[:, picks].mean(0).astype(np.float32)
            g["gtsummary"] = (users[:, picks].mean(0) > 0.3).astype(np.float32)
            g["video_name"] = f"clip {i}"
    return path


@pytest.fixture
def eccv16_root(tmp_path) -> Path:
    root = tmp_path / "eccv16"
    write_eccv16(root / "eccv16_dataset_toy_google_pool5.h5")
    keys = [f"video_{i}" for i in range(1, 5)]
    (root / "splits.json").write_text(json.dumps([{"train_keys": keys[:3], "test_keys": keys[3:]},
                                                  {"train_keys": keys[1:], "test_keys": keys[:1]}]))
    return root


@pytest.fixture(scope="session")
def tiny_synthetic_root(tmp_path_factory) -> Path:
    from dsn.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("tiny_synth"), num_videos=4, seed=3, num_splits=2, n_shots_range=(4, 6))


def write_video(path, *, n_frames: int = 90, fps: int = 30, size: int = 64, switch_at: int | None = None) -> Path:
    """A red shot with a moving line, then (from `switch_at`, default half-way) a blue/yellow
    striped shot with a moving line."""
    import av

    switch_at = n_frames // 2 if switch_at is None else switch_at
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(n_frames):
            img = np.zeros((size, size, 3), np.uint8)
            if i < switch_at:
                img[:] = (200, 40, 40)
                img[i % size, :] = 255
            else:  # a different shot: other colour and composition
                img[:] = (40, 40, 200)
                img[:, (np.arange(size) // 8) % 2 == 0] = (230, 230, 60)
                img[:, i % size] = 0
            for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return Path(path)


@pytest.fixture
def eccv16_writer():
    """The `write_eccv16` function (conftest helpers cannot be imported under --import-mode=importlib)."""
    return write_eccv16


@pytest.fixture
def video_writer():
    """The `write_video` function."""
    return write_video
