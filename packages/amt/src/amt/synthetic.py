"""The embedded default dataset: a kinematic 21-joint hand rendered to RGB, written in the DexYCB layout.

Skeleton: the toolkit's joint order; bone lengths from Buryanov & Kotiuk (2010) X-ray proportions (mm:
metacarpal, proximal, middle, distal+soft tip); joint limits of a human-mimicking hand (finger MCP flexion
-15..90 deg, abduction +-20, PIP 0..100, DIP ~ 2/3 PIP; thumb CMC palmar abduction 0..70 and opposition 0..60,
MCP -15..40, IP -15..90). Shape varies per subject (global scale, like MANO betas) and per sample (bone jitter).
Each camera frame gets its own articulation from a grasp taxonomy (open, relaxed, power, precision, pinch,
point, fist, free fingers; MCP/PIP/DIP flexion coupled, fingers adducting as they flex, thumb opposition with the
grasp), a hand orientation over a table seen by a camera around it (:func:`table_view_rotation`), depth
0.4-1.0 m and a position that keeps the hand in the 640x480 image, a sphere object held near the fingertips
(never penetrated by the ground-truth joints, so the physics term has an exact surface), drawn with depth
ordering over noisy cluttered backgrounds. Frame 0 of every sequence shows no hand and is labelled -1, as
DexYCB does, so readers must drop it. Left-hand sequences are mirrored hands.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from trainkit.errors import UserError
from trainkit.runsafety import check_replaceable, swap_in, write_output_marker

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
# Bumped whenever the generator changes what it draws, so a cached dataset from an older generator is not reused.
GENERATOR_VERSION = 2
FINGER_FIRST_JOINT = {"thumb": 1, "index": 5, "middle": 9, "ring": 13, "little": 17}
FINGER_COLOURS = {"thumb": (230, 60, 50), "index": (60, 200, 70), "middle": (60, 110, 235),
                  "ring": (235, 215, 50), "little": (210, 70, 210)}
PALM_COLOUR = (205, 160, 130)
PHALANX_TONE = (0.75, 0.9, 1.05, 1.2)  # brightness of the metacarpal, proximal, middle, distal segment


def _rx(t):
    c, s = math.cos(t), math.sin(t)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(t):
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(t):
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


# Grasp taxonomy the articulation is drawn from (probabilities): DexYCB frames show a hand approaching (open,
# relaxed), grasping (power / precision / pinch), or holding; "point" and "free" (independent fingers) add poses
# no single closure parameter can reach.
POSE_TYPES = {"open": 0.15, "relaxed": 0.15, "power": 0.2, "precision": 0.15, "pinch": 0.1, "point": 0.08,
              "fist": 0.07, "free": 0.1}
FINGERS = ("index", "middle", "ring", "little")


def _finger_flexion(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, float, float, float]:
    """Per-finger flexion levels in [0, 1] (index, middle, ring, little), finger spread in [-0.3, 1], thumb
    opposition and thumb flexion in [0, 1] for one pose type."""
    u = rng.uniform
    if kind == "open":
        f, spread, opp, tflex = u(0.0, 0.12, 4), u(0.3, 1.0), u(0.0, 0.3), u(0.0, 0.2)
    elif kind == "relaxed":
        g = u(0.15, 0.4)
        f, spread, opp, tflex = g + np.array([0.0, 0.05, 0.1, 0.15]) + rng.normal(0, 0.05, 4), u(0.0, 0.5), u(0.2, 0.5), u(0.1, 0.4)
    elif kind == "power":  # wrap around a cylinder: fingers flex together, thumb opposed and wrapped
        g = u(0.45, 0.85)
        f, spread, opp, tflex = g + rng.normal(0, 0.07, 4), u(-0.3, 0.2), u(0.6, 1.0), u(0.4, 0.8)
    elif kind == "precision":  # fingertips on a ball/box: moderate flexion, fingers spread, thumb opposed
        f, spread, opp, tflex = u(0.25, 0.55, 4), u(0.2, 0.9), u(0.6, 1.0), u(0.2, 0.5)
    elif kind == "pinch":  # thumb and index (and middle) meet; the rest free
        f = np.concatenate([u(0.35, 0.6, 2), u(0.0, 0.9, 1).repeat(2) + rng.normal(0, 0.08, 2)])
        spread, opp, tflex = u(-0.2, 0.5), u(0.7, 1.0), u(0.3, 0.6)
    elif kind == "point":
        f = np.concatenate([u(0.0, 0.15, 1), u(0.75, 1.0, 3)])
        spread, opp, tflex = u(-0.3, 0.3), u(0.3, 0.8), u(0.4, 0.9)
    elif kind == "fist":
        f, spread, opp, tflex = u(0.85, 1.0, 4), u(-0.3, 0.0), u(0.5, 1.0), u(0.6, 1.0)
    else:  # free: independent fingers, ring and little coupled to their neighbour as real tendons couple them
        f = u(0, 1, 4)
        f[2] = 0.5 * f[1] + 0.5 * f[2]
        f[3] = 0.6 * f[2] + 0.4 * f[3]
        spread, opp, tflex = u(-0.3, 1.0), u(0.0, 1.0), u(0.0, 1.0)
    return np.clip(f, 0.0, 1.0), float(spread), float(opp), float(tflex)


def hand_joints(rng: np.random.Generator, scale: float = 1.0, kind: str | None = None) -> np.ndarray:
    """Forward kinematics of a right hand in its local frame (wrist at 0, fingers along +y, palm facing -z,
    thumb on the +x side), articulated by a pose type drawn from :data:`POSE_TYPES` (or ``kind``).

    Joint limits (degrees): finger MCP flexion -15..90 and abduction +-20, PIP 0..90 (plus 0..10 past the
    human-hand-like limit for fists), DIP coupled to 2/3 PIP (+-5), all flexing towards the palm; thumb CMC
    palmar abduction 0..70 with opposition (rotation of the metacarpal about its axis, 0..60), thumb MCP
    -15..40 and IP -15..90. Returns [21,3] metres.
    """
    J = np.zeros((21, 3))
    jitter = lambda: scale * (1 + rng.uniform(-0.03, 0.03))  # noqa: E731 - per-bone shape variation
    if kind is None:
        kind = str(rng.choice(list(POSE_TYPES), p=list(POSE_TYPES.values())))
    flex, spread, opp, tflex = _finger_flexion(rng, kind)
    deg = math.radians
    splay = {"index": 15.0, "middle": 0.0, "ring": -10.0, "little": -20.0}  # abduction at full spread
    for i, (name, lengths) in enumerate(FINGER_BONES.items()):
        k, f = FINGER_FIRST_JOINT[name], flex[i]
        R = _rz(deg(-FINGER_BASE_DEG[name]))  # splay in the palm plane towards the thumb side (+x) for the index
        J[k] = R @ np.array([0, lengths[0] * jitter(), 0])
        flex_mcp = np.clip(deg(-12 + 100 * f) + rng.normal(0, deg(6)), deg(-15), deg(90))
        abd = np.clip(deg(splay[name] * spread * (1 - 0.8 * f)) + rng.normal(0, deg(3)), deg(-20), deg(20))
        flex_pip = np.clip(deg(100 * f) + rng.normal(0, deg(8)), 0, deg(100))
        flex_dip = np.clip(flex_pip * 2 / 3 + rng.normal(0, deg(5)), 0, deg(90))
        R = R @ _rz(-abd) @ _rx(-flex_mcp)
        J[k + 1] = J[k] + R @ np.array([0, lengths[1] * jitter(), 0])
        R = R @ _rx(-flex_pip)
        J[k + 2] = J[k + 1] + R @ np.array([0, lengths[2] * jitter(), 0])
        R = R @ _rx(-flex_dip)
        J[k + 3] = J[k + 2] + R @ np.array([0, lengths[3] * jitter(), 0])
    # Thumb: CMC a short offset from the wrist; palmar abduction lifts the metacarpal in front of the palm (-z),
    # opposition turns it about its own axis so that flexing the MCP and IP brings the tip across the palm.
    R = _rz(deg(-50))
    J[1] = R @ np.array([0, THUMB_BONES[0] * jitter(), 0])
    palmar = np.clip(deg(10 + 55 * opp) + rng.normal(0, deg(6)), 0, deg(70))
    radial = deg(rng.uniform(-10, 20) * (1 - opp))  # spreads away from the index in the palm plane
    pronation = np.clip(deg(60 * opp) + rng.normal(0, deg(6)), 0, deg(60))
    R = R @ _rz(-radial) @ _rx(-palmar) @ _ry(pronation)
    J[2] = J[1] + R @ np.array([0, THUMB_BONES[1] * jitter(), 0])
    R = R @ _rx(-np.clip(deg(-10 + 50 * tflex) + rng.normal(0, deg(6)), deg(-15), deg(40)))
    J[3] = J[2] + R @ np.array([0, THUMB_BONES[2] * jitter(), 0])
    R = R @ _rx(-np.clip(deg(-10 + 90 * tflex) + rng.normal(0, deg(8)), deg(-15), deg(90)))
    J[4] = J[3] + R @ np.array([0, THUMB_BONES[3] * jitter(), 0])
    return J


def _look(forward: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Rows (right, down, forward): the world-to-camera rotation of a camera looking along ``forward``."""
    f = forward / np.linalg.norm(forward)
    r = np.cross(f, up)
    r /= np.linalg.norm(r)
    return np.stack([r, np.cross(f, r), f])


