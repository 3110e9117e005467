"""The processed dataset format that every source is written into, and its windowed loader.

A processed dataset is one folder:

- ``frames.npy``      uint8 ``[N, H, W, 3]``, pre-resized, opened memory-mapped (no image decoding per step)
- ``timestamps.npy``  int64 ``[N]``, real capture time in microseconds
- ``actions.npy``     float32 ``[N, 4]``, ``actions[t]`` = the control applied between frame t and t+1
- ``scene_ids.npy``   int32 ``[N]``, the scene each frame belongs to (scenes are contiguous runs)
- ``index.json``      format version, source, frame size, action names/units/normalisation, scenes
                      (name, start, length, split, duration) and the train/val scene lists.

Windows (``sequence_length`` frames, every ``frame_skip``-th frame) are cut by frame index inside one scene
and never cross a scene boundary.
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
from trainkit.runsafety import check_replaceable, swap_in, write_output_marker

FORMAT_VERSION = 1
FILES = ("frames.npy", "timestamps.npy", "actions.npy", "scene_ids.npy", "index.json")


class LazyFrames:
    """A scene's frames as image paths, decoded one at a time while ``write_processed`` fills the memmap.

    The real readers (nuScenes, CARLA) hand these over instead of a stacked array, so preparing
    v1.0-trainval (~200k CAM_FRONT frames, ~23 GB at 256x144) never holds more than one frame in RAM.
    """

    def __init__(self, paths: list, size: tuple[int, int], load):
        self.paths, self.size, self._load = list(paths), tuple(size), load  # size = (W, H)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.size[1], self.size[0], 3)

    def __iter__(self):
        for p in self.paths:
            yield self._load(p, self.size)


@dataclass
class Scene:
    name: str
    frames: np.ndarray | LazyFrames  # uint8 [T, H, W, 3] at the target size (or paths decoded on write)
    timestamps_us: np.ndarray   # int64 [T]
    actions: np.ndarray         # float32 [T, 4]
    split: str                  # "train" | "val"
    meta: dict | None = None    # per-scene extras for index.json (e.g. where actions came from)


def _check_output_target(out: Path, overwrite: bool) -> bool:
    """Refuse a file, or a non-empty folder without ``overwrite``; True when a non-empty folder is to be replaced."""
    if out.exists() and not out.is_dir():
        raise UserError("output path is a file", str(out), "a directory (new or empty)")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError("output directory is not empty", str(out), "a new or empty directory, or --overwrite")
        return True
    return False


def prepare_output_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse a non-empty target unless ``overwrite``; then replace it whole (no stale files survive)."""
    out = Path(out)
    if _check_output_target(out, overwrite):
        # only a folder this tool wrote (its marker), never ., ~, / or an ancestor of the cwd (audit H1)
        check_replaceable(out, flag="--overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_output_marker(out, "worldmodel")
    return out


def stage_output_dir(out: str | Path, overwrite: bool) -> Path:
    """:func:`prepare_output_dir`'s checks, but nothing is deleted yet: returns an empty temporary folder beside
    ``out`` (with the marker) to write into; :func:`finish_output_dir` swaps it in (audit A9: a crash or a
    SIGTERM mid-write used to lose the previous output)."""
    out = Path(out)
    _check_output_target(out, overwrite)
    check_replaceable(out, flag="--overwrite")  # also refuses ., ~, / and cwd ancestors when they are empty
    tmp = out.resolve().with_name(f".{out.resolve().name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_output_marker(tmp, "worldmodel")
    return tmp


def finish_output_dir(tmp: Path, out: str | Path, written: list) -> list[Path]:
    """Swap the finished ``tmp`` in for ``out`` (the old folder is deleted only afterwards); the paths moved."""
    out = Path(out)
    swap_in(tmp, out)
    return [out / Path(p).relative_to(tmp) for p in written]


def write_processed(out: str | Path, scenes: list[Scene], *, source: str, action_names: list[str],
                    action_units: list[str], steer_channel: int, extra: dict | None = None) -> Path:
    """Write scenes in the processed format. ``out`` must exist and be empty (see prepare_output_dir)."""
    out = Path(out)
    if not scenes:
        raise UserError("no scenes to write", str(out), "at least one scene with frames")
    h, w = scenes[0].frames.shape[1:3]
    n = sum(len(s.frames) for s in scenes)
    frames = np.lib.format.open_memmap(out / "frames.npy", mode="w+", dtype=np.uint8, shape=(n, h, w, 3))
    stamps = np.empty(n, np.int64)
    actions = np.empty((n, 4), np.float32)
    ids = np.empty(n, np.int32)
    entries, start = [], 0
    for i, s in enumerate(scenes):
        t = len(s.frames)
        if s.frames.shape[1:] != (h, w, 3):
            raise UserError(f"scene {s.name} has frames of shape {s.frames.shape[1:]}", str(out), f"{(h, w, 3)}")
        if not np.isfinite(s.actions).all():
            raise UserError(f"NaN/Inf in the actions of scene {s.name}", source, "finite actions")
        if isinstance(s.frames, LazyFrames):
            for j, frame in enumerate(s.frames):  # one decoded frame in memory at a time
                if frame.shape != (h, w, 3):
                    raise UserError(f"frame {s.frames.paths[j]} decoded to shape {frame.shape}", str(out), f"{(h, w, 3)}")
                frames[start + j] = frame
        else:
            frames[start:start + t] = s.frames
        stamps[start:start + t] = s.timestamps_us
        actions[start:start + t] = s.actions
        ids[start:start + t] = i
        duration = (int(s.timestamps_us[-1]) - int(s.timestamps_us[0])) / 1e6
        entries.append({"id": i, "name": s.name, "start": start, "length": t, "split": s.split,
                        "duration_s": duration, **(s.meta or {})})
        start += t
    frames.flush()
    del frames
    np.save(out / "timestamps.npy", stamps)
    np.save(out / "actions.npy", actions)
    np.save(out / "scene_ids.npy", ids)
    train_mask = np.concatenate([np.full(len(s.frames), s.split == "train") for s in scenes])
    ref = actions[train_mask] if train_mask.any() else actions
    mean, std = ref.mean(0), ref.std(0)
    std = np.where(std < 1e-6, 1.0, std)
    index = {
        "format_version": FORMAT_VERSION, "source": source, "num_frames": int(n), "image_size": [int(w), int(h)],
        "action_names": action_names, "action_units": action_units, "steer_channel": steer_channel,
        # The model sees (action - mean) / std; statistics from the training scenes only.
        "action_normalisation": {"mean": mean.tolist(), "std": std.tolist()},
        "scenes": entries,
        "splits": {sp: [e["name"] for e in entries if e["split"] == sp] for sp in ("train", "val")},
        **(extra or {}),
    }
    (out / "index.json").write_text(json.dumps(index, indent=1))
    return out


class ProcessedDataset:
    """The arrays of one processed folder (frames memory-mapped) plus its index."""

    def __init__(self, root: str | Path, flag: str = "--data-root"):
        root = Path(root)
        if not root.is_dir():
            raise UserError("processed dataset not found", f"{flag} {root}",
                            "a folder written by `worldmodel prepare-dataset`")
        missing = [f for f in FILES if not (root / f).is_file()]
        if missing:
            raise UserError(f"missing {', '.join(missing)}", f"{flag} {root}",
                            "a folder written by `worldmodel prepare-dataset` (frames.npy, timestamps.npy, "
                            "actions.npy, scene_ids.npy, index.json)")
        try:
            self.index = json.loads((root / "index.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UserError("index.json is not valid JSON", str(root / "index.json"), str(err)) from None
        if self.index.get("format_version") != FORMAT_VERSION:
            raise UserError(f"unsupported format_version {self.index.get('format_version')!r}",
                            str(root / "index.json"), f"{FORMAT_VERSION}")
        where = str(root / "index.json")
        missing_keys = [k for k in ("num_frames", "image_size", "action_names", "action_units",
                                    "action_normalisation", "scenes") if k not in self.index]
        if missing_keys:
            raise UserError(f"index.json lacks {', '.join(missing_keys)}", where,
                            "an index written by `worldmodel prepare-dataset`")
        self.root = root
        try:
            self.frames = np.load(root / "frames.npy", mmap_mode="r")
            self.actions = np.load(root / "actions.npy").astype(np.float32)
            self.timestamps = np.load(root / "timestamps.npy")
        except (OSError, ValueError) as err:
            raise UserError("unreadable array", str(root), str(err)) from None
        n = self.index["num_frames"]
        if self.frames.shape[0] != n or self.actions.shape != (n, 4) or self.frames.dtype != np.uint8:
            raise UserError("arrays do not match index.json", str(root),
                            f"frames uint8 [{n}, H, W, 3] and actions [{n}, 4]")
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3:
            raise UserError(f"frames.npy has shape {self.frames.shape}", str(root / "frames.npy"),
                            "uint8 [N, H, W, 3] (RGB)")
        if min(self.frames.shape[1:3]) < 11:
            raise UserError(f"frames are {self.frames.shape[2]}x{self.frames.shape[1]}", str(root / "frames.npy"),
                            "frames of at least 11 px on each side (SSIM's window); prepare a larger image size")
        self.scenes = self.index["scenes"]
        pos = 0
        for sc in self.scenes:
            if not isinstance(sc, dict) or any(k not in sc for k in ("name", "start", "length", "split")):
                raise UserError("a scene entry lacks name/start/length/split", where, "scenes as prepare-dataset writes them")
            if sc["start"] != pos or sc["length"] < 1 or sc["start"] + sc["length"] > n:
                raise UserError(f"scene {sc['name']} spans frames {sc['start']}..{sc['start'] + sc['length'] - 1}",
                                where, f"contiguous scenes covering frames 0..{n - 1} of frames.npy")
            pos += sc["length"]
        if pos != n or len(self.timestamps) != n:
            raise UserError(f"scenes cover {pos} frames and timestamps.npy has {len(self.timestamps)}", where,
                            f"both equal to num_frames {n}")
        norm = self.index["action_normalisation"]
        if not isinstance(norm, dict) or any(len(norm.get(k, [])) != 4 for k in ("mean", "std")):
            raise UserError("action_normalisation needs mean and std of 4 values", where, "as prepare-dataset writes it")
        if not np.isfinite(self.actions).all():
            bad = int(np.argwhere(~np.isfinite(self.actions))[0, 0])
            raise UserError(f"NaN/Inf in actions at frame {bad} (scene {self.scene_of(bad)})",
                            str(root / "actions.npy"), "finite actions")
        self.action_mean = np.asarray(norm["mean"], np.float32)
        self.action_std = np.asarray(norm["std"], np.float32)

    def scene_of(self, frame: int) -> str:
        for s in self.scenes:
            if s["start"] <= frame < s["start"] + s["length"]:
                return s["name"]
        return "?"

    @property
    def image_size(self) -> tuple[int, int]:
        w, h = self.index["image_size"]
        return int(w), int(h)

    def normalise(self, actions: np.ndarray) -> np.ndarray:
        return (actions - self.action_mean) / self.action_std

    def describe(self) -> dict:
        """What `worldmodel inspect` prints."""
        w, h = self.image_size
        channels = []
        for c, (name, unit) in enumerate(zip(self.index["action_names"], self.index["action_units"])):
            a = self.actions[:, c]
            channels.append({"channel": c, "name": name, "unit": unit, "mean": float(a.mean()),
                             "min": float(a.min()), "max": float(a.max())})
        return {"root": str(self.root), "source": self.index["source"], "num_frames": self.index["num_frames"],
                "frame_size": [w, h],
                "scenes": [{"name": s["name"], "split": s["split"], "frames": s["length"],
                            "duration_s": round(s["duration_s"], 3), "frame_size": [w, h]} for s in self.scenes],
                "actions": channels}


def window_starts(length: int, sequence_length: int, frame_skip: int, stride: int) -> list[int]:
    span = (sequence_length - 1) * frame_skip + 1
    return list(range(0, length - span + 1, stride)) if length >= span else []


class WindowDataset(Dataset):
    """Windows of ``sequence_length`` frames from the scenes of one split.

    Item: ``{"frames": float [L, 3, H, W] in [0, 1], "actions": float [L, 4] normalised, "index": int}``.
    With ``frame_skip`` k the action of step t is the mean of the k per-frame actions it spans.
    """

    def __init__(self, data: ProcessedDataset, split: str, sequence_length: int, frame_skip: int = 1,
                 stride: int = 1):
        self.data = data
        self.sequence_length, self.frame_skip = sequence_length, frame_skip
        scenes = [s for s in data.scenes if s["split"] == split]
        if not scenes:
            raise UserError(f"no {split} scenes", str(data.root / "index.json"), f"at least one scene in split {split!r}")
        self.starts: list[int] = []
        self.scene_names: list[str] = []
        for s in scenes:
            for off in window_starts(s["length"], sequence_length, frame_skip, stride):
                self.starts.append(s["start"] + off)
                self.scene_names.append(s["name"])
        if not self.starts:
            longest = max(s["length"] for s in scenes)
            raise UserError(f"sequence_length {sequence_length} x frame_skip {frame_skip} is longer than every "
                            f"{split} scene (longest: {longest} frames)", "data.sequence_length",
                            f"(sequence_length - 1) * frame_skip + 1 <= {longest}")
        self.norm_actions = data.normalise(data.actions).astype(np.float32)

    def __len__(self) -> int:
        return len(self.starts)

    def frame_indices(self, i: int) -> np.ndarray:
        return self.starts[i] + np.arange(self.sequence_length) * self.frame_skip

    def actions_of(self, i: int) -> np.ndarray:
        idx = self.frame_indices(i)
        k = self.frame_skip
        return np.stack([self.norm_actions[j:j + k].mean(0) for j in idx])

    def __getitem__(self, i: int) -> dict:
        idx = self.frame_indices(i)
        frames = np.array(self.data.frames[idx[0]:idx[-1] + 1:self.frame_skip])  # a writable copy
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
        return {"frames": x, "actions": torch.from_numpy(self.actions_of(i)), "index": i}

    def difficulty(self) -> np.ndarray:
        """Per-window difficulty for the curriculum: mean absolute frame-to-frame change (subsampled pixels)
        plus the spread of the normalised actions. Larger = more motion = harder to predict."""
        f = self.data.frames
        step = max(1, f.shape[1] // 16)
        change = np.zeros(len(f), np.float32)
        chunk = 512
        for a in range(0, len(f) - 1, chunk):
            b = min(len(f), a + chunk + 1)
            sub = np.asarray(f[a:b, ::step, ::step], np.float32) / 255.0
            change[a:b - 1] = np.abs(np.diff(sub, axis=0)).mean(axis=(1, 2, 3))
        out = np.empty(len(self), np.float32)
        for i in range(len(self)):
            idx = self.frame_indices(i)
            out[i] = change[idx[0]:idx[-1]].mean() + 0.01 * float(np.abs(self.actions_of(i)).mean())
        return out


def collate(items: list[dict]) -> dict:
    return {"frames": torch.stack([it["frames"] for it in items]), "actions": torch.stack([it["actions"] for it in items]),
            "index": torch.tensor([it["index"] for it in items])}


class DrivingAugmentation:
    """The guide's ``DrivingAugmentation(brightness=0.3, contrast=0.3, crop_scale=(0.7, 1.0))`` for a batch of
    windows ``[B, T, 3, H, W]`` in [0, 1]. Each window draws one brightness factor, one contrast factor and one
    crop (area fraction in ``crop_scale``, the frame's aspect ratio, anywhere in the frame, resized back), and
    every frame of the window gets the same: the frame-to-frame motion that the actions explain is kept.
    Draws come from the ``generator`` passed in, so a run is reproducible and a resume exact."""

    def __init__(self, brightness: float = 0.3, contrast: float = 0.3, crop_scale=(0.7, 1.0)):
        self.brightness, self.contrast = float(brightness), float(contrast)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))

    def __call__(self, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, t, c, h, w = frames.shape
        u = torch.rand(b, 5, generator=generator, device=generator.device).to(frames.device, frames.dtype)
        bright = 1 + self.brightness * (2 * u[:, 0] - 1)
        contrast = 1 + self.contrast * (2 * u[:, 1] - 1)
        lo, hi = self.crop_scale
        side = torch.sqrt(lo + (hi - lo) * u[:, 2])                  # crop side as a fraction of the frame's
        # affine grid: output covers [cx - side, cx + side] in normalised coordinates, cx so the crop stays inside
        cx, cy = (1 - side) * (2 * u[:, 3] - 1), (1 - side) * (2 * u[:, 4] - 1)
        theta = torch.zeros(b, 2, 3, device=frames.device, dtype=frames.dtype)
        theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = side, side, cx, cy
        x = frames.flatten(0, 1)
        theta = theta.repeat_interleave(t, 0)
        if lo < 1.0:
            grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
            x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = x.view(b, t, c, h, w)
        grey = x.mean(dim=(2, 3, 4), keepdim=True)
        x = (x - grey) * contrast.view(b, 1, 1, 1, 1) + grey
        return (x * bright.view(b, 1, 1, 1, 1)).clamp(0, 1)
