"""Keyframes for one video: indices and times as JSON, plus a contact-sheet PNG of the thumbnails."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from trainkit.device import check_precision, resolve_device
from trainkit.errors import UserError

from . import metrics as M
from .evaluate import check_budget_ratio, check_feature_dim, load_policy, score_videos, select_keyframes


def _load_video(video: str | None, dataset_root: str | None, key: str | None):
    if (video is None) == (dataset_root is None and key is None):
        raise UserError("give either --video FILE or --dataset_root DIR --key KEY", "dsn summarize",
                        "expected exactly one source")
    if video is not None:
        from .features import extract_features
        from .data import load_videos

        if not Path(video).is_file():
            raise UserError("video file not found", video, "expected a readable video file")
        with tempfile.TemporaryDirectory(prefix="dsn-summarize-") as tmp:
            root = extract_features([video], tmp)
            videos = load_videos(root)
        return next(iter(videos.values())), str(video)
    if dataset_root is None or key is None:
        raise UserError("--dataset_root and --key go together", "dsn summarize", "expected both")
    from .data import load_videos

    videos = load_videos(dataset_root, keys=[key])
    return videos[key], f"{dataset_root}:{key}"


def contact_sheet(frames: np.ndarray, keyframes: np.ndarray, labels: list[str], path: Path, columns: int = 6) -> Path:
    """Grid of the keyframes' thumbnails with their step/time labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(keyframes)
    cols = min(columns, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, idx, label in zip(axes.ravel(), keyframes, labels):
        ax.imshow(frames[int(idx)])
        ax.set_title(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summarize(checkpoint: str | Path, out: str | Path, *, video: str | None = None, dataset_root: str | None = None,
              key: str | None = None, budget_ratio: float | None = None, device: str = "cpu",
              selection: str | None = None, precision: str = "fp32") -> dict[str, Any]:
    check_precision(precision)
    dev = resolve_device(device)
    model, ckpt = load_policy(checkpoint, dev)
    v, source = _load_video(video, dataset_root, key)
    check_feature_dim(model, {v.key: v}, source)
    budget = budget_ratio if budget_ratio is not None else float((ckpt.get("train_config") or {}).get("budget_ratio", 0.06))
    check_budget_ratio(budget)
    scores = score_videos(model, [v], device=dev, precision=precision)[v.key]
    selection = selection or (ckpt.get("train_config") or {}).get("keyframe_selection", "nms")
    keyframes = select_keyframes(scores, budget, selection)
    frame_idx = np.asarray(v.picks)[keyframes]
    times = [float(f) / v.fps for f in frame_idx] if v.fps else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes = []
    record = {
        "source": source, "checkpoint": str(checkpoint), "model_type": ckpt.get("model_type"),
        "budget_ratio": budget, "keyframe_selection": selection, "n_steps": v.n_steps, "n_frames": int(v.n_frames), "fps": v.fps,
        "keyframe_steps": keyframes.tolist(), "keyframe_frames": frame_idx.astype(int).tolist(),
        "keyframe_times_s": times, "scores": [round(float(s), 6) for s in scores],
    }
    json_path = out / "keyframes.json"
    json_path.write_text(json.dumps(record, indent=1))
    sheet = None
    if v.frames is not None:
        labels = [f"#{int(f)}" + (f" {t:.1f}s" if times else "") for f, t in zip(frame_idx, times or [None] * len(frame_idx))]
        sheet = contact_sheet(v.frames, keyframes, labels, out / "contact_sheet.png")
    else:
        notes.append("no contact sheet: this dataset has no thumbnails ('frames')")
    return {"json": str(json_path), "contact_sheet": str(sheet) if sheet else None, "keyframes": keyframes.tolist(),
            "notes": notes}
