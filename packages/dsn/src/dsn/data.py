"""The dataset format: eccv16 h5 (SumMe/TVSum/original DSN layout) + splits.json.

A dataset root is a folder holding exactly one `*.h5` file and a `splits.json`. The h5 file
has one group per video (see docs/data-and-metrics.md for the full schema); real SumMe/TVSum
files load as they are, and every problem is a one-line `UserError` naming the video key and
the file.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from trainkit.errors import UserError

log = logging.getLogger(__name__)

SPLITS_FILE = "splits.json"
# Keys a split may hold: DSN's create_split.py and PGL-SUM write exactly these two.
SPLIT_KEYS = {"train_keys", "test_keys"}
DATASET_FILE = "dataset.h5"
REQUIRED_KEYS = ("features", "picks", "n_frames", "change_points", "n_frame_per_seg")
DEFAULT_DATASET_VERSION = 3  # bump when the synthetic generator's output changes


@dataclass
class Video:
    key: str
    features: np.ndarray  # float32 [n_steps, D]
    picks: np.ndarray  # int64 [n_steps], original frame index of each step
    n_frames: int
    change_points: np.ndarray  # int64 [n_seg, 2], inclusive frame ranges (KTS shots)
    n_frame_per_seg: np.ndarray  # int64 [n_seg]
    user_summary: np.ndarray | None  # [n_users, n_frames] binary, when annotated
    gtscore: np.ndarray | None  # float32 [n_steps], when annotated
    frames: np.ndarray | None  # uint8 [n_steps, H, W, 3] thumbnails, optional
    fps: float | None = None  # source video fps when known (for keyframe times)
    video_name: str | None = None  # source file name when known (SumMe stores it)
    # Raw per-annotator importance [n_users, n_frames] (TVSum's 1-5 scores) when known: tau/rho are
    # computed against these (the published protocol), never against the binary user_summary.
    user_scores: np.ndarray | None = None

    @property
    def n_steps(self) -> int:
        return int(self.features.shape[0])

    @property
    def annotated(self) -> bool:
        return self.user_summary is not None


# ----------------------------------------------------------------------------- locating files
def find_h5(dataset_root) -> Path:
    """The single *.h5 file of a dataset folder, or the path itself when it is an h5 file."""
    root = Path(dataset_root)
    if root.is_file():
        if root.suffix.lower() not in (".h5", ".hdf5"):
            raise UserError("not an HDF5 file", where=str(root), expected="a dataset folder or an eccv16 .h5 file")
        return root
    if not root.exists():
        raise UserError(
            "dataset not found",
            where=str(root),
            expected="a folder with one eccv16 .h5 file and splits.json (build one with `dsn make-dataset` or `dsn extract-features`)",
        )
    hits = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in (".h5", ".hdf5"))
    if not hits:
        raise UserError("no .h5 file in dataset folder", where=str(root), expected="exactly one eccv16 .h5 file")
    if len(hits) > 1:
        raise UserError(
            f"{len(hits)} .h5 files in dataset folder ({', '.join(p.name for p in hits)})",
            where=str(root),
            expected="exactly one eccv16 .h5 file (point --dataset_root at the file to choose)",
        )
    return hits[0]


def _splits_path(dataset_root) -> Path:
    root = Path(dataset_root)
    return (root.parent if root.is_file() else root) / SPLITS_FILE


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"cannot read HDF5 file ({e.__class__.__name__}: {e})", where=str(path), expected="a valid eccv16 .h5 file") from None


def video_keys(dataset_root) -> list[str]:
    """Video keys (top-level groups) of the dataset's h5 file, in file order."""
    path = find_h5(dataset_root)
    with _open_h5(path) as f:
        return [k for k in f.keys() if isinstance(f[k], h5py.Group)]


# ----------------------------------------------------------------------------- reading + validation
def _scalar(a: np.ndarray) -> float:
    return a.reshape(-1)[0].item() if a.size else float("nan")


