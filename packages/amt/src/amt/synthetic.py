"""The embedded default dataset: a kinematic 21-joint hand rendered to RGB, written in the DexYCB layout.

Skeleton: the toolkit's joint order; bone lengths from Buryanov & Kotiuk (2010) X-ray proportions (mm:
metacarpal, proximal, middle, distal+soft tip); joint limits of a human-mimicking hand (finger MCP flexion
-15..90 deg, abduction +-20, PIP 0..90, DIP ~ 2/3 PIP; thumb CMC opposition +-60, abduction 0..70, MCP
-15..40, IP -15..90). Shape varies per subject (global scale, like MANO betas) and per sample (bone jitter).
Each camera frame gets a random articulation (a shared "grasp closure" plus per-finger noise), a random
global rotation, depth 0.4-1.0 m and a position that keeps the hand in the 640x480 image, a sphere object
held near the fingertips (never penetrated by the ground-truth joints, so the physics term has an exact
surface), drawn with depth ordering over noisy cluttered backgrounds. Frame 0 of every sequence shows no hand
and is labelled -1, as DexYCB does, so readers must drop it. Left-hand sequences are mirrored hands.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from trainkit.errors import UserError

from .data import BONES, IMAGE_H, IMAGE_W, SERIALS, SUBJECTS, project, write_intrinsics, write_labels, write_meta

# [metacarpal (wrist->MCP), proximal, middle, distal + soft tip] in metres.
FINGER_BONES = {
    "index": [0.0681, 0.0398, 0.0224, 0.0158 + 0.0038],
    "middle": [0.0646, 0.0446, 0.0263, 0.0174 + 0.0040],
    "ring": [0.0580, 0.0414, 0.0257, 0.0173 + 0.0040],
    "little": [0.0537, 0.0326, 0.0181, 0.0160 + 0.0037],
}
THUMB_BONES = [0.025, 0.0462, 0.0316, 0.0217 + 0.0057]  # wrist->CMC offset, metacarpal, proximal, distal+tip
FINGER_BASE_DEG = {"index": 9.0, "middle": 0.0, "ring": -9.0, "little": -19.0}  # splay in the palm plane
FINGER_FIRST_JOINT = {"thumb": 1, "index": 5, "middle": 9, "ring": 13, "little": 17}
FINGER_COLOURS = {"thumb": (230, 60, 50), "index": (60, 200, 70), "middle": (60, 110, 235),
                  "ring": (235, 215, 50), "little": (210, 70, 210)}
PALM_COLOUR = (205, 160, 130)


def _rx(t):
    c, s = math.cos(t), math.sin(t)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(t):
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(t):
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def hand_joints(rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """Forward kinematics of a right hand in its local frame (wrist at 0, fingers along +y, palm facing -z).

    Angles are drawn within the joint limits above; returns [21,3] metres.
    """
    J = np.zeros((21, 3))
    jitter = lambda: scale * (1 + rng.uniform(-0.03, 0.03))  # noqa: E731 - per-bone shape variation
    closure = rng.uniform(0, 1)  # how closed the grasp is: fingers flex together, as in a grasp
    deg = math.radians
    for name, lengths in FINGER_BONES.items():
        k = FINGER_FIRST_JOINT[name]
        R = _rz(deg(-FINGER_BASE_DEG[name]))  # splay towards the thumb side (+x) for the index
        mcp = R @ np.array([0, lengths[0] * jitter(), 0])
        flex_mcp = np.clip(deg(-15 + 105 * closure) + rng.normal(0, deg(15)), deg(-15), deg(90))
        abd = rng.uniform(deg(-20), deg(20)) * (1 - 0.7 * closure)
        flex_pip = np.clip(deg(100 * closure) + rng.normal(0, deg(15)), 0, deg(90))
        flex_dip = np.clip(flex_pip * 2 / 3 + rng.normal(0, deg(5)), 0, deg(90))
        J[k] = mcp
        R = R @ _rz(abd) @ _rx(-flex_mcp)
        J[k + 1] = J[k] + R @ np.array([0, lengths[1] * jitter(), 0])
        R = R @ _rx(-flex_pip)
        J[k + 2] = J[k + 1] + R @ np.array([0, lengths[2] * jitter(), 0])
        R = R @ _rx(-flex_dip)
        J[k + 3] = J[k + 2] + R @ np.array([0, lengths[3] * jitter(), 0])
    # Thumb: CMC a short offset from the wrist, then opposition (about the finger axis) and abduction.
    R = _rz(deg(-50))
    J[1] = R @ np.array([0, THUMB_BONES[0] * jitter(), 0])
    opp = rng.uniform(deg(-60), deg(60)) * 0.5 + deg(30) * closure
    abd = rng.uniform(0, deg(70))
    R = R @ _ry(opp) @ _rz(abd * 0.5) @ _rx(-abd * 0.5)
    J[2] = J[1] + R @ np.array([0, THUMB_BONES[1] * jitter(), 0])
    R = R @ _rx(-np.clip(deg(-15 + 55 * closure) + rng.normal(0, deg(10)), deg(-15), deg(40)))
    J[3] = J[2] + R @ np.array([0, THUMB_BONES[2] * jitter(), 0])
    R = R @ _rx(-np.clip(deg(-15 + 105 * closure) + rng.normal(0, deg(15)), deg(-15), deg(90)))
    J[4] = J[3] + R @ np.array([0, THUMB_BONES[3] * jitter(), 0])
    return J


def place_sphere(J: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A sphere near the fingertips (inside the grasp when the hand is closed), pushed until no joint is inside."""
    radius = rng.uniform(0.022, 0.04)
    tips = J[[4, 8, 12, 16, 20]].mean(0)
    palm = J[[0, 5, 9, 13, 17]].mean(0)
    centre = 0.5 * tips + 0.5 * palm + rng.normal(0, 0.01, 3)
    away = centre - palm
    away = away / (np.linalg.norm(away) + 1e-9)
    for _ in range(200):
        if np.linalg.norm(J - centre, axis=1).min() >= radius + 0.004:
            break
        centre = centre + 0.003 * away + rng.normal(0, 0.001, 3)
    return centre, radius