def table_view_rotation(rng: np.random.Generator) -> np.ndarray:
    """Hand-local to camera rotation for a hand working over a table seen by cameras around it, as in DexYCB.

    World z is up. The hand's fingers point roughly horizontally (elevation -25..50 deg, any heading), its palm
    turned from facing the table to facing sideways either way (roll -100..100 deg) and sometimes up; the camera
    looks at it from any azimuth at 15..75 deg elevation, with a small roll.
    """
    deg = math.radians
    heading, elev = rng.uniform(0, 2 * math.pi), deg(rng.uniform(-25, 50))
    d = np.array([math.cos(heading) * math.cos(elev), math.sin(heading) * math.cos(elev), math.sin(elev)])
    # palm normal: "down" made orthogonal to the finger direction, then rolled about the finger axis
    down = np.array([0.0, 0.0, -1.0]) - d * (-d[2])
    down /= np.linalg.norm(down)
    roll = deg(rng.uniform(-100, 100)) if rng.random() < 0.85 else deg(rng.uniform(100, 260))
    side = np.cross(d, down)
    n = math.cos(roll) * down + math.sin(roll) * side
    z_local = -n  # the palm faces local -z
    x_local = np.cross(d, z_local)
    hand_to_world = np.stack([x_local, d, z_local], axis=1)
    az, el = rng.uniform(0, 2 * math.pi), deg(rng.uniform(15, 75))
    cam_dir = np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
    world_to_cam = _rz(deg(rng.normal(0, 8))) @ _look(-cam_dir, np.array([0.0, 0.0, 1.0]))
    return world_to_cam @ hand_to_world


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
            finger, k = next((n, k) for n, k in FINGER_FIRST_JOINT.items() if k <= max(a, b) < k + 4)
            z = (J[a, 2] + J[b, 2]) / 2
            width = max(2, int(round(2 * fx * 0.0085 / z)))
            tone = PHALANX_TONE[max(a, b) - k]  # metacarpal darkest, distal phalanx lightest (like nails/knuckles)
            colour = tuple(min(255.0, c * tone) for c in FINGER_COLOURS[finger])
            items.append((z, "bone", (tuple(uv[a]), tuple(uv[b]), width), _shade(colour, z, z_ref)))
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
        R = table_view_rotation(rng)
        z = rng.uniform(0.4, 1.0)
        u, v = rng.uniform(120, IMAGE_W - 120), rng.uniform(100, IMAGE_H - 100)
        t = np.array([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z])
        Jc, cc = J @ R.T + t, R @ centre + t
        uv = project(K, Jc)
        if Jc[:, 2].min() > 0.2 and (uv >= 2).all() and (uv[:, 0] < IMAGE_W - 2).all() and (uv[:, 1] < IMAGE_H - 2).all():
            return Jc, cc, radius
    raise RuntimeError("could not place a hand in view")  # not reachable with these ranges