def _read_video(group: h5py.Group, key: str, path: Path) -> Video:
    where = str(path)

    def bad(what: str, expected: str):
        return UserError(f"video '{key}': {what}", where=where, expected=expected)

    def numeric(name: str) -> np.ndarray:
        # Everything but video_name must be a numeric dataset: a group, strings or objects in its place
        # would otherwise fail deep inside numpy with a traceback.
        node = group[name]
        if not isinstance(node, h5py.Dataset):
            raise bad(f"'{name}' is a {type(node).__name__.lower()}, not a dataset", f"'{name}' stored as a numeric dataset")
        a = np.asarray(node[()])
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise bad(f"'{name}' has non-numeric dtype {a.dtype}", f"numeric '{name}'")
        return a

    for name in REQUIRED_KEYS:
        if name not in group:
            raise bad(f"missing dataset '{name}'", "every video group has " + ", ".join(REQUIRED_KEYS))
    features = numeric("features")
    if features.ndim != 2:
        raise bad(f"features have shape {features.shape}", "features of shape [n_steps, D]")
    n_steps, dim = features.shape
    if n_steps == 0 or dim == 0:
        raise bad(f"empty video (features shape {features.shape})", "at least one step with at least one feature")
    features = features.astype(np.float32)
    if not np.isfinite(features).all():
        bad_rows = np.where(~np.isfinite(features).all(axis=1))[0]
        raise bad(f"features contain NaN/inf at {len(bad_rows)} step(s), first step {int(bad_rows[0])}", "finite features")
    if "n_steps" in group:
        n_steps_val = _scalar(numeric("n_steps"))
        if not np.isfinite(n_steps_val) or int(n_steps_val) != n_steps:
            raise bad(f"n_steps is {n_steps_val} but features have {n_steps} rows", "n_steps == len(features)")
    n_frames_val = _scalar(numeric("n_frames"))
    if not np.isfinite(n_frames_val) or int(n_frames_val) <= 0:
        raise bad(f"n_frames is {n_frames_val}", "a positive frame count")
    n_frames = int(n_frames_val)
    picks = numeric("picks").reshape(-1)
    if picks.shape[0] != n_steps:
        raise bad(f"picks has {picks.shape[0]} entries but features have {n_steps} rows", "one pick per step")
    if not np.isfinite(picks).all():
        raise bad("picks contain NaN/inf", "integer frame indices")
    picks = picks.astype(np.int64)
    if picks.min() < 0 or picks.max() >= n_frames or (np.diff(picks) <= 0).any():
        raise bad("picks are not strictly increasing frame indices in [0, n_frames)", f"picks within [0, {n_frames})")
    cps = numeric("change_points")
    if cps.ndim != 2 or cps.shape[1] != 2 or cps.shape[0] == 0:
        raise bad(f"change_points have shape {cps.shape}", "change_points of shape [n_seg, 2]")
    if not np.isfinite(cps).all():
        raise bad("change_points contain NaN/inf", "integer frame ranges")
    cps = cps.astype(np.int64)
    if cps[-1, 1] == n_frames:
        # Some hand-built eccv16 files close the last shot at n_frames (exclusive style).
        cps[-1, 1] = n_frames - 1
    if cps.min() < 0 or cps.max() >= n_frames or (cps[:, 1] < cps[:, 0]).any():
        raise bad("change_points are not inclusive frame ranges inside the video", f"0 <= start <= end < n_frames={n_frames}")
    nfps = numeric("n_frame_per_seg").reshape(-1)
    if nfps.shape[0] != cps.shape[0]:
        raise bad(f"n_frame_per_seg has {nfps.shape[0]} entries but change_points has {cps.shape[0]} segments", "one length per segment")
    if not np.isfinite(nfps).all() or (nfps < 0).any():
        first = int(np.where(~np.isfinite(nfps) | (nfps < 0))[0][0])
        raise bad(f"n_frame_per_seg[{first}] is {nfps[first]}", "non-negative frame counts (the knapsack weights)")
    nfps = nfps.astype(np.int64)
    user_summary = None
    raw_summary_scores = None
    if "user_summary" in group:
        us = numeric("user_summary")
        if us.ndim == 1:
            us = us[None]
        if us.ndim != 2 or us.shape[0] == 0 or us.shape[1] != n_frames:
            raise bad(f"user_summary has shape {us.shape}", f"user_summary of shape [n_users, n_frames={n_frames}]")
        if not np.isfinite(us).all():
            raise bad("user_summary contains NaN/inf", "binary user summaries")
        if np.isin(us, (0, 1)).all():
            user_summary = us.astype(np.uint8)
        else:
            # Raw importance scores (e.g. TVSum's 1-5) stored under the eccv16 name: binarising them
            # would make every frame selected and every annotator constant (tau/rho null, F meaningless).
            log.warning("%s: '%s/user_summary' holds non-binary scores; used as raw per-annotator scores "
                        "(user_scores), keyshots are derived from them for F", path, key)
            raw_summary_scores = us.astype(np.float32)
    user_scores = None
    if "user_scores" in group:
        sc = numeric("user_scores")
        sc = sc[None] if sc.ndim == 1 else sc
        if sc.ndim != 2 or sc.shape[0] == 0 or sc.shape[1] != n_frames:
            raise bad(f"user_scores has shape {sc.shape}", f"user_scores of shape [n_users, n_frames={n_frames}]")
        if not np.isfinite(sc).all():
            raise bad("user_scores contains NaN/inf", "finite per-annotator scores")
        user_scores = sc.astype(np.float32)
    if user_scores is None:
        user_scores = raw_summary_scores
    gtscore = None
    if "gtscore" in group:
        gt = numeric("gtscore").reshape(-1)
        if gt.shape[0] != n_steps:
            raise bad(f"gtscore has {gt.shape[0]} entries but features have {n_steps} rows", "one score per step")
        if not np.isfinite(gt).all():
            raise bad("gtscore contains NaN/inf", "finite scores")
        gtscore = gt.astype(np.float32)
    frames = None
    if "frames" in group:
        fr = numeric("frames")
        if fr.ndim != 4 or fr.shape[0] != n_steps or fr.shape[3] != 3 or fr.dtype != np.uint8:
            raise bad(f"frames have shape {fr.shape} and dtype {fr.dtype}", f"uint8 thumbnails [n_steps={n_steps}, H, W, 3]")
        frames = fr
    fps = None
    if "fps" in group:
        fps = float(_scalar(numeric("fps")))
        if not (np.isfinite(fps) and fps > 0):
            raise bad(f"fps is {fps}", "a positive frame rate")
    name = None
    if "video_name" in group:
        node = group["video_name"]
        if not isinstance(node, h5py.Dataset):
            raise bad("'video_name' is a group, not a dataset", "a string dataset")
        raw = node[()]
        raw = raw.reshape(-1)[0] if isinstance(raw, np.ndarray) and raw.size else raw
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
    return Video(
        key=key,
        features=features,
        picks=picks,
        n_frames=n_frames,
        change_points=cps,
        n_frame_per_seg=nfps,
        user_summary=user_summary,
        gtscore=gtscore,
        frames=frames,
        fps=fps,
        video_name=name,
        user_scores=user_scores,
    )