def camera_intrinsics(rng: np.random.Generator) -> np.ndarray:
    fx = rng.uniform(605, 620)
    return np.array([[fx, 0, rng.uniform(308, 328)], [0, fx - rng.uniform(0, 2), rng.uniform(232, 250)], [0, 0, 1]])


_NOISE_POOL: list[np.ndarray] = []


def _fine_noise(rng: np.random.Generator) -> np.ndarray:
    """Sensor-like per-pixel noise: a random shift of one of a few fixed fields (drawing it fresh per frame
    costs more than the rest of the frame)."""
    if not _NOISE_POOL:
        pool_rng = np.random.default_rng(12345)
        _NOISE_POOL.extend(pool_rng.normal(0, 5, (IMAGE_H, IMAGE_W, 3)).astype(np.int16) for _ in range(4))
    field = _NOISE_POOL[int(rng.integers(len(_NOISE_POOL)))]
    return np.roll(field, (int(rng.integers(IMAGE_H)), int(rng.integers(IMAGE_W))), axis=(0, 1))


def _background(rng: np.random.Generator) -> Image.Image:
    """Gradient, clutter (muted shapes that are not hands) and noise, drawn at 1/4 size then upsampled."""
    h, w = IMAGE_H // 4, IMAGE_W // 4
    base = rng.uniform(40, 200, 3)
    gx, gy = rng.uniform(-60, 60, 3), rng.uniform(-60, 60, 3)
    img = base + gx * np.linspace(0, 1, w)[None, :, None] + gy * np.linspace(0, 1, h)[:, None, None]
    img = img + rng.normal(0, 6, (h, w, 3))
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(rng.integers(3, 9)):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        sw, sh = rng.uniform(5, 40, 2)
        col = tuple(int(c) for c in rng.uniform(30, 220, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + sw, y0 + sh], fill=col)
    im = im.resize((IMAGE_W, IMAGE_H), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.int16) + _fine_noise(rng)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _shade(colour, z, z_ref) -> tuple:
    f = min(1.3, max(0.55, 1.0 - 4.0 * float(z - z_ref)))  # nearer parts brighter
    return tuple(int(min(255.0, c * f)) for c in colour)


