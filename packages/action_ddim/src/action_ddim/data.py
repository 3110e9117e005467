"""Action-sequence files: discovery, validation, memory-mapped loading and normalisation.

On disk (the guide's format): a directory of ``*_actions.npy`` files, each ``float32 [N*seq_len, 3]``
with rows ``[x, y, press]``, ``x, y in [0, 1]``, ``press in {0, 1}``; optionally a ``metadata.json``
beside them that records ``seq_len``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from trainkit.errors import UserError

from .augmentation import generate_click_dataset

PATTERN = "*_actions.npy"
# Validate big files in bounded slices so a dataset larger than RAM never gets loaded whole.
_CHUNK_ROWS = 1 << 20


def read_metadata_seq_len(directory: Path) -> int | None:
    meta = directory / "metadata.json"
    if not meta.is_file():
        return None
    try:
        value = json.loads(meta.read_text()).get("seq_len")
    except (json.JSONDecodeError, AttributeError) as e:
        raise UserError("unreadable metadata", str(meta), f"a JSON object with an integer seq_len ({e})")
    if not isinstance(value, int) or value < 1:
        raise UserError("bad seq_len in metadata", str(meta), "a positive integer")
    return value


def check_not_split_root(directory: Path, flag: str) -> None:
    """`import-log --val_users/--val_sessions` writes train/ and val/ under one folder: reading the folder
    itself would mix the held-out people into training, so it is refused."""
    meta = directory / "metadata.json"
    try:
        splits = json.loads(meta.read_text()).get("splits") if meta.is_file() else None
    except (OSError, ValueError, AttributeError):
        return
    if splits:
        raise UserError("this folder holds a split import (train/ and val/)", f"{flag} {directory}",
                        f"one split: {directory / 'train'} or {directory / 'val'}")


def validate_actions(arr: np.ndarray, path: Path, seq_len: int) -> None:
    """Raise a UserError naming ``path`` if ``arr`` is not a valid ``[N*seq_len, 3]`` action array."""
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise UserError(f"wrong shape {tuple(arr.shape)}", str(path), "a 2-D array [N*seq_len, 3] of [x, y, press] rows")
    if arr.shape[0] == 0:
        raise UserError("no rows", str(path), f"at least one sequence of {seq_len} rows")
    if arr.shape[0] % seq_len:
        raise UserError(f"{arr.shape[0]} rows is not a multiple of seq_len={seq_len}", str(path),
                        "N*seq_len rows (set --seq_len or the metadata.json seq_len)")
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"dtype {arr.dtype}", str(path), "a numeric array (float32)")
    for start in range(0, arr.shape[0], _CHUNK_ROWS):
        chunk = np.asarray(arr[start:start + _CHUNK_ROWS], dtype=np.float64)
        bad = ~np.isfinite(chunk)
        if bad.any():
            row = start + int(np.argwhere(bad)[0][0])
            raise UserError(f"non-finite value (NaN/Inf) at row {row}", str(path), "finite numbers")
        xy = chunk[:, :2]
        out = (xy < 0) | (xy > 1)
        if out.any():
            row, col = np.argwhere(out)[0]
            raise UserError(f"{'xy'[col]}={xy[row, col]:.6g} at row {start + row} is outside [0, 1]", str(path),
                            "x and y in [0, 1]")
        p = chunk[:, 2]
        badp = (p != 0) & (p != 1)
        if badp.any():
            row = int(np.argwhere(badp)[0][0])
            raise UserError(f"press={p[row]:.6g} at row {start + row}", str(path), "press in {0, 1}")


def find_action_files(directory: str | Path, flag: str = "--data_dir") -> list[Path]:
    d = Path(directory)
    if not d.exists():
        raise UserError("directory does not exist", f"{flag} {d}", f"a directory of {PATTERN} files")
    if not d.is_dir():
        raise UserError("not a directory", f"{flag} {d}", f"a directory of {PATTERN} files")
    files = sorted(d.rglob(PATTERN))
    if not files:
        raise UserError(f"no {PATTERN} files", f"{flag} {d}",
                        "files written by `action-ddim generate-data` (float32 [N*seq_len, 3])")
    return files


class ActionDataset(Dataset):
    """Every ``*_actions.npy`` under a directory, memory-mapped, as ``[seq_len, 3]`` sequences.

    Items are normalised tensors (see ``Normalizer``); ``raw(i)`` gives data units.
    """

    def __init__(self, directory: str | Path, seq_len: int | None = None, *, flag: str = "--data_dir",
                 normalizer: "Normalizer | None" = None, validate: bool = True):
        self.directory = Path(directory)
        check_not_split_root(self.directory, flag)
        self.files = find_action_files(self.directory, flag)
        meta_len = read_metadata_seq_len(self.directory)
        self.seq_len = meta_len if meta_len is not None else seq_len
        if self.seq_len is None:
            raise UserError("unknown sequence length", f"{flag} {self.directory}",
                            "a metadata.json with seq_len beside the files, or --seq_len")
        self.normalizer = normalizer or Normalizer()
        self.arrays: list[np.ndarray] = []
        counts = []
        for f in self.files:
            try:
                arr = np.load(f, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as e:
                raise UserError("unreadable .npy file", str(f), f"a float32 [N*seq_len, 3] array ({e})")
            if validate:
                validate_actions(arr, f, self.seq_len)
            self.arrays.append(arr)
            counts.append(arr.shape[0] // self.seq_len)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def sequence_groups(self) -> tuple[np.ndarray, str]:
        """Who recorded each sequence, for floors held out the way evaluation data is: ``(labels, kind)``.

        ``kind`` is ``"user"`` when metadata.json (import-log) names two or more users, else ``"session"``
        (one label per file: import-log writes one file per session; the generator, one per split).
        """
        by_file: dict[str, str] = {}
        meta = self.directory / "metadata.json"
        try:
            entries = json.loads(meta.read_text()).get("files") if meta.is_file() else None
            for e in entries or []:
                if isinstance(e, dict) and e.get("output") and e.get("user"):
                    by_file[Path(e["output"]).name] = str(e["user"])
        except (OSError, ValueError, AttributeError):
            by_file = {}
        users = [by_file.get(f.name) for f in self.files]
        kind = "user" if None not in users and len(set(users)) >= 2 else "session"
        names = users if kind == "user" else [str(f.relative_to(self.directory)) for f in self.files]
        counts = np.diff(self.offsets).astype(int)
        return np.repeat(np.array(names, dtype=object), counts), kind

    def raw(self, index: int) -> np.ndarray:
        f = int(np.searchsorted(self.offsets, index, side="right") - 1)
        j = index - int(self.offsets[f])
        L = self.seq_len
        return np.array(self.arrays[f][j * L:(j + 1) * L], dtype=np.float32)

    def raw_batch(self, indices) -> np.ndarray:
        return np.stack([self.raw(int(i)) for i in indices]) if len(indices) else np.zeros((0, self.seq_len, 3), np.float32)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.normalizer.encode(torch.from_numpy(self.raw(index)))


@dataclass
class Normalizer:
    """Data units -> model space. x, y: [0, 1] -> [-1, 1]; press: {0, 1} -> {-1, +1} (analog bits).

    ``increment_scale`` > 0 (``data.increment_scale``) switches x, y to velocities: row 0 keeps the
    start position in [-1, 1] and every later row holds ``increment_scale * (p_i - p_{i-1})``; decoding
    sums them back. Why: the generator's pointer rests (idles, presses) are runs of equal positions plus
    0.0015 sensor jitter. In position space that detail is 0.3% of the [-1, 1] range, below the schedule's
    lowest noise level, and a model must make 64 positions agree to 0.003 to draw a still pointer; in
    velocity space a rest is a run of zeros and the jitter is 10x larger than in positions.

    Decoding thresholds press at 0 in model space; ``decode`` clips positions to [0, 1]. Saved in
    checkpoints as ``to_dict()`` (checkpoints without ``increment_scale`` are positions).
    """

    low: tuple[float, float, float] = (0.0, 0.0, 0.0)
    high: tuple[float, float, float] = (1.0, 1.0, 1.0)
    binary_channels: tuple[int, ...] = (2,)
    increment_scale: float = 0.0
    position_channels: tuple[int, ...] = (0, 1)

    def _scale(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = torch.tensor(self.low, dtype=like.dtype, device=like.device)
        high = torch.tensor(self.high, dtype=like.dtype, device=like.device)
        return low, high

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self._scale(x)
        z = (x - low) / (high - low) * 2 - 1
        if self.increment_scale:
            c = list(self.position_channels)
            # In data units (x - low) / (high - low), so the scale means "model units per screen".
            u = (x[..., c] - low[c]) / (high[c] - low[c])
            z[..., 1:, c] = (u[..., 1:, :] - u[..., :-1, :]) * self.increment_scale
        return z

    def decode_continuous(self, z: torch.Tensor) -> torch.Tensor:
        """Back to data units without thresholding (press may be any real; positions are not clipped)."""
        low, high = self._scale(z)
        out = (z + 1) / 2 * (high - low) + low
        if self.increment_scale:
            c = list(self.position_channels)
            start = (z[..., :1, c] + 1) / 2
            u = torch.cat([start, start + torch.cumsum(z[..., 1:, c] / self.increment_scale, dim=-2)], dim=-2)
            out[..., c] = u * (high[c] - low[c]) + low[c]
        return out

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Back to the dataset format: press thresholded at 0 (model space) to {0, 1}; positions in range."""
        out = self.decode_continuous(z)
        if self.increment_scale:  # a summed velocity can leave the screen; the pointer stops at its edge
            for c in self.position_channels:
                out[..., c] = out[..., c].clamp(self.low[c], self.high[c])
        for c in self.binary_channels:
            out[..., c] = (z[..., c] > 0).to(out.dtype) * (self.high[c] - self.low[c]) + self.low[c]
        return out

    def to_dict(self) -> dict:
        d = {"low": list(self.low), "high": list(self.high), "binary_channels": list(self.binary_channels)}
        if self.increment_scale:  # positions keep the format of checkpoints written before the option
            d.update(increment_scale=float(self.increment_scale), position_channels=list(self.position_channels))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(low=tuple(d["low"]), high=tuple(d["high"]), binary_channels=tuple(d["binary_channels"]),
                   increment_scale=float(d.get("increment_scale", 0.0)),
                   position_channels=tuple(d.get("position_channels", (0, 1))))


def default_cache_dir() -> Path:
    if os.environ.get("ACTION_DDIM_CACHE"):
        return Path(os.environ["ACTION_DDIM_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "action_ddim"


def ensure_default_dataset(num_train: int, num_val: int, seq_len: int, seed: int,
                           log=print) -> tuple[Path, Path]:
    """Generate (once) the default synthetic dataset in the cache and return its train/val dirs."""
    # "_v2": the val split's stream changed (augmentation.SPLIT_STREAMS); older caches are not reused.
    root = default_cache_dir() / f"click_v2_n{num_train}_v{num_val}_L{seq_len}_s{seed}"
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        log(f"generating the default dataset into {root} (first use)")
        # Build beside the target and rename, so an interrupted or concurrent first run never
        # leaves a half-written dataset that later runs would trust.
        tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
        generate_click_dataset(tmp, num_train=num_train, num_val=num_val, seq_len=seq_len, seed=seed)
        try:
            tmp.rename(root)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (root / "train").is_dir():
                raise
    return root / "train", root / "val"
