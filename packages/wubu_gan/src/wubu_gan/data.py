"""Video data: PyAV decoding into a per-(video, size) uint8 memory-mapped frame cache, clips, a block split
without shared frames, weights-free optical flow, and the generated demo videos.

Nothing holds a whole video in RAM: decoding streams frames in chunks of 64 into the cache file, and the
dataset reads clips out of ``np.load(..., mmap_mode="r")``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from trainkit.errors import UserError

VIDEO_EXTS = (".mp4", ".avi", ".webm", ".gif", ".mkv", ".mov", ".m4v")
SQUARE_VIDEO = "dummy_video_hybridgen_v01.mp4"
SHAPES_VIDEO = "procedural_shapes_v01.mp4"
DEMO_DIR_NAME = "demo_video_data_dir"


def cache_root() -> Path:
    return Path(os.environ.get("WUBU_GAN_CACHE", Path.home() / ".cache" / "wubu_gan"))


# ---------------------------------------------------------------- finding and decoding videos
def list_videos(path: str | Path, flag: str = "--video_data_path") -> list[Path]:
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() not in VIDEO_EXTS:
            raise UserError(f"not a video file: {p.name}", f"{flag} {p}", f"a file ending in {', '.join(VIDEO_EXTS)}")
        return [p]
    if p.is_dir():
        videos = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in VIDEO_EXTS)
        if not videos:
            raise UserError("folder holds no video files", f"{flag} {p}", f"files ending in {', '.join(VIDEO_EXTS)}")
        return videos
    raise UserError("path not found", f"{flag} {p}", "a video file or a folder of videos")


def _resize_chunk(frames: list[np.ndarray], h: int, w: int) -> np.ndarray:
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _cache_key(video: Path, *parts) -> str:
    st = video.stat()
    text = "|".join(str(v) for v in (video.resolve(), st.st_size, int(st.st_mtime_ns), *parts))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def decode_video(video: Path, h: int, w: int, flag: str = "--video_data_path") -> Path:
    """Decode ``video`` (PyAV) into ``<cache>/frames/<key>.npy`` (N, h, w, 3) uint8; returns the path."""
    import av

    out = cache_root() / "frames" / f"{video.stem}_{h}x{w}_{_cache_key(video, h, w)}.npy"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(f".raw.{os.getpid()}")
    count = 0
    try:
        with open(raw, "wb") as f, av.open(str(video)) as container:
            if not container.streams.video:
                raise UserError("file has no video stream", f"{flag} {video}", "a readable video file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            chunk = []
            for frame in container.decode(stream):
                chunk.append(frame.to_ndarray(format="rgb24"))
                if len(chunk) == 64:
                    f.write(_resize_chunk(chunk, h, w).tobytes())
                    count += len(chunk)
                    chunk = []
            if chunk:
                f.write(_resize_chunk(chunk, h, w).tobytes())
                count += len(chunk)
    except UserError:
        raw.unlink(missing_ok=True)
        raise
    except Exception as err:  # a file PyAV/FFmpeg cannot read is the user's input, not a bug
        raw.unlink(missing_ok=True)
        raise UserError("cannot decode video", f"{flag} {video}",
                        f"a video FFmpeg can read ({type(err).__name__}: {' '.join(str(err).split())[:120]})") from None
    if count == 0:
        raw.unlink(missing_ok=True)
        raise UserError("video has no frames", f"{flag} {video}", "a video with at least one clip of frames")
    frames = np.memmap(raw, dtype=np.uint8, mode="r", shape=(count, h, w, 3))
    tmp = out.with_suffix(f".tmp{os.getpid()}.npy")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, h, w, 3))
    for i in range(0, count, 256):  # copy in chunks: never the whole video in RAM
        arr[i:i + 256] = frames[i:i + 256]
    arr.flush()
    del arr, frames
    os.replace(tmp, out)
    raw.unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------- weights-free optical flow
def compute_flow_cache(frames_path: Path, skip: int, method: str = "ilk") -> Path:
    """Flow from frame i to frame i+skip for every i, (N-skip, 2, h, w) float16 (dx, dy in pixels), cached.

    scikit-image's iterative Lucas-Kanade (``ilk``, default: ~2x faster) or TV-L1 (``tvl1``) on grey frames.
    """
    from skimage.registration import optical_flow_ilk, optical_flow_tvl1

    out = frames_path.with_name(frames_path.stem + f"_flow{skip}_{method}.npy")
    if out.is_file():
        return out
    frames = np.load(frames_path, mmap_mode="r")
    n, h, w, _ = frames.shape
    count = max(0, n - skip)
    tmp = out.with_suffix(f".tmp{os.getpid()}.npy")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(count, 2, h, w))
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    flow_fn = optical_flow_ilk if method == "ilk" else optical_flow_tvl1
    for i in range(count):
        a = frames[i].astype(np.float32) @ weights / 255.0
        b = frames[i + skip].astype(np.float32) @ weights / 255.0
        v, u = flow_fn(a, b)  # skimage returns (row, col) displacements of b relative to a
        arr[i, 0] = u
        arr[i, 1] = v
    arr.flush()
    del arr
    os.replace(tmp, out)
    return out


def flow_between(a: np.ndarray, b: np.ndarray, method: str = "ilk") -> np.ndarray:
    """Flow from frame a to frame b, (2, h, w) float32 (dx, dy in pixels), the convention of compute_flow_cache:
    a(p) ~ b(p + flow(p)). a, b: (h, w, 3) uint8 or float in [0, 255]. For frames the model predicts."""
    from skimage.registration import optical_flow_ilk, optical_flow_tvl1

    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    flow_fn = optical_flow_ilk if method == "ilk" else optical_flow_tvl1
    v, u = flow_fn(np.asarray(a, np.float32) @ weights / 255.0, np.asarray(b, np.float32) @ weights / 255.0)
    return np.stack([u, v]).astype(np.float32)


# ---------------------------------------------------------------- clips and the split
@dataclass
class VideoSource:
    path: Path
    frames: Path
    num_frames: int
    flow: Path | None = None


def prepare_videos(path, h: int, w: int, flag: str, need_frames: int, frame_skip: int, flow_method: str | None) -> list[VideoSource]:
    sources = []
    for video in list_videos(path, flag):
        cached = decode_video(video, h, w, flag)
        n = int(np.load(cached, mmap_mode="r").shape[0])
        sources.append(VideoSource(video, cached, n))
    span = (need_frames - 1) * frame_skip + 1
    if all(s.num_frames < span for s in sources):
        longest = max(s.num_frames for s in sources)
        raise UserError(f"too few frames for one clip (longest video has {longest})", f"{flag} {path}",
                        f"at least {span} frames (num_input_frames+num_predict_frames with frame_skip)")
    for s in sources:
        if s.num_frames < span:
            print(f"note: skipping {s.path.name}: {s.num_frames} frames, fewer than one clip ({span})", file=sys.stderr)
    if flow_method:
        for s in sources:
            if s.num_frames >= span:
                s.flow = compute_flow_cache(s.frames, frame_skip, flow_method)
    return [s for s in sources if s.num_frames >= span]


def block_split(num_frames: int, span: int, fraction: float, block_clips: int, seed: int):
    """(train starts, val starts) for one video: val = whole blocks of consecutive clips, and no train clip
    touches a frame of a val block (the original's sliding windows shared frames across the split).

    Seeded by ``seed`` only (never the rank), so every DDP rank gets the same split.
    """
    n_clips = num_frames - span + 1
    if n_clips < 2:
        raise UserError(f"video has {num_frames} frames: too few for a train and a validation clip", "--video_data_path",
                        f"at least {span + 1} frames, or a --validation_video_path")
    block_clips = max(1, min(block_clips, int(fraction * n_clips) or 1))
    block_frames = block_clips + span - 1
    # Slots of block_frames + (span - 1) guard frames; val blocks go in seeded, non-adjacent slots.
    slot = block_frames + span - 1
    n_slots = max(1, num_frames // slot)
    n_blocks = min(n_slots, max(1, round(fraction * n_clips / block_clips)))
    chosen = sorted(random.Random(seed + 7).sample(range(n_slots), n_blocks))
    val_frames = np.zeros(num_frames, dtype=bool)
    val_starts = []
    for k in chosen:
        b0 = k * slot
        val_starts.extend(range(b0, b0 + block_clips))
        val_frames[b0:b0 + block_frames] = True
    train_starts = [s for s in range(n_clips) if not val_frames[s:s + span].any()]
    if not train_starts:
        raise UserError(f"video has {num_frames} frames: nothing left for training after the validation split",
                        "--validation_split_fraction", "a smaller fraction or a longer video")
    return train_starts, val_starts


class VideoClips(Dataset):
    """Clips of ``num_frames`` frames ``frame_skip`` apart: {"frames": (T, C, H, W) in [-1, 1], "flow": (T-1, 2, H, W)}."""

    def __init__(self, sources: list[VideoSource], starts: list[tuple[int, int]], num_frames: int, frame_skip: int):
        self.sources = sources
        self.index = starts  # (source index, first frame)
        self.num_frames = num_frames
        self.frame_skip = frame_skip
        self._arrays: dict = {}

    def __len__(self) -> int:
        return len(self.index)

    def _array(self, key):
        if key not in self._arrays:  # opened lazily, so each DataLoader worker maps the file itself
            src, kind = key
            path = self.sources[src].frames if kind == "frames" else self.sources[src].flow
            self._arrays[key] = np.load(path, mmap_mode="r")
        return self._arrays[key]

    def __getitem__(self, i: int) -> dict:
        src, start = self.index[i]
        idx = [start + k * self.frame_skip for k in range(self.num_frames)]
        frames = torch.from_numpy(np.ascontiguousarray(self._array((src, "frames"))[idx]))
        item = {"frames": frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)}
        if self.sources[src].flow is not None:
            item["flow"] = torch.from_numpy(np.asarray(self._array((src, "flow"))[idx[:-1]], dtype=np.float32))
        return item


def build_datasets(cfg, log=print, flow_method: str | None = None,
                   generate_demo: bool = True) -> tuple[VideoClips, VideoClips]:
    """Train and validation clips for a config (generating the demo videos when asked: `train` only; evaluate,
    sample and resume must read the run's own data, never a freshly generated stand-in)."""
    T, skip = cfg.total_frames, cfg.frame_skip
    span = (T - 1) * skip + 1
    if generate_demo:
        ensure_demo_videos(cfg.video_data_path, cfg.image_h, cfg.image_w, T * skip, log=log)
    train_src = prepare_videos(cfg.video_data_path, cfg.image_h, cfg.image_w, "--video_data_path", T, skip, flow_method)
    if cfg.validation_video_path:
        val_src = prepare_videos(cfg.validation_video_path, cfg.image_h, cfg.image_w, "--validation_video_path", T, skip,
                                 flow_method)
        train = VideoClips(train_src, [(i, s) for i, v in enumerate(train_src) for s in range(v.num_frames - span + 1)], T, skip)
        val = VideoClips(val_src, [(i, s) for i, v in enumerate(val_src) for s in range(v.num_frames - span + 1)], T, skip)
        return train, val
    train_idx, val_idx = [], []
    for i, v in enumerate(train_src):
        try:
            tr, va = block_split(v.num_frames, span, cfg.validation_split_fraction, cfg.val_block_size, cfg.seed)
        except UserError:
            if len(train_src) == 1:
                raise
            # One short video in a collection: all of its clips train; the others give the validation blocks.
            log(f"note: {v.path.name} ({v.num_frames} frames) is too short to split: all its clips go to training")
            tr, va = list(range(v.num_frames - span + 1)), []
        train_idx += [(i, s) for s in tr]
        val_idx += [(i, s) for s in va]
    if not val_idx:
        raise UserError("no video is long enough for a validation block", f"--video_data_path {cfg.video_data_path}",
                        "a longer video, or a --validation_video_path")
    return VideoClips(train_src, train_idx, T, skip), VideoClips(train_src, val_idx, T, skip)


# ---------------------------------------------------------------- demo videos
def _write_video(path: Path, frames_iter, h: int, w: int, fps: int = 15) -> None:
    import av

    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "12", "preset": "medium"}
        for rgb in frames_iter:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def square_frames(num_frames: int, h: int, w: int):
    """The original's dummy video: an H/4 square moving (5i, 3i) px on black, colour (10i, 5i, 2i) mod 255."""
    side = max(1, h // 4)
    for i in range(num_frames):
        img = np.zeros((h, w, 3), dtype=np.uint8)
        x, y = (5 * i) % max(1, w - side), (3 * i) % max(1, h - side)
        img[y:y + side, x:x + side] = ((10 * i) % 255, (5 * i) % 255, (2 * i) % 255)
        yield img


def shapes_frames(num_frames: int, h: int, w: int, seed: int = 0):
    """A richer procedural video: a textured background seen through a panning camera, and four textured
    shapes (disc, square, triangle, ring) that move, bounce and change phase, each with its own texture."""
    rng = np.random.default_rng(seed)
    # The scene depends on the seed too (background phases and scales, camera path phase), so another seed is
    # a new video, not the same background with other shapes; seed 0 keeps its original values (all offsets 0).
    scene = [float(v) for v in np.random.default_rng(10_000 + seed).uniform(-1, 1, 6)] if seed else [0.0] * 6
    H, W = 2 * h, 3 * w                       # the world the camera pans over
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    fx, fy, fd = 9.0 * (1 + 0.3 * scene[0]), 13.0 * (1 + 0.3 * scene[1]), 5.0 * (1 + 0.3 * scene[2])
    bg = np.stack([0.5 + 0.25 * np.sin(xx / fx + c + 3 * scene[3]) * np.cos(yy / fy - c)
                   + 0.1 * np.sin((xx + yy) / fd + 2 * c + 3 * scene[3]) for c in (0.0, 1.3, 2.6)], -1)
    bg = (np.clip(bg, 0, 1) * 0.7 + 0.1).astype(np.float32)
    sy, sx = np.mgrid[0:h, 0:w].astype(np.float32)
    shapes = []
    for k, kind in enumerate(("disc", "square", "triangle", "ring")):
        r = rng.uniform(0.12, 0.2) * min(h, w)
        shapes.append({"kind": kind, "r": r, "pos": rng.uniform([r, r], [w - r, h - r]),
                       "vel": rng.uniform(1.0, 2.5, 2) * rng.choice([-1, 1], 2) * min(h, w) / 64,
                       "col": rng.uniform(0.2, 1.0, 3), "col2": rng.uniform(0.0, 0.6, 3), "freq": rng.uniform(0.25, 0.6)})
    for i in range(num_frames):
        # camera: slow Lissajous pan over the world
        cx = (W - w) / 2 * (1 + math.sin(i / 40.0 + 3 * scene[4]))
        cy = (H - h) / 2 * (1 + math.sin(i / 57.0 + 1.0 + 3 * scene[5]))
        x0, y0 = int(round(cx)), int(round(cy))
        img = bg[y0:y0 + h, x0:x0 + w].copy()
        for s in shapes:
            px, py = s["pos"]
            dx, dy = sx - px, sy - py
            r = s["r"]
            if s["kind"] == "disc":
                mask = dx ** 2 + dy ** 2 <= r ** 2
            elif s["kind"] == "square":
                mask = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
            elif s["kind"] == "triangle":
                mask = (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
            else:
                d2 = dx ** 2 + dy ** 2
                mask = (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
            stripes = 0.5 + 0.5 * np.sin(s["freq"] * (dx + dy) + 0.3 * i)
            tex = stripes[..., None] * s["col"] + (1 - stripes[..., None]) * s["col2"]
            img[mask] = tex[mask]
            s["pos"] = s["pos"] + s["vel"]
            for a, lim in ((0, w), (1, h)):
                if s["pos"][a] < r or s["pos"][a] > lim - r:
                    s["vel"][a] *= -1
                    s["pos"][a] = min(max(s["pos"][a], r), lim - r)
        yield (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_demo_videos(out_dir: str | Path, h: int = 64, w: int = 64, num_frames: int = 100, seed: int = 0,
                     which=("square", "shapes")) -> list[Path]:
    """Write the demo videos (written at 2x the frame size so the loader's antialiased resize is exercised)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    H, W = 2 * h + (2 * h) % 2, 2 * w + (2 * w) % 2
    written = []
    if "square" in which:
        p = out_dir / SQUARE_VIDEO
        _write_video(p, square_frames(max(100, num_frames + 50), H, W), H, W)
        written.append(p)
    if "shapes" in which:
        p = out_dir / SHAPES_VIDEO
        _write_video(p, shapes_frames(max(480, num_frames + 50), H, W, seed), H, W)
        written.append(p)
    return written


def ensure_demo_videos(path, h: int, w: int, need_frames: int, log=print) -> None:
    """Generate the demo videos when the path is the guide's demo folder and holds no video (as the original)."""
    p = Path(path)
    folder = p if p.suffix.lower() not in VIDEO_EXTS else p.parent
    if folder.name != DEMO_DIR_NAME:  # the guide's folder by name (the original matched any path containing it)
        return
    if folder.is_dir() and any(q.suffix.lower() in VIDEO_EXTS for q in folder.iterdir()):
        _warn_small_demo_videos(folder, h, w, log)
        return
    if p.suffix.lower() in VIDEO_EXTS and p.is_file():
        return
    written = make_demo_videos(folder, h, w, need_frames)
    log(f"generated demo videos: {', '.join(str(x) for x in written)}")


def _warn_small_demo_videos(folder: Path, h: int, w: int, log) -> None:
    """The demo videos are written once, at twice the first run's frame size: say so when a later run asks for
    frames larger than they are (they would be upsampled, i.e. blurry)."""
    import av

    for name in (SQUARE_VIDEO, SHAPES_VIDEO):
        f = folder / name
        if not f.is_file():
            continue
        try:
            with av.open(str(f)) as c:
                vh, vw = c.streams.video[0].height, c.streams.video[0].width
        except Exception:  # noqa: BLE001 - unreadable files get their own error when decoded
            continue
        if vh < h or vw < w:
            log(f"warning: {f} is {vh}x{vw}, smaller than the requested {h}x{w} frames (it will be upsampled); "
                f"delete {folder} to regenerate the demo videos at this size")


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2))