def start_output(root: Path, sequences_per_subject: int, frames_per_sequence: int, overwrite: bool,
                 keep_complete: bool) -> Path:
    """Both generators' preamble: check the sizes and the target, then make the empty temporary folder beside it.

    An existing non-empty ``root`` is refused unless ``overwrite``, and even then only a folder this tool wrote
    (its marker; never ., ~, / or a cwd ancestor); the cache refresh (``keep_complete``) also knows older caches.
    """
    if sequences_per_subject < 1 or frames_per_sequence < 2:
        raise UserError(f"sequences_per_subject={sequences_per_subject}, frames_per_sequence={frames_per_sequence}",
                        "make-synthetic", "sequences >= 1 and frames >= 2 (frame 0 has no hand)")
    if root.exists() and (not root.is_dir() or any(root.iterdir())) and not overwrite:
        raise UserError("output folder is not empty", str(root), "a new or empty folder, or pass --overwrite")
    check_replaceable(root, flag="--overwrite", legacy_markers=("calibration",) if keep_complete else ())
    tmp = root.with_name(f".{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def finish_output(tmp: Path, root: Path) -> Path:
    """Mark ``tmp`` as this tool's output and swap it in for ``root`` (the old folder goes only afterwards)."""
    write_output_marker(tmp, "amt make-synthetic")
    root.parent.mkdir(parents=True, exist_ok=True)
    swap_in(tmp, root)
    return root


def write_mano_scale(root: Path, calib: str, scale: float) -> None:
    """The subject's hand size as DexYCB's mano.yml (zero betas; both generators write it)."""
    mano = root / "calibration" / f"mano_{calib}" / "mano.yml"
    mano.parent.mkdir(parents=True, exist_ok=True)
    mano.write_text(f"betas: {[0.0] * 10}\nscale: {float(scale)}\n")


def make_synthetic(root: str | Path, *, sequences_per_subject: int = 5, frames_per_sequence: int = 8, seed: int = 0,
                   left_fraction: float = 0.3, overwrite: bool = False, keep_complete: bool = False,
                   log=print) -> Path:
    """Write the dataset (10 subjects x ``sequences_per_subject`` x 8 cameras x ``frames_per_sequence``).

    Built in a temporary folder beside ``root`` and renamed into place, so an interrupted run never leaves a
    half-written dataset; an existing non-empty ``root`` is refused unless ``overwrite`` (then replaced whole).
    """
    root = Path(root)
    tmp = start_output(root, sequences_per_subject, frames_per_sequence, overwrite, keep_complete)
    cam_rng = np.random.default_rng([seed, 1])
    Ks = {s: camera_intrinsics(cam_rng) for s in SERIALS}
    for s, K in Ks.items():
        write_intrinsics(tmp, s, K)
    n = 0
    for si, subject in enumerate(SUBJECTS):
        srng = np.random.default_rng([seed, 2, si])
        scale = srng.uniform(0.9, 1.1)  # the subject's hand size (MANO betas in DexYCB)
        calib = f"{si:02d}_synthetic"
        write_mano_scale(tmp, calib, scale)
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
    if keep_complete and (root / "calibration").is_dir():  # another process finished the same dataset first
        shutil.rmtree(tmp)
        return root
    return finish_output(tmp, root)


def default_cache_dir() -> Path:
    if os.environ.get("AMT_CACHE"):
        return Path(os.environ["AMT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "amt"


def ensure_synthetic(sequences_per_subject: int, frames_per_sequence: int, seed: int, log=print,
                     generator_version: int = GENERATOR_VERSION) -> Path:
    """The default dataset in the cache, generated on first use (``generator_version`` 3: :mod:`amt.synth`)."""
    make = make_synthetic
    if generator_version == 3:
        from .synth.generator import make_synthetic_v3 as make
    elif generator_version != GENERATOR_VERSION:
        raise UserError(f"generator_version={generator_version}", "data.synthetic.generator_version", "2 or 3")
    root = default_cache_dir() / f"synthetic_dexycb_v{generator_version}_q{sequences_per_subject}_f{frames_per_sequence}_s{seed}"
    if not (root / "calibration").is_dir():
        log(f"generating the synthetic DexYCB-layout dataset into {root} (first use)")
        try:
            make(root, sequences_per_subject=sequences_per_subject, frames_per_sequence=frames_per_sequence,
                 seed=seed, overwrite=True, keep_complete=True, log=log)
        except OSError:
            if not (root / "calibration").is_dir():  # a concurrent first run may have won the rename
                raise
    return root