def load_videos(dataset_root, keys=None) -> dict[str, Video]:
    """All videos (or `keys`) of the dataset, validated; ordered as in the file (or as `keys`)."""
    path = find_h5(dataset_root)
    with _open_h5(path) as f:
        available = [k for k in f.keys() if isinstance(f[k], h5py.Group)]
        if not available:
            raise UserError("HDF5 file holds no video groups", where=str(path), expected="one group per video (eccv16 layout)")
        wanted = available if keys is None else list(keys)
        out: dict[str, Video] = {}
        for key in wanted:
            if key not in f or not isinstance(f[key], h5py.Group):
                raise UserError(f"video '{key}' not in dataset", where=str(path), expected=f"one of {available[:5]}{'...' if len(available) > 5 else ''}")
            out[key] = _read_video(f[key], key, path)
    dims = {v.features.shape[1] for v in out.values()}
    if len(dims) > 1:
        raise UserError(f"videos have different feature sizes {sorted(dims)}", where=str(path), expected="one feature size D for all videos")
    return out


def _norm_key(key: str) -> str:
    # DSNet's split files name videos as "<path to h5>/video_1"; keep the group name.
    return key.rsplit("/", 1)[-1]


def make_splits(keys, *, num_splits: int = 5, test_fraction: float = 0.2, seed: int = 0) -> list[dict]:
    """Random train/test splits.

    With num_splits * test_fraction == 1 (the default 5 x 20 %) this is shuffled k-fold: every
    video is a test video in exactly one split, so the 5-split mean covers the whole dataset.
    (With fewer videos than splits: leave-one-out, n splits.) Otherwise each split is an
    independent random draw, as in DSN's create_split.py.
    """
    keys = list(keys)
    n = len(keys)
    if n < 2:
        raise UserError(f"{n} video(s) cannot be split", where="splits", expected="at least 2 videos")
    rng = np.random.default_rng(seed)
    n_test = min(n - 1, max(1, int(round(test_fraction * n))))
    splits = []
    if abs(num_splits * test_fraction - 1.0) < 1e-9:
        order = [keys[i] for i in rng.permutation(n)]
        # With fewer videos than folds, fall back to leave-one-out rather than empty test sets.
        folds = np.array_split(np.arange(n), min(num_splits, n))
        for fold in folds:
            test = set(order[i] for i in fold)
            splits.append({"train_keys": [k for k in keys if k not in test], "test_keys": [k for k in keys if k in test]})
    else:
        for _ in range(num_splits):
            test = set(keys[i] for i in rng.permutation(n)[:n_test])
            splits.append({"train_keys": [k for k in keys if k not in test], "test_keys": [k for k in keys if k in test]})
    return splits


