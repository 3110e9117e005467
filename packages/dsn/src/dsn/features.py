"""Weights-free per-frame features, and real videos -> the eccv16 dataset format.

`frame_features` is the single extractor used for everything: the synthetic default dataset
renders its frames and calls it, `extract_features` decodes real videos and calls it, and
`dsn summarize --video` goes through `video_from_file`, so training and inference features
always come from the same code.

Feature layout (D = 484), each block L2-normalised and then the whole vector L2-normalised,
so the cosine similarity of two frames is the mean of the five per-block cosines:

| block | dims | what |
|---|---|---|
| HSV histogram | 24 | hue 16 bins weighted by saturation (greys have no meaningful hue), saturation 4, value 4 |
| Lab histogram | 24 | L, a, b, 8 bins each |
| spatial grid  | 48 | mean Lab colour of each cell of a 4x4 grid (layout / composition) |
| HOG           | 324 | scikit-image HOG on the 64x64 grey image, 16 px cells, 2x2 blocks, 9 orientations |
| tiny image    | 64 | 8x8 grey thumbnail, mean removed |
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from skimage.color import rgb2lab
from skimage.feature import hog
from skimage.transform import resize

from trainkit.errors import UserError

log = logging.getLogger(__name__)

FEATURE_SIZE = 64  # frames are brought to 64x64 before feature extraction
GRID = 4
TINY = 8
BLOCK_DIMS = {"hsv_hist": 24, "lab_hist": 24, "grid_lab": GRID * GRID * 3, "hog": 324, "tiny": TINY * TINY}
FEATURE_DIM = sum(BLOCK_DIMS.values())
EXTRACTOR_NAME = "dsn.features/v1"


# ----------------------------------------------------------------------------- frame features
def _l2(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    # Below eps the block is rounding noise (e.g. the mean-removed tiny image of a flat frame),
    # and normalising it would turn the noise into a unit vector.
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(n > eps, x / np.maximum(n, eps), 0.0)


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    # Vectorised over a whole batch: skimage's rgb2hsv is ~10x slower on [N,H,W,3].
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = rgb.max(-1)
    mn = rgb.min(-1)
    delta = mx - mn
    inv = 1.0 / np.where(delta > 0, delta, 1.0)
    h = np.where(mx == r, ((g - b) * inv) % 6.0, np.where(mx == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
    h *= (delta > 0) / 6.0
    s = delta / np.where(mx > 0, mx, 1.0)
    return np.stack([h, s, mx], axis=-1)


def _hist(values: np.ndarray, bins: int, lo: float, hi: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Per-frame histogram of values [N, P] -> [N, bins], vectorised with one bincount."""
    n = values.shape[0]
    idx = np.clip(((values - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)
    idx = idx + (np.arange(n)[:, None] * bins)
    w = None if weights is None else weights.ravel()
    return np.bincount(idx.ravel(), weights=w, minlength=n * bins).reshape(n, bins)


def _unique_frames(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first occurrence of each distinct frame, and the inverse map.

    Animation held on twos/threes repeats frames exactly; computing each drawing once roughly
    halves extraction time on such material without changing any value.
    """
    seen: dict[bytes, int] = {}
    first: list[int] = []
    inverse = np.empty(len(frames), dtype=np.int64)
    for i, f in enumerate(frames):
        h = hashlib.blake2b(f.tobytes(), digest_size=16).digest()
        j = seen.get(h)
        if j is None:
            j = seen[h] = len(first)
            first.append(i)
        inverse[i] = j
    return np.asarray(first, dtype=np.int64), inverse


def _features_unique(frames: np.ndarray) -> np.ndarray:
    n = frames.shape[0]
    rgb = frames.astype(np.float32) / np.float32(255.0)
    if rgb.shape[1:3] != (FEATURE_SIZE, FEATURE_SIZE):
        rgb = np.stack([resize(f, (FEATURE_SIZE, FEATURE_SIZE, 3), anti_aliasing=True) for f in rgb])
    hsv = _rgb_to_hsv(rgb).reshape(n, -1, 3)
    lab = rgb2lab(rgb)
    labf = lab.reshape(n, -1, 3)
    blocks = []
    blocks.append(
        np.concatenate(
            [
                _hist(hsv[..., 0], 16, 0.0, 1.0, weights=hsv[..., 1]),
                _hist(hsv[..., 1], 4, 0.0, 1.0),
                _hist(hsv[..., 2], 4, 0.0, 1.0),
            ],
            axis=1,
        )
    )
    blocks.append(
        np.concatenate(
            [
                _hist(labf[..., 0], 8, 0.0, 100.0),
                _hist(labf[..., 1], 8, -80.0, 80.0),
                _hist(labf[..., 2], 8, -80.0, 80.0),
            ],
            axis=1,
        )
    )
    cell = FEATURE_SIZE // GRID
    grid = lab.reshape(n, GRID, cell, GRID, cell, 3).mean(axis=(2, 4))
    # Bring L (0..100) and a/b (~-128..127) to comparable ranges; centre L so a mid-grey cell is ~0.
    grid = (grid - np.array([50.0, 0.0, 0.0])) / np.array([50.0, 64.0, 64.0])
    blocks.append(grid.reshape(n, -1))
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    blocks.append(
        np.stack(
            [
                hog(g, orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2), block_norm="L2-Hys", feature_vector=True)
                for g in grey
            ]
        )
    )
    t = FEATURE_SIZE // TINY
    tiny = grey.reshape(n, TINY, t, TINY, t).mean(axis=(2, 4)).reshape(n, -1)
    blocks.append(tiny - tiny.mean(axis=1, keepdims=True))
    feats = np.concatenate([_l2(b) for b in blocks], axis=1)
    return _l2(feats).astype(np.float32)


def frame_features(frames: np.ndarray) -> np.ndarray:
    """uint8 frames [N, H, W, 3] -> float32 features [N, FEATURE_DIM], each row unit length
    (all-zero only for a frame with no content in any block, which cannot happen for real images)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frame_features expects uint8 [N, H, W, 3], got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frame_features expects uint8 frames, got {frames.dtype}")
    if len(frames) == 0:
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)
    first, inverse = _unique_frames(frames)
    return _features_unique(frames[first])[inverse]


# ----------------------------------------------------------------------------- PCA
def fit_pca(features: np.ndarray, dim: int) -> dict[str, np.ndarray]:
    """PCA fitted on stacked features of all videos; returns {'mean', 'components' [dim, D]}."""
    x = np.asarray(features, dtype=np.float64)
    if dim < 1 or dim > min(x.shape):
        raise UserError(
            f"cannot reduce {x.shape[1]}-d features of {x.shape[0]} frames to {dim} dims",
            where="--pca_dim",
            expected=f"an integer in [1, {min(x.shape)}]",
        )
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return {"mean": mean.astype(np.float32), "components": vt[:dim].astype(np.float32)}


def apply_pca(features: np.ndarray, pca: dict[str, np.ndarray]) -> np.ndarray:
    """Project and re-normalise, since the reward and metrics use cosine distances."""
    z = (np.asarray(features, dtype=np.float32) - pca["mean"]) @ pca["components"].T
    return _l2(z).astype(np.float32)


# ----------------------------------------------------------------------------- optional CNN backbone
_BACKBONES = {
    # name -> (torchvision constructor name, weights file prefix in the hub cache)
    "resnet18": ("resnet18", "resnet18-"),
    "resnet34": ("resnet34", "resnet34-"),
    "resnet50": ("resnet50", "resnet50-"),
    "googlenet": ("googlenet", "googlenet-"),
}


def find_cached_backbone_weights(name: str) -> Path | None:
    """The weights file for `name` in the local torch hub cache, or None. Never downloads."""
    import torch

    if name not in _BACKBONES:
        return None
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    hits = sorted(ckpt_dir.glob(_BACKBONES[name][1] + "*.pth"))
    return hits[0] if hits else None


def backbone_features(frames: np.ndarray, name: str, *, batch_size: int = 32) -> np.ndarray:
    """Pooled CNN features from a torchvision model whose weights are ALREADY in the hub cache.

    Raises UserError (never downloads) when the name is unknown, torchvision is missing, or the
    weights are not cached.
    """
    import torch

    if name not in _BACKBONES:
        raise UserError(f"unknown backbone '{name}'", where="--backbone", expected=f"one of {sorted(_BACKBONES)}")
    try:
        import torchvision  # noqa: F401
        from torchvision import models
    except ImportError:
        raise UserError(
            f"backbone '{name}' needs torchvision, which is not installed",
            where="--backbone",
            expected="omit --backbone to use the weights-free features, or install torchvision",
        ) from None
    weights = find_cached_backbone_weights(name)
    if weights is None:
        raise UserError(
            f"no cached weights for backbone '{name}' (downloads are never attempted)",
            where=str(Path(torch.hub.get_dir()) / "checkpoints"),
            expected=f"a file {_BACKBONES[name][1]}*.pth there, or omit --backbone",
        )
    ctor = getattr(models, _BACKBONES[name][0])
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    model = ctor(weights=None, **kwargs)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("aux")}
    model.load_state_dict(state)
    model.fc = torch.nn.Identity()
    model.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for i in range(0, len(frames), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(frames[i : i + batch_size])).permute(0, 3, 1, 2).float() / 255.0
            x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
            out.append(model((x - mean) / std).numpy())
    return _l2(np.concatenate(out, axis=0)).astype(np.float32)


# ----------------------------------------------------------------------------- video decoding
def read_video(path, *, sample_fps: float = 2.0, thumb_size: int = 64) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Decode a video with PyAV and sample it at ~sample_fps.

    Returns (thumbnails uint8 [n_steps, thumb_size, thumb_size, 3], picks int64 [n_steps],
    n_frames, fps). Every `round(fps / sample_fps)`-th frame is kept (15 at 30 fps, as in the
    eccv16 files); thumbnails are squashed to a square so all steps share one shape.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise UserError("video not found", where=str(path), expected="an existing video file")
    if sample_fps <= 0:
        raise UserError(f"sample_fps must be positive, got {sample_fps}", where="--sample_fps", expected="a number > 0")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:  # type: ignore[attr-defined]
        raise UserError(f"cannot open video: {e}", where=str(path), expected="a video file FFmpeg can decode") from None
    with container:
        if not container.streams.video:
            raise UserError("file has no video stream", where=str(path), expected="a video file")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 25.0
        stride = max(1, int(round(fps / sample_fps)))
        thumbs, picks = [], []
        n_frames = 0
        try:
            for frame in container.decode(stream):
                if n_frames % stride == 0:
                    thumbs.append(frame.reformat(width=thumb_size, height=thumb_size, format="rgb24").to_ndarray())
                    picks.append(n_frames)
                n_frames += 1
        except av.error.FFmpegError as e:  # type: ignore[attr-defined]
            if n_frames == 0:
                raise UserError(f"cannot decode video: {e}", where=str(path), expected="a video file FFmpeg can decode") from None
            log.warning("%s: decoding stopped after %d frames (%s); using what was decoded", path, n_frames, e)
    if n_frames == 0:
        raise UserError("video has no frames", where=str(path), expected="a non-empty video")
    return np.stack(thumbs).astype(np.uint8), np.asarray(picks, dtype=np.int64), n_frames, fps


def segments_from_steps(step_bounds: np.ndarray, picks: np.ndarray, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """KTS change points in step units -> inclusive frame ranges [n_seg, 2] and their lengths.

    `step_bounds` holds the first step of every segment after the first. A segment starts at the
    frame of its first step and ends right before the next segment's first frame.
    """
    starts = np.concatenate([[0], picks[np.asarray(step_bounds, dtype=np.int64)]]).astype(np.int64)
    ends = np.concatenate([starts[1:] - 1, [n_frames - 1]]).astype(np.int64)
    cps = np.stack([starts, ends], axis=1)
    return cps, (ends - starts + 1).astype(np.int64)


def video_from_file(path, *, key: str | None = None, sample_fps: float = 2.0, thumb_size: int = 64,
                    backbone: str | None = None, pca: dict | None = None):
    """One real video -> an unannotated `dsn.data.Video` (features, picks, KTS shots, thumbnails)."""
    from .data import Video
    from .kts import kts_segments

    path = Path(path)
    thumbs, picks, n_frames, fps = read_video(path, sample_fps=sample_fps, thumb_size=thumb_size)
    feats = backbone_features(thumbs, backbone) if backbone else frame_features(thumbs)
    if pca is not None:
        feats = apply_pca(feats, pca)
    cps, nfps = segments_from_steps(kts_segments(feats), picks, n_frames)
    return Video(
        key=key or path.stem,
        features=feats,
        picks=picks,
        n_frames=n_frames,
        change_points=cps,
        n_frame_per_seg=nfps,
        user_summary=None,
        gtscore=None,
        frames=thumbs,
        fps=fps,
    )


def extract_features(video_paths: list, out_dir, *, sample_fps: float = 2.0, thumb_size: int = 64,
                     backbone: str | None = None, pca_dim: int | None = None) -> Path:
    """Real videos -> an eccv16-format dataset folder (h5 + splits.json) at out_dir; returns out_dir.

    Keys are `video_1..video_N` in the given order (the source file name is stored as
    `video_name`, as in SumMe). With `pca_dim`, PCA is fitted on all videos' features together
    and saved to `out_dir/pca.npz` so new videos can be projected the same way.
    """
    from .data import make_splits, write_dataset

    paths = [Path(p) for p in video_paths]
    if not paths:
        raise UserError("no videos given", where="--videos", expected="one or more video files")
    videos = []
    for i, p in enumerate(paths, start=1):
        log.info("extracting %s", p)
        v = video_from_file(p, key=f"video_{i}", sample_fps=sample_fps, thumb_size=thumb_size, backbone=backbone)
        v.video_name = p.name
        videos.append(v)
    out_dir = Path(out_dir)
    if pca_dim:
        pca = fit_pca(np.concatenate([v.features for v in videos]), pca_dim)
        for v in videos:
            v.features = apply_pca(v.features, pca)
        out_dir.mkdir(parents=True, exist_ok=True)
        np.savez(out_dir / "pca.npz", **pca)
    extractor = f"torchvision/{backbone}" if backbone else EXTRACTOR_NAME
    keys = [v.key for v in videos]
    # One video: train on it with no held-out test video (a test video must never be trained on).
    splits = make_splits(keys) if len(keys) >= 2 else [{"train_keys": keys, "test_keys": []}]
    return write_dataset(out_dir, videos, splits, attrs={"feature_extractor": extractor, "pca_dim": int(pca_dim or 0),
                                                         "sample_fps": float(sample_fps)})