def render(K: np.ndarray, J: np.ndarray | None, centre: np.ndarray, radius: float, rng: np.random.Generator) -> Image.Image:
    """Painter's-algorithm rendering: palm, bones (finger colours, width ~ 1/depth, depth shading), sphere."""
    im = _background(rng)
    draw = ImageDraw.Draw(im)
    items = []  # (depth, kind, payload)
    fx = K[0, 0]
    if J is not None:
        uv = project(K, J)
        z_ref = J[0, 2]
        palm_idx = [0, 1, 5, 9, 13, 17]
        items.append((J[palm_idx].mean(0)[2] + 0.01, "palm", [tuple(uv[i]) for i in [0, 1, 5, 9, 13, 17]],
                      _shade(PALM_COLOUR, J[palm_idx].mean(0)[2], z_ref)))
        for a, b in BONES:
            finger = next(n for n, k in FINGER_FIRST_JOINT.items() if k <= max(a, b) < k + 4)
            z = (J[a, 2] + J[b, 2]) / 2
            width = max(2, int(round(2 * fx * 0.0085 / z)))
            items.append((z, "bone", (tuple(uv[a]), tuple(uv[b]), width), _shade(FINGER_COLOURS[finger], z, z_ref)))
    c_uv = project(K, centre[None])[0]
    r_px = fx * radius / centre[2]
    obj_col = tuple(int(c) for c in rng.uniform(60, 240, 3))
    items.append((centre[2] - radius * 0.5, "sphere", (c_uv, r_px), obj_col))
    for _, kind, p, col in sorted(items, key=lambda t: -t[0]):
        if kind == "palm":
            draw.polygon(p, fill=col)
        elif kind == "bone":
            (a, b, w) = p
            draw.line([a, b], fill=col, width=w)
            for q in (a, b):
                draw.ellipse([q[0] - w / 2, q[1] - w / 2, q[0] + w / 2, q[1] + w / 2], fill=col)
        else:
            (c, r) = p
            for k in range(6):  # radial shading with an off-centre highlight
                f = 0.6 + 0.08 * k
                rr = r * (1 - k / 7)
                off = (r - rr) * 0.4
                cc = tuple(int(min(255, v * f)) for v in col)
                draw.ellipse([c[0] - rr - off, c[1] - rr - off, c[0] + rr - off, c[1] + rr - off], fill=cc)
    return im


def sample_frame(rng: np.random.Generator, K: np.ndarray, scale: float, left: bool):
    """A hand (camera frame) in view, its sphere: (J [21,3], centre [3], radius)."""
    for _ in range(100):
        J = hand_joints(rng, scale * (1 + rng.uniform(-0.02, 0.02)))
        centre, radius = place_sphere(J, rng)
        if left:  # a left hand is the mirror image of a right hand
            J, centre = J * [-1, 1, 1], centre * [-1, 1, 1]
        R = random_rotation(rng)
        z = rng.uniform(0.4, 1.0)
        u, v = rng.uniform(120, IMAGE_W - 120), rng.uniform(100, IMAGE_H - 100)
        t = np.array([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z])
        Jc, cc = J @ R.T + t, R @ centre + t
        uv = project(K, Jc)
        if Jc[:, 2].min() > 0.2 and (uv >= 2).all() and (uv[:, 0] < IMAGE_W - 2).all() and (uv[:, 1] < IMAGE_H - 2).all():
            return Jc, cc, radius
    raise RuntimeError("could not place a hand in view")  # not reachable with these ranges