def load_splits(dataset_root) -> list[dict]:
    """splits.json: a list of {"train_keys": [...], "test_keys": [...]}, checked against the h5 keys."""
    path = _splits_path(dataset_root)
    h5 = find_h5(dataset_root)
    keys = set(video_keys(dataset_root))
    expected = 'a JSON list of {"train_keys": [...], "test_keys": [...]} naming videos of the h5 file'
    if not path.is_file():
        raise UserError("splits file not found", where=str(path), expected=expected + f" (dataset {h5.name})")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"splits file is not valid JSON ({e})", where=str(path), expected=expected) from None
    if not isinstance(raw, list) or not raw:
        raise UserError("splits file does not hold a non-empty list", where=str(path), expected=expected)
    splits = []
    for i, s in enumerate(raw):
        if not isinstance(s, dict) or "train_keys" not in s or "test_keys" not in s:
            raise UserError(f"split {i} lacks train_keys/test_keys", where=str(path), expected=expected)
        # A misspelt key ("trian_keys") would otherwise be ignored silently.
        unknown = sorted(set(s) - SPLIT_KEYS)
        if unknown:
            raise UserError(f"split {i}: unknown key '{unknown[0]}'", where=str(path),
                            expected="only " + ", ".join(sorted(SPLIT_KEYS)))
        split = {}
        for part in ("train_keys", "test_keys"):
            ks = s[part]
            if not isinstance(ks, list) or not all(isinstance(k, str) for k in ks):
                raise UserError(f"split {i}: {part} is not a list of strings", where=str(path), expected=expected)
            ks = [_norm_key(k) for k in ks]
            missing = [k for k in ks if k not in keys]
            if missing:
                raise UserError(
                    f"split {i}: video '{missing[0]}' in {part} is not in {h5.name}",
                    where=str(path),
                    expected="keys that exist in the h5 file",
                )
            split[part] = ks
        if not split["train_keys"]:
            # An empty test list is allowed: training without held-out videos (e.g. one video of your own).
            raise UserError(f"split {i} has an empty train list", where=str(path), expected="non-empty train_keys")
        # Training on a test video contaminates every test metric of the split.
        overlap = [k for k in split["test_keys"] if k in set(split["train_keys"])]
        if overlap:
            raise UserError(f"split {i}: video '{overlap[0]}' is in both train_keys and test_keys"
                            + (f" ({len(overlap)} videos in both)" if len(overlap) > 1 else ""),
                            where=str(path), expected="disjoint train_keys and test_keys")
        splits.append(split)
    return splits


