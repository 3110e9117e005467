"""Keyframes for one video: indices and times as JSON, plus a contact-sheet PNG of the thumbnails."""
from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from trainkit.device import check_precision, resolve_device
from trainkit.errors import UserError

from .evaluate import check_budget_ratio, check_feature_dim, load_policy, score_videos, select_keyframes


MIN_STEPS = 20  # a short clip is sampled faster, so that a 10-s clip has 20 steps rather than 2 fps' 21 -> never 1-2
SECONDS_PER_KEYFRAME = 5.0  # at least one keyframe per ~5 s of video
SHEET_MAX_SIDE = 640  # contact-sheet pictures: source aspect, long side at most this (full resolution below it)


def _load_video(video: str | None, dataset_root: str | None, key: str | None, kts_vmax: float | None = None):
    if (video is None) == (dataset_root is None and key is None):
        raise UserError("give either --video FILE or --dataset_root DIR --key KEY", "dsn summarize",
                        "expected exactly one source")
    if video is not None:
        from .features import video_from_file

        if not Path(video).is_file():
            raise UserError("video file not found", video, "expected a readable video file")
        kts = {} if kts_vmax is None else {"kts_vmax": kts_vmax}
        v = video_from_file(video, **kts)
        if v.n_steps < MIN_STEPS and v.n_frames > v.n_steps:
            # Short clip: sample every n_frames // MIN_STEPS frames instead of 2 fps (audit: a 10-s clip had
            # 21 steps at a 6 % budget and came out as one keyframe).
            stride = max(1, v.n_frames // MIN_STEPS)
            v = video_from_file(video, sample_fps=v.fps / stride, **kts)
        return v, str(video)
    if dataset_root is None or key is None:
        raise UserError("--dataset_root and --key go together", "dsn summarize", "expected both")
    from .data import load_videos

    videos = load_videos(dataset_root, keys=[key])
    return videos[key], f"{dataset_root}:{key}"


def step_shots(v) -> np.ndarray:
    """Shot index of every step (from the KTS change points, which are frame ranges)."""
    starts = np.asarray(v.change_points, dtype=np.int64)[:, 0]
    return np.searchsorted(starts, np.asarray(v.picks), side="right") - 1


def covering_keyframes(scores: np.ndarray, v, budget_ratio: float, selection: str) -> np.ndarray:
    """The model's keyframes, plus the best-scoring step of every shot and of every ~5-s window that has
    none yet: at least one keyframe per shot and per SECONDS_PER_KEYFRAME of video. Sorted step indices."""
    base = select_keyframes(scores, budget_ratio, selection)
    chosen = set(int(i) for i in base)
    groups = [step_shots(v)]
    if v.fps:
        groups.append((np.asarray(v.picks) / v.fps // SECONDS_PER_KEYFRAME).astype(np.int64))
    for g in groups:
        for label in np.unique(g):
            members = np.where(g == label)[0]
            if not chosen.intersection(members.tolist()):
                chosen.add(int(members[np.argmax(scores[members])]))
    return np.asarray(sorted(chosen), dtype=np.int64)


def contact_sheet(pictures: list[np.ndarray], labels: list[str], path: Path, columns: int = 4) -> Path:
    """Grid of keyframe pictures at their own aspect (no squashing), each titled with its time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(pictures)
    cols = min(columns, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    h, w = pictures[0].shape[:2]
    cell_w = 4.0
    cell_h = cell_w * h / w + 0.35
    dpi = max(60, min(160, int(round(w / cell_w))))  # about one source pixel per output pixel up to the cap
    fig, axes = plt.subplots(rows, cols, figsize=(cell_w * cols, cell_h * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, pic, label in zip(axes.ravel(), pictures, labels):
        ax.imshow(pic, interpolation="antialiased")
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def write_skim(path_in, out_path: Path, ranges: list[tuple[int, int]], fps: float, *, max_side: int = 640) -> Path:
    """A short video of the selected frame ranges (inclusive, on the grid of `fps`), in order: MP4 (MPEG-4
    Part 2, which every PyAV build can encode) or, for a .gif path, an animated GIF."""
    import av

    from .features import _open, _rgb, _rotation, _timeline

    frames = []
    end = max(e for _, e in ranges)

    def emit(frame, rotation, lo, hi):
        # A decoded frame is shown on grid frames lo..hi-1 (until the next frame's timestamp): repeat it for
        # each of those inside the ranges. A variable-frame-rate file holds fewer frames than its grid (tree.avi:
        # 68 on 444), and writing each decoded frame once played the skim ~7x too fast (audit aud21-6).
        n = sum(1 for g in range(lo, hi) if any(s <= g <= e for s, e in ranges))
        if n:
            scale = min(1.0, max_side / max(frame.width, frame.height))
            w = max(2, int(round(frame.width * scale / 2)) * 2)
            h = max(2, int(round(frame.height * scale / 2)) * 2)
            frames.extend([_rgb(frame, rotation, w, h)] * n)

    container = _open(Path(path_in))
    with container:
        stream = container.streams.video[0]
        rotation, prev, prev_idx = None, None, 0
        for frame, idx in _timeline(container, stream, fps):
            if rotation is None:
                rotation = _rotation(frame)
            if prev is not None:
                emit(prev, rotation, prev_idx, min(idx, end + 1))
            prev, prev_idx = frame, idx
            if idx > end:
                prev = None
                break
        if prev is not None:
            emit(prev, rotation, prev_idx, end + 1)
    if not frames:
        raise UserError("no frames in the selected segments", str(path_in), "a decodable video")
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.stem + ".tmp" + out_path.suffix)
    if out_path.suffix.lower() == ".gif":
        from PIL import Image

        step = max(1, int(round(fps / 10)))  # GIFs at ~10 fps keep the file small
        imgs = [Image.fromarray(f) for f in frames[::step]]
        imgs[0].save(tmp, save_all=True, append_images=imgs[1:], duration=int(1000 * step / fps), loop=0)
    else:
        rate = Fraction(fps).limit_denominator(1001)
        with av.open(str(tmp), "w", format="mp4") as c:
            s = c.add_stream("mpeg4", rate=rate)
            s.height, s.width = frames[0].shape[:2]
            s.pix_fmt = "yuv420p"
            s.bit_rate = 2_000_000
            for f in frames:
                for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(packet)
            for packet in s.encode():
                c.mux(packet)
    tmp.replace(out_path)
    return out_path


def summarize(checkpoint: str | Path, out: str | Path, *, video: str | None = None, dataset_root: str | None = None,
              key: str | None = None, budget_ratio: float | None = None, device: str = "cpu",
              selection: str | None = None, precision: str = "fp32", skim: str | None = None,
              kts_vmax: float | None = None) -> dict[str, Any]:
    check_precision(precision)
    dev = resolve_device(device)
    model, ckpt = load_policy(checkpoint, dev)
    if skim and video is None:
        raise UserError("--skim needs --video (the dataset holds no video)", "--skim", "use it with --video FILE")
    if skim and Path(skim).suffix.lower() not in (".mp4", ".gif"):
        raise UserError(f"unknown skim format '{Path(skim).suffix}'", "--skim", "a file name ending in .mp4 or .gif")
    if Path(out).exists() and not Path(out).is_dir():  # audit aud21-4: mkdir's FileExistsError traceback
        raise UserError("--out is an existing file", str(out), "a folder (created if missing)")
    if kts_vmax is not None and video is None:
        raise UserError("--kts_vmax needs --video (a dataset's shots are already stored)", "--kts_vmax",
                        "use it with --video FILE")
    v, source = _load_video(video, dataset_root, key, kts_vmax)
    check_feature_dim(model, {v.key: v}, source)
    budget = budget_ratio if budget_ratio is not None else float((ckpt.get("train_config") or {}).get("budget_ratio", 0.06))
    check_budget_ratio(budget)
    scores = score_videos(model, [v], device=dev, precision=precision)[v.key]
    selection = selection or (ckpt.get("train_config") or {}).get("keyframe_selection", "nms")
    keyframes = covering_keyframes(scores, v, budget, selection)
    frame_idx = np.asarray(v.picks)[keyframes]
    times = [float(f) / v.fps for f in frame_idx] if v.fps else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes = []
    pictures, picture_kind = None, None
    if video is not None:
        from .features import grab_frames

        pictures = grab_frames(video, frame_idx, v.fps, max_side=SHEET_MAX_SIDE)
        picture_kind = "decoded frames (upright, source aspect)"
    elif v.frames is not None:
        pictures = [v.frames[int(i)] for i in keyframes]
        picture_kind = "dataset thumbnails ('frames')"
    shots = step_shots(v)
    record = {
        "source": source, "checkpoint": str(checkpoint), "model_type": ckpt.get("model_type"),
        "budget_ratio": budget, "keyframe_selection": selection + "+cover(shot, %gs)" % SECONDS_PER_KEYFRAME,
        "n_steps": v.n_steps, "n_frames": int(v.n_frames), "fps": v.fps,
        "duration_s": (v.n_frames / v.fps) if v.fps else None, "n_shots": int(len(v.change_points)),
        "step_frames": int(np.median(np.diff(v.picks))) if v.n_steps > 1 else int(v.n_frames),
        "keyframe_steps": keyframes.tolist(), "keyframe_frames": frame_idx.astype(int).tolist(),
        "keyframe_times_s": times, "keyframe_shots": shots[keyframes].astype(int).tolist(),
        "shot_start_frames": np.asarray(v.change_points)[:, 0].astype(int).tolist(),
        "scores": [round(float(s), 6) for s in scores],
        "thumbnail": None,
    }
    sheet = None
    if pictures:
        h, w = pictures[0].shape[:2]
        record["thumbnail"] = {"width": int(w), "height": int(h), "aspect": round(w / h, 4), "kind": picture_kind}
        labels = [(f"{t:.2f} s" if t is not None else "") + f"  #{int(f)}" for f, t in
                  zip(frame_idx, times or [None] * len(frame_idx))]
        sheet = contact_sheet(pictures, labels, out / "contact_sheet.png")
    else:
        notes.append("no contact sheet: this dataset has no thumbnails ('frames')")
    skim_path = None
    if skim:
        # Each keyframe's shot, clipped to +-1 s around the keyframe, so the skim stays short.
        half = int(round(v.fps or 25))
        cps = np.asarray(v.change_points)
        ranges = [(max(int(cps[s, 0]), int(f) - half), min(int(cps[s, 1]), int(f) + half))
                  for f, s in zip(frame_idx, shots[keyframes])]
        skim_path = write_skim(video, out / Path(skim).name if not Path(skim).is_absolute() else Path(skim), ranges,
                               v.fps or 25.0)
        record["skim"] = {"path": str(skim_path), "frame_ranges": [list(r) for r in ranges]}
    json_path = out / "keyframes.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(json_path)
    return {"json": str(json_path), "contact_sheet": str(sheet) if sheet else None, "keyframes": keyframes.tolist(),
            "skim": str(skim_path) if skim_path else None, "notes": notes}