def make_synthetic(root: str | Path, *, sequences_per_subject: int = 5, frames_per_sequence: int = 8, seed: int = 0,
                   left_fraction: float = 0.3, overwrite: bool = False, log=print) -> Path:
    """Write the dataset (10 subjects x ``sequences_per_subject`` x 8 cameras x ``frames_per_sequence``).

    Built in a temporary folder beside ``root`` and renamed into place, so an interrupted run never leaves a
    half-written dataset; an existing non-empty ``root`` is refused unless ``overwrite`` (then replaced whole).
    """
    root = Path(root)
    if sequences_per_subject < 1 or frames_per_sequence < 2:
        raise UserError(f"sequences_per_subject={sequences_per_subject}, frames_per_sequence={frames_per_sequence}",
                        "make-synthetic", "sequences >= 1 and frames >= 2 (frame 0 has no hand)")
    if root.exists() and (not root.is_dir() or any(root.iterdir())) and not overwrite:
        raise UserError("output folder is not empty", str(root), "a new or empty folder, or pass --overwrite")
    tmp = root.with_name(f".{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cam_rng = np.random.default_rng([seed, 1])
    Ks = {s: camera_intrinsics(cam_rng) for s in SERIALS}
    for s, K in Ks.items():
        write_intrinsics(tmp, s, K)
    n = 0
    for si, subject in enumerate(SUBJECTS):
        srng = np.random.default_rng([seed, 2, si])
        scale = srng.uniform(0.9, 1.1)  # the subject's hand size (MANO betas in DexYCB)
        calib = f"{si:02d}_synthetic"
        mano = tmp / "calibration" / f"mano_{calib}" / "mano.yml"
        mano.parent.mkdir(parents=True, exist_ok=True)
        mano.write_text(f"betas: {[0.0] * 10}\nscale: {float(scale)}\n")
        for q in range(sequences_per_subject):
            qrng = np.random.default_rng([seed, 3, si, q])
            side = "left" if qrng.random() < left_fraction else "right"
            ycb_id = int(qrng.integers(1, 22))
            seq_dir = tmp / subject / f"2020{si + 1:02d}01_{q:06d}"
            write_meta(seq_dir, serials=SERIALS, num_frames=frames_per_sequence, ycb_ids=[ycb_id], grasp_ind=0,
                       side=side, calib=calib)
            for ci, serial in enumerate(SERIALS):
                cam_dir = seq_dir / serial
                cam_dir.mkdir(parents=True)
                K = Ks[serial]
                for f in range(frames_per_sequence):
                    rng = np.random.default_rng([seed, 4, si, q, ci, f])
                    J, centre, radius = sample_frame(rng, K, scale, side == "left")
                    pose_y = np.concatenate([np.eye(3), centre[:, None]], 1)[None]
                    if f == 0:  # the hand has not entered yet: DexYCB labels such frames -1
                        render(K, None, centre, radius, rng).save(cam_dir / f"color_{f:06d}.jpg", quality=90)
                        write_labels(cam_dir / f"labels_{f:06d}.npz", None, None, pose_y,
                                     sphere_radius=np.array([radius], np.float32))
                    else:
                        render(K, J, centre, radius, rng).save(cam_dir / f"color_{f:06d}.jpg", quality=90)
                        write_labels(cam_dir / f"labels_{f:06d}.npz", J, project(K, J), pose_y,
                                     sphere_radius=np.array([radius], np.float32))
                    n += 1
        log(f"  subject {si + 1}/10 written ({n} frames)")
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(root)
    return root


def default_cache_dir() -> Path:
    if os.environ.get("AMT_CACHE"):
        return Path(os.environ["AMT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "amt"


def ensure_synthetic(sequences_per_subject: int, frames_per_sequence: int, seed: int, log=print) -> Path:
    """The default dataset in the cache, generated on first use."""
    root = default_cache_dir() / f"synthetic_dexycb_q{sequences_per_subject}_f{frames_per_sequence}_s{seed}"
    if not (root / "calibration").is_dir():
        log(f"generating the synthetic DexYCB-layout dataset into {root} (first use)")
        try:
            make_synthetic(root, sequences_per_subject=sequences_per_subject, frames_per_sequence=frames_per_sequence,
                           seed=seed, overwrite=True, log=log)
        except OSError:
            if not (root / "calibration").is_dir():  # a concurrent first run may have won the rename
                raise
    return root