# ----------------------------------------------------------------------------- writing
def write_dataset(out_dir, videos: list[Video], splits: list[dict], *, attrs: dict | None = None,
                  filename: str = DATASET_FILE) -> Path:
    """Write videos as an eccv16 h5 file (+ `frames`, `fps`, `video_name` when known) and
    splits.json into out_dir; returns out_dir (the dataset root that `load_videos` takes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (filename + ".tmp")
    with h5py.File(tmp, "w", track_order=True) as f:
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        for v in videos:
            g = f.create_group(v.key)
            g["features"] = np.asarray(v.features, dtype=np.float32)
            g["picks"] = np.asarray(v.picks, dtype=np.int64)
            g["n_frames"] = np.int64(v.n_frames)
            g["n_steps"] = np.int64(v.n_steps)
            g["change_points"] = np.asarray(v.change_points, dtype=np.int64)
            g["n_frame_per_seg"] = np.asarray(v.n_frame_per_seg, dtype=np.int64)
            if v.user_summary is not None:
                g.create_dataset("user_summary", data=np.asarray(v.user_summary, dtype=np.float32), compression="gzip", compression_opts=4)
            if v.user_scores is not None:
                g.create_dataset("user_scores", data=np.asarray(v.user_scores, dtype=np.float32), compression="gzip", compression_opts=4)
            if v.gtscore is not None:
                g["gtscore"] = np.asarray(v.gtscore, dtype=np.float32)
            if v.frames is not None:
                g.create_dataset("frames", data=np.asarray(v.frames, dtype=np.uint8), compression="gzip", compression_opts=1,
                                 chunks=(1,) + tuple(np.asarray(v.frames).shape[1:]))
            if v.fps is not None:
                g["fps"] = np.float64(v.fps)
            if v.video_name is not None:
                g["video_name"] = v.video_name
    os.replace(tmp, out_dir / filename)
    (out_dir / SPLITS_FILE).write_text(json.dumps(splits, indent=1) + "\n")
    return out_dir


# ----------------------------------------------------------------------------- the default dataset
def cache_dir() -> Path:
    if os.environ.get("DSN_CACHE"):
        return Path(os.environ["DSN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dsn"


def default_dataset_root() -> Path:
    """($DSN_CACHE or $XDG_CACHE_HOME/dsn or ~/.cache/dsn)/default"""
    return cache_dir() / "default"


def _default_is_complete(root: Path) -> bool:
    h5 = root / DATASET_FILE
    if not h5.is_file() or not (root / SPLITS_FILE).is_file():
        return False
    try:
        with h5py.File(h5, "r") as f:
            return int(f.attrs.get("dsn_default_version", -1)) == DEFAULT_DATASET_VERSION
    except OSError:
        return False


def ensure_default_dataset() -> Path:
    """The default synthetic dataset's root, built there on first use (atomically, so an
    interrupted build or two concurrent first runs never leave a half-written dataset)."""
    from .synthetic import make_dataset

    root = default_dataset_root()
    if _default_is_complete(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the default synthetic dataset in %s (first use)", root)
    tmp = Path(tempfile.mkdtemp(prefix=".default-", dir=root.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        make_dataset(tmp)
        with h5py.File(tmp / DATASET_FILE, "a") as f:
            f.attrs["dsn_default_version"] = DEFAULT_DATASET_VERSION
        if root.exists():
            if _default_is_complete(root):  # another process won the race
                return root
            shutil.rmtree(root)
        try:
            os.replace(tmp, root)
        except OSError:
            if not _default_is_complete(root):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
