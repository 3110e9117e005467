"""DexYCB in its on-disk layout: the split index, the label reader, the hand crop and augmentation.

Layout (NVlabs/dex-ycb-toolkit)::

    <root>/<subject>/<sequence>/meta.yml                      serials, num_frames, ycb_ids, ycb_grasp_ind, mano_sides
    <root>/<subject>/<sequence>/<serial>/color_%06d.jpg       640x480 RGB
    <root>/<subject>/<sequence>/<serial>/labels_%06d.npz      joint_3d [1,21,3] m, joint_2d [1,21,2] px, pose_y [n,3,4]
    <root>/calibration/intrinsics/<serial>_640x480.yml        color: {fx, fy, ppx, ppy}

The split rules (s0..s3 x train/val/test) are the toolkit's: subjects, serials and sequence positions are
picked by index into the toolkit's fixed subject/serial lists, sequences sorted by name. The toolkit's dataset
index (position in that ordered list, counting frames without a hand) is kept per frame, because the official
result file is keyed by it. Frames whose ``joint_3d`` is all -1 (no hand) are dropped from training and
evaluation, as the toolkit's HPE evaluation drops them.

A frame becomes a sample by one affine map from the 640x480 image into an S x S crop around the hand
(1.5 x the bounding box of the 2-D joints, square). Augmentation (in-plane rotation, scale, translation)
and left-hand mirroring are folded into that same map and applied to the 3-D labels as a rotation about /
reflection through the camera's optical axis, so image, 3-D joints, 2-D joints and crop intrinsics stay
exactly consistent (see ``crop_transform``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from trainkit.errors import UserError

# The toolkit's fixed lists (dex_ycb_toolkit/dex_ycb.py): split rules index into them.
SUBJECTS = [
    "20200709-subject-01", "20200813-subject-02", "20200820-subject-03", "20200903-subject-04",
    "20200908-subject-05", "20200918-subject-06", "20200928-subject-07", "20201002-subject-08",
    "20201015-subject-09", "20201022-subject-10",
]
SERIALS = ["836212060125", "839512060362", "840412060917", "841412060263",
           "932122060857", "932122060861", "932122061900", "932122062010"]
JOINT_NAMES = ["wrist", "thumb_mcp", "thumb_pip", "thumb_dip", "thumb_tip", "index_mcp", "index_pip", "index_dip",
               "index_tip", "middle_mcp", "middle_pip", "middle_dip", "middle_tip", "ring_mcp", "ring_pip",
               "ring_dip", "ring_tip", "little_mcp", "little_pip", "little_dip", "little_tip"]
BONES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
         (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]
SEQUENCES_PER_SUBJECT = 100  # the toolkit's assertion in dex_ycb.py
IMAGE_W, IMAGE_H = 640, 480
SPLITS = [f"s{s}_{p}" for s in range(4) for p in ("train", "val", "test")]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def split_rule(split: str) -> tuple[list[int], list[int], callable]:
    """(subject indices, serial indices, sequence-position predicate) of a toolkit split like ``s0_train``."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}", "--split", f"one of {', '.join(SPLITS)}")
    setup, part = split.split("_")
    all_subj, all_cams = list(range(10)), list(range(8))
    if setup == "s0":  # seen subjects, cameras and objects: every 5th sequence held out
        subj = {"train": all_subj, "val": [0, 1], "test": list(range(2, 10))}[part]
        return subj, all_cams, (lambda i: i % 5 != 4) if part == "train" else (lambda i: i % 5 == 4)
    if setup == "s1":  # unseen subjects
        subj = {"train": [0, 1, 2, 3, 4, 5, 9], "val": [6], "test": [7, 8]}[part]
        return subj, all_cams, lambda i: True
    if setup == "s2":  # unseen cameras
        cams = {"train": list(range(6)), "val": [6], "test": [7]}[part]
        return all_subj, cams, lambda i: True
    groups = {"train": lambda i: i // 5 not in (3, 7, 11, 15, 19), "val": lambda i: i // 5 in (3, 19),
              "test": lambda i: i // 5 in (7, 11, 15)}  # s3: unseen grasped objects
    return all_subj, all_cams, groups[part]


def _read_yaml(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UserError(f"missing {what}", str(path), "a YAML file in the DexYCB layout")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{what} is not valid YAML", str(path), str(err).splitlines()[0]) from None
    if not isinstance(data, dict):
        raise UserError(f"{what} does not hold a mapping", str(path), "key: value pairs")
    return data


def read_intrinsics(root: Path, serial: str) -> np.ndarray:
    """3x3 K of a camera from ``calibration/intrinsics/<serial>_640x480.yml`` (key ``color``)."""
    path = root / "calibration" / "intrinsics" / f"{serial}_{IMAGE_W}x{IMAGE_H}.yml"
    if not path.is_file():
        raise UserError(f"camera {serial} has no intrinsics file", str(path),
                        "calibration/intrinsics/<serial>_640x480.yml with color: {fx, fy, ppx, ppy}")
    c = _read_yaml(path, "intrinsics file").get("color")
    try:
        fx, fy, cx, cy = (float(c[k]) for k in ("fx", "fy", "ppx", "ppy"))
    except (TypeError, KeyError, ValueError):
        raise UserError("intrinsics file lacks color: fx, fy, ppx, ppy", str(path),
                        "color: {fx: .., fy: .., ppx: .., ppy: ..}") from None
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)


def read_labels(path: Path) -> dict:
    """``labels_%06d.npz`` -> joint_3d [21,3] m, joint_2d [21,2] px, pose_y [n,3,4] (validated)."""
    try:
        with np.load(path) as z:
            data = {k: z[k] for k in z.files if k != "seg"}  # the segmentation mask is never used here
    except FileNotFoundError:
        raise UserError("missing label file", str(path), "labels_%06d.npz beside each color_%06d.jpg") from None
    except Exception as err:  # noqa: BLE001 - any unreadable archive is a user error
        raise UserError("unreadable label file", str(path), f"a numpy .npz archive ({type(err).__name__})") from None
    for key, shape in (("joint_3d", (1, 21, 3)), ("joint_2d", (1, 21, 2))):
        if key not in data or tuple(data[key].shape) != shape:
            got = tuple(data[key].shape) if key in data else "missing"
            raise UserError(f"label file has {key} of shape {got}", str(path), f"{key} of shape {list(shape)}")
    pose_y = data.get("pose_y", np.zeros((0, 3, 4), np.float32))
    if pose_y.ndim != 3 or pose_y.shape[1:] != (3, 4):
        raise UserError(f"label file has pose_y of shape {tuple(pose_y.shape)}", str(path), "pose_y of shape [n, 3, 4]")
    out = {"joint_3d": data["joint_3d"][0].astype(np.float64), "joint_2d": data["joint_2d"][0].astype(np.float64),
           "pose_y": pose_y.astype(np.float64)}
    if "sphere_radius" in data:  # synthetic extension: the grasped object is a sphere with this radius (m)
        out["sphere_radius"] = float(np.asarray(data["sphere_radius"]).reshape(-1)[0])
    return out


@dataclass
class Frame:
    """One labelled camera frame of the split."""
    tk_index: int          # the toolkit's dataset index (result files are keyed by it)
    color: str
    label: str
    serial: str
    mano_side: str         # "right" | "left"
    grasp_index: int       # ycb_grasp_ind: which pose_y row is the grasped object


class DexYCBIndex:
    """The frames of one split in the toolkit's order, with per-camera intrinsics.

    ``keep_empty`` keeps frames without a hand (all -1 labels); by default they are dropped.
    """

    def __init__(self, root: str | Path, split: str, *, keep_empty: bool = False):
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise UserError("DexYCB root not found", str(self.root),
                            "a directory with <subject>/<sequence>/<serial>/ and calibration/ (or omit --data_root "
                            "for the synthetic default)")
        subj_ind, cam_ind, seq_pred = split_rule(split)
        self.intrinsics: dict[str, np.ndarray] = {}
        self.frames: list[Frame] = []
        self.num_empty = 0
        tk_index = 0
        found_subject = False
        # What differs from the full release, where the toolkit asserts 100 sequences per subject: split
        # membership (every 5th sequence *position*) and the result file's indices assume that layout.
        self.missing_subjects: list[str] = []
        self.sequence_counts: dict[str, int] = {}
        for s in subj_ind:
            subject_dir = self.root / SUBJECTS[s]
            if not subject_dir.is_dir():
                self.missing_subjects.append(SUBJECTS[s])
                continue
            found_subject = True
            sequences = sorted(p.name for p in subject_dir.iterdir() if p.is_dir())
            self.sequence_counts[SUBJECTS[s]] = len(sequences)
            for i, seq in enumerate(sequences):
                if not seq_pred(i):
                    continue
                meta_path = subject_dir / seq / "meta.yml"
                meta = _read_yaml(meta_path, "sequence meta file")
                try:
                    num_frames = int(meta["num_frames"])
                    side = str(meta["mano_sides"][0])
                    grasp = int(meta.get("ycb_grasp_ind", 0))
                    seq_serials = [str(x) for x in meta.get("serials", SERIALS)]
                except (KeyError, TypeError, ValueError, IndexError):
                    raise UserError("meta.yml lacks num_frames / mano_sides", str(meta_path),
                                    "num_frames: int, mano_sides: [right|left], serials: [...]") from None
                if side not in ("right", "left"):
                    raise UserError(f"mano_sides[0] is {side!r}", str(meta_path), "'right' or 'left'")
                # The toolkit takes every camera of the split; a sequence recorded with fewer cameras (own data)
                # contributes the ones it has.
                for c in cam_ind:
                    serial = SERIALS[c]
                    if serial not in seq_serials:
                        continue
                    if serial not in self.intrinsics:
                        self.intrinsics[serial] = read_intrinsics(self.root, serial)
                    cam_dir = subject_dir / seq / serial
                    for f in range(num_frames):
                        label = cam_dir / f"labels_{f:06d}.npz"
                        frame = Frame(tk_index, str(cam_dir / f"color_{f:06d}.jpg"), str(label), serial, side, grasp)
                        tk_index += 1
                        if not keep_empty and _is_empty(label):
                            self.num_empty += 1
                            continue
                        self.frames.append(frame)
        if not found_subject:
            raise UserError(f"no subject folder of split {split} under the DexYCB root", str(self.root),
                            f"folders named like {SUBJECTS[subj_ind[0]]}")
        self.num_total = tk_index

    def __len__(self) -> int:
        return len(self.frames)

    def read(self, frame: Frame) -> dict:
        """The frame's labels (see :func:`read_labels`)."""
        return read_labels(Path(frame.label))

    def incompleteness(self) -> str | None:
        """None for the full release's layout; otherwise one line saying what differs and what it changes."""
        short = {k: v for k, v in self.sequence_counts.items() if v != SEQUENCES_PER_SUBJECT}
        if not self.missing_subjects and not short:
            return None
        parts = []
        if self.missing_subjects:
            parts.append(f"missing subject folders {', '.join(self.missing_subjects)}")
        if short:
            parts.append("sequences per subject " + ", ".join(f"{k}: {v}" for k, v in short.items()))
        return (f"{self.split} under {self.root} is not the full DexYCB layout ({'; '.join(parts)}; the toolkit "
                f"expects {SEQUENCES_PER_SUBJECT} per subject): split membership follows sequence positions on disk "
                f"and result-file indices will not match the toolkit's evaluate_hpe.py")


def _is_empty(label_path: Path) -> bool:
    """Only ``joint_3d`` is decompressed (a DexYCB label also holds a 480x640 ``seg``): indexing s0_train reads
    465,504 of these."""
    try:
        with np.load(label_path) as z:
            j = z["joint_3d"] if "joint_3d" in z.files else None
    except Exception:  # noqa: BLE001 - let read_labels name the problem
        j = None
    if j is None or tuple(j.shape) != (1, 21, 3):
        j = read_labels(label_path)["joint_3d"]  # raises the one-line error for a missing/bad file
    return bool(np.all(j == -1))


# ---------------------------------------------------------------- crop geometry

def rotation_z(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


def project(K: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Pinhole projection of [...,3] camera-frame points (pixel centres at integers)."""
    p = X @ K.T
    return p[..., :2] / p[..., 2:3]


def crop_transform(K: np.ndarray, joints3d: np.ndarray, out_size: int, *, crop_scale: float = 1.5, mirror: bool = False,
                   rotation: float = 0.0, scale: float = 1.0, shift=(0.0, 0.0)):
    """Geometry of one sample: returns (T, K_crop, M).

    T (3x3) maps original camera-frame points to the sample's frame (reflection x -> -x for a mirrored left
    hand, then a rotation about the optical axis); K_crop is upper-triangular; M (3x3 affine) maps original
    pixels to crop pixels, and M @ K @ X = K_crop @ T @ X up to the depth, exactly (T keeps z, so K T K^-1 is
    affine). The crop is the 2-D joints' box (after T) times ``crop_scale``, square, jittered by ``scale`` and
    ``shift`` (fractions of the box side), resized to ``out_size``.
    """
    D = np.diag([-1.0, 1.0, 1.0]) if mirror else np.eye(3)
    T = rotation_z(rotation) @ D
    uv = project(K, joints3d @ T.T)
    lo, hi = uv.min(0), uv.max(0)
    center = (lo + hi) / 2 + np.asarray(shift) * (hi - lo).max() * crop_scale
    side = max(float((hi - lo).max()) * crop_scale * scale, 1.0)
    a = out_size / side
    S = np.array([[a, 0, (out_size - 1) / 2 - a * center[0]], [0, a, (out_size - 1) / 2 - a * center[1]], [0, 0, 1]])
    K_crop = S @ K
    M = K_crop @ T @ np.linalg.inv(K)
    M[2] = (0, 0, 1)  # exact zeros up to rounding
    return T, K_crop, M


def warp_image(image: Image.Image, M: np.ndarray, out_size: int) -> Image.Image:
    """Apply the pixel map M (original -> crop, pixel centres at integers) with bilinear sampling."""
    inv = np.linalg.inv(M)
    # PIL puts pixel centres at +0.5: in_pil = inv @ (out_pil - 0.5) + 0.5.
    a, b, c = inv[0]
    d, e, f = inv[1]
    c = c - 0.5 * (a + b) + 0.5
    f = f - 0.5 * (d + e) + 0.5
    return image.transform((out_size, out_size), Image.Transform.AFFINE, (a, b, c, d, e, f),
                           resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))


def color_jitter(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation jitter on an HxWx3 float image in [0, 1]."""
    if strength <= 0:
        return img
    b, c, s = (1 + rng.uniform(-strength, strength, 3))
    img = img * b
    mean = img.mean()
    img = (img - mean) * c + mean
    gray = img.mean(-1, keepdims=True)
    img = (img - gray) * s + gray
    return np.clip(img, 0, 1)


@dataclass
class AugmentConfigLike:
    rotation_deg: float = 0.0
    scale: float = 0.0
    translation: float = 0.0
    color_jitter: float = 0.0


class HandCropDataset(torch.utils.data.Dataset):
    """Samples of a DexYCB split as hand crops.

    Each item: ``image`` [3,S,S] ImageNet-normalised; ``joints_rel`` [21,3] m root-relative; ``root`` [3] m;
    ``joints_2d`` [21,2] crop px; ``K`` [3,3] crop intrinsics; ``T`` [3,3] sample-frame transform (to go back
    to the original camera frame: T^-1); ``K_orig``; ``joints_2d_orig`` [21,2] 640x480 px; object
    ``obj_rel`` [3] (grasped object's centre relative to the root), ``obj_radius`` (m, 0 = no surface known);
    ``tk_index``.
    """

    def __init__(self, index: DexYCBIndex, image_size: int, *, augment: bool = False, crop_scale: float = 1.5,
                 aug: AugmentConfigLike | None = None, seed: int = 0, mirror_left: bool = True):
        self.index, self.image_size, self.augment, self.crop_scale = index, image_size, augment, crop_scale
        self.aug = aug or AugmentConfigLike()
        self.seed, self.epoch, self.mirror_left = seed, 0, mirror_left

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, i: int) -> np.random.Generator:
        # Augmentation randomness is a pure function of (seed, epoch, item), so a resumed run and every
        # DataLoader worker draw exactly what an uninterrupted run draws.
        return np.random.default_rng([self.seed, self.epoch, i])

    def __getitem__(self, i: int) -> dict:
        fr = self.index.frames[i]
        lab = self.index.read(fr)
        K = self.index.intrinsics[fr.serial]
        J = lab["joint_3d"]
        rot, scale, shift = 0.0, 1.0, (0.0, 0.0)
        rng = self._rng(i)
        if self.augment:
            a = self.aug
            rot = math.radians(rng.uniform(-a.rotation_deg, a.rotation_deg))
            scale = 1.0 + rng.uniform(-a.scale, a.scale)
            shift = tuple(rng.uniform(-a.translation, a.translation, 2))
        mirror = self.mirror_left and fr.mano_side == "left"
        T, Kc, M = crop_transform(K, J, self.image_size, crop_scale=self.crop_scale, mirror=mirror, rotation=rot,
                                  scale=scale, shift=shift)
        try:
            with Image.open(fr.color) as im:
                crop = warp_image(im.convert("RGB"), M, self.image_size)
        except FileNotFoundError:
            raise UserError("missing color image", fr.color, "color_%06d.jpg beside labels_%06d.npz") from None
        except (OSError, SyntaxError, ValueError) as err:  # truncated/empty/not an image (PIL's errors)
            raise UserError("unreadable color image", fr.color, f"a 640x480 JPEG ({type(err).__name__})") from None
        img = np.asarray(crop, dtype=np.float32) / 255.0
        if self.augment:
            img = color_jitter(img, self.aug.color_jitter, rng)
        img = ((img - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)
        Js = J @ T.T
        root = Js[0]
        obj_rel, radius, obj_valid = np.zeros(3), 0.0, 0.0
        if len(lab["pose_y"]) > fr.grasp_index:
            obj_valid = 1.0
            obj_rel = T @ lab["pose_y"][fr.grasp_index][:, 3] - root
            radius = lab.get("sphere_radius", 0.0)
        f32 = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            "joints_rel": f32(Js - root), "root": f32(root), "joints_2d": f32(project(Kc, Js)), "K": f32(Kc),
            "T": f32(T), "K_orig": f32(K), "joints_2d_orig": f32(lab["joint_2d"]), "obj_rel": f32(obj_rel),
            "obj_radius": torch.tensor(radius, dtype=torch.float32), "tk_index": torch.tensor(fr.tk_index),
            "obj_valid": torch.tensor(obj_valid, dtype=torch.float32),
        }


# ---------------------------------------------------------------- writers (used by the synthetic generator)

def write_intrinsics(root: Path, serial: str, K: np.ndarray) -> None:
    path = root / "calibration" / "intrinsics" / f"{serial}_{IMAGE_W}x{IMAGE_H}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    color = {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "ppx": float(K[0, 2]), "ppy": float(K[1, 2])}
    path.write_text(yaml.safe_dump({"color": color, "depth": dict(color)}))


def write_meta(seq_dir: Path, *, serials: list[str], num_frames: int, ycb_ids: list[int], grasp_ind: int,
               side: str, calib: str) -> None:
    seq_dir.mkdir(parents=True, exist_ok=True)
    meta = {"serials": serials, "num_frames": num_frames, "ycb_ids": ycb_ids, "ycb_grasp_ind": grasp_ind,
            "mano_sides": [side], "mano_calib": [calib], "pcd_depth_thresh": 1.5}
    (seq_dir / "meta.yml").write_text(yaml.safe_dump(meta))


def write_labels(path: Path, joint_3d: np.ndarray | None, joint_2d: np.ndarray | None, pose_y: np.ndarray,
                 **extra) -> None:
    """A labels npz; ``joint_3d=None`` writes the toolkit's no-hand frame (all -1)."""
    j3 = np.full((1, 21, 3), -1, np.float32) if joint_3d is None else joint_3d.reshape(1, 21, 3).astype(np.float32)
    j2 = np.full((1, 21, 2), -1, np.float32) if joint_2d is None else joint_2d.reshape(1, 21, 2).astype(np.float32)
    pose_m = np.zeros((1, 51), np.float32)
    np.savez_compressed(path, joint_3d=j3, joint_2d=j2, pose_y=pose_y.astype(np.float32), pose_m=pose_m,
                        seg=np.zeros((1, 1), np.uint8), **extra)
