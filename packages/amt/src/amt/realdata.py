"""Real-hand folder layouts as data roots, beside DexYCB's (``data.DexYCBIndex``).

- ``hand_crops`` (the real-world test set of Ge et al., CVPR 2019, as in ``../shared/realdata/hands``)::

      <root>/images/NNNNN.jpg    square crops of a full frame
      <root>/pose_gt.mat         pose_gt (N,21,3) camera-frame joints in **centimetres**, DexYCB joint order
      <root>/params.mat          cam_param (N,4) = fx, fy, u0, v0 of the full frame; bbox (N,4) = x, y, w, h of
                                 the crop in that frame (crop K: r = S/w; fx r, fy r, (u0-x) r, (v0-y) r)

- ``freihand`` (FreiHAND's public release)::

      <root>/training_xyz.json   list of (21,3) joints in metres (camera frame, same joint order)
      <root>/training_K.json     list of 3x3 intrinsics
      <root>/training/rgb/%08d.jpg (or <root>/rgb/): N images, or 4N (the release's extra colourings of the
                                 same frames: image i uses label i mod N)
  (``evaluation_xyz.json`` / ``evaluation_K.json`` / ``evaluation/rgb`` when only the evaluation set is there.)

Both are single sets without the toolkit's splits: ``*_train`` is every frame except each 5th, ``*_val`` each
5th frame, ``*_test`` every frame (a real folder is usually a test set). The frame index in result files is the
frame's row (0-based) in the label arrays.

Handedness comes from the 3-D joints (:func:`amt.baselines.chirality`), never from a name: the Ge et al. hands
are called right but bend as left hands in every frame. A frame is mirrored for the model (``mano_side ==
"left"``) when its chirality differs from ``right_sign`` — +1 (anatomical right) by default, or the sign of the
hands a checkpoint was trained on, so a model sees real hands with the chirality it learned.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trainkit.errors import UserError

from .baselines import chirality
from .data import SPLITS, Frame, project

LAYOUTS = ("dexycb", "hand_crops", "freihand")


def detect_layout(root: str | Path) -> str:
    r = Path(root)
    if (r / "pose_gt.mat").is_file() or ((r / "images").is_dir() and (r / "params.mat").is_file()):
        return "hand_crops"
    if any((r / f"{p}_xyz.json").is_file() for p in ("training", "evaluation")):
        return "freihand"
    return "dexycb"


def _split_mask(split: str, n: int) -> np.ndarray:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}", "--split", f"one of {', '.join(SPLITS)}")
    i = np.arange(n)
    part = split.split("_")[1]
    return {"train": i % 5 != 4, "val": i % 5 == 4, "test": np.ones(n, bool)}[part]


class ArrayHandIndex:
    """Frames held in arrays (joints in metres, per-frame K): the interface of ``DexYCBIndex`` that the dataset
    and evaluation use (``frames``, ``intrinsics``, ``read``, ``num_empty``, ``incompleteness``)."""

    layout = "arrays"

    def __init__(self, root: Path, split: str, images: list[str], joints_m: np.ndarray, K: np.ndarray,
                 label_of: np.ndarray, right_sign: float = 1.0):
        self.root, self.split = Path(root), split
        self.joints, self.K = joints_m, K
        sign = np.sign(chirality(joints_m))
        sign[sign == 0] = 1.0
        self.anatomical_left = int((sign < 0).sum())  # counted over the label arrays
        mask = _split_mask(split, len(images))
        self.intrinsics: dict[str, np.ndarray] = {}
        self.frames: list[Frame] = []
        for i in np.flatnonzero(mask).tolist():
            j = int(label_of[i])
            key = f"frame{j}"
            self.intrinsics[key] = K[j]
            side = "right" if sign[j] == np.sign(right_sign) else "left"
            self.frames.append(Frame(i, images[i], "", key, side, 0))
        self._label = {i: int(label_of[i]) for i in np.flatnonzero(mask).tolist()}
        self.num_empty, self.num_total = 0, len(images)

    def __len__(self) -> int:
        return len(self.frames)

    def read(self, frame: Frame) -> dict:
        j = self._label[frame.tk_index]
        J = self.joints[j].astype(np.float64)
        return {"joint_3d": J, "joint_2d": project(self.K[j], J), "pose_y": np.zeros((0, 3, 4))}

    def incompleteness(self) -> str | None:
        return None

    def summary(self) -> str:
        return (f"{self.layout} layout: {self.num_total} frames, {self.anatomical_left} of {len(self.joints)} hands "
                f"bend as left hands (3-D geometry); {self.split}: {len(self)} frames")


def _image_files(folder: Path, what: str) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if folder.is_dir() else []
    if not files:
        raise UserError(f"no images in {what}", str(folder), "JPEG/PNG files")
    return files


def _loadmat(path: Path, keys: dict) -> dict:
    from scipy.io import loadmat

    if not path.is_file():
        raise UserError(f"missing {path.name}", str(path), "the hand-crop layout: images/, pose_gt.mat, params.mat")
    try:
        m = loadmat(str(path))
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error
        raise UserError(f"unreadable {path.name}", str(path), f"a MATLAB .mat file ({type(err).__name__})") from None
    out = {}
    for k, shape in keys.items():
        if k not in m:
            raise UserError(f"{path.name} lacks {k!r}", str(path), f"{k} of shape {shape}")
        a = np.asarray(m[k], dtype=np.float64)
        if a.ndim != len(shape) or any(s is not None and a.shape[d] != s for d, s in enumerate(shape)):
            raise UserError(f"{path.name} has {k} of shape {a.shape}", str(path), f"{k} of shape {shape}")
        out[k] = a
    return out


class HandCropsIndex(ArrayHandIndex):
    layout = "hand_crops"

    def __init__(self, root: str | Path, split: str, right_sign: float = 1.0):
        root = Path(root)
        images = _image_files(root / "images", "images/")
        pose = _loadmat(root / "pose_gt.mat", {"pose_gt": (None, 21, 3)})["pose_gt"]
        par = _loadmat(root / "params.mat", {"cam_param": (None, 4), "bbox": (None, 4)})
        n = len(pose)
        if len(images) != n or len(par["cam_param"]) != n or len(par["bbox"]) != n:
            raise UserError(f"{len(images)} images but {n} poses, {len(par['cam_param'])} cam_param rows and "
                            f"{len(par['bbox'])} bbox rows", str(root), "one row per image in sorted order")
        with _open_image(images[0]) as im:
            size = im.size
        if size[0] != size[1]:
            raise UserError(f"crop {images[0].name} is {size[0]}x{size[1]}", str(images[0]), "square crops")
        fx, fy, u0, v0 = par["cam_param"].T
        x, y, w = par["bbox"][:, 0], par["bbox"][:, 1], par["bbox"][:, 2]
        r = size[0] / w
        K = np.zeros((n, 3, 3))
        K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = fx * r, fy * r, (u0 - x) * r, (v0 - y) * r, 1.0
        super().__init__(root, split, [str(p) for p in images], pose / 100.0, K, np.arange(n), right_sign)


class FreiHANDIndex(ArrayHandIndex):
    layout = "freihand"

    def __init__(self, root: str | Path, split: str, right_sign: float = 1.0):
        root = Path(root)
        prefix = "training" if (root / "training_xyz.json").is_file() else "evaluation"
        xyz = np.asarray(_load_json(root / f"{prefix}_xyz.json"), dtype=np.float64)
        K = np.asarray(_load_json(root / f"{prefix}_K.json"), dtype=np.float64)
        if xyz.ndim != 3 or xyz.shape[1:] != (21, 3):
            raise UserError(f"{prefix}_xyz.json holds shape {xyz.shape}", str(root / f"{prefix}_xyz.json"),
                            "a list of 21x3 joint lists (metres)")
        if K.shape != (len(xyz), 3, 3):
            raise UserError(f"{prefix}_K.json holds shape {K.shape}", str(root / f"{prefix}_K.json"),
                            f"{len(xyz)} 3x3 matrices, one per joint set")
        rgb = root / prefix / "rgb" if (root / prefix / "rgb").is_dir() else root / "rgb"
        images = _image_files(rgb, f"{prefix}/rgb or rgb/")
        if len(images) % len(xyz):
            raise UserError(f"{len(images)} images for {len(xyz)} joint sets", str(rgb),
                            "N or a multiple of N images (the release's colourings of each frame)")
        super().__init__(root, split, [str(p) for p in images], xyz, K, np.arange(len(images)) % len(xyz), right_sign)


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"missing {path.name}", str(path), "FreiHAND's layout: <set>_xyz.json, <set>_K.json, rgb/") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path.name} is not valid JSON", str(path), str(err).splitlines()[0]) from None


def _open_image(path: Path):
    from PIL import Image

    try:
        return Image.open(path)
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError("unreadable image", str(path), f"a JPEG/PNG ({type(err).__name__})") from None


def make_index(root: str | Path, split: str, right_sign: float = 1.0):
    """The frame index of a data root in any known layout."""
    from .data import DexYCBIndex

    layout = detect_layout(root)
    if layout == "hand_crops":
        return HandCropsIndex(root, split, right_sign)
    if layout == "freihand":
        return FreiHANDIndex(root, split, right_sign)
    return DexYCBIndex(root, split)
