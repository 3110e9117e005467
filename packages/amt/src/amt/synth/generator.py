"""Generator 3: hands that look like hands, in the DexYCB layout ``amt.data`` reads.

Per subject: a hand size and a skin tone, and a rig of 8 cameras around a table (its extrinsics written as
DexYCB's ``calibration/extrinsics_<name>/extrinsics.yml``, camera-to-world 3x4, and named in ``meta.yml``).
Per frame: one hand (the kinematic hand of ``amt.synthetic``, within its joint limits and grasp taxonomy, made an
anatomical right hand, or left for left sequences) and its grasped sphere, placed once in world coordinates and
seen by all 8 cameras, so the 8 views of a frame share the same 3-D joints (each camera's labels are the same
world joints in its own frame). Each view is rendered by :mod:`amt.synth.render` over a real photograph
(:mod:`amt.synth.backgrounds`), lit by the frame's one light. Frame 0 of a sequence shows no hand and is
labelled -1, as in DexYCB.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageFilter

from ..data import IMAGE_H, IMAGE_W, SERIALS, SUBJECTS, project, write_intrinsics, write_labels, write_meta
from ..synthetic import (_background, _fine_noise, _look, _rz, camera_intrinsics, finish_output, hand_joints,
                         place_sphere, start_output, write_mano_scale)
from .backgrounds import photo_background, photo_pool
from .render import SKIN_TONES, hand_spheres, projected_box, raycast

GENERATOR_VERSION = 3
MARGIN_PX = 4  # every joint of every view lies at least this far inside the 640x480 image


def camera_rig(rng: np.random.Generator, n: int = len(SERIALS)) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` cameras on a ring around the work space above a table (world z up, table at z = 0): azimuth spread
    evenly with jitter, elevation 20-65 deg, 0.6-0.9 m from the target. Returns world-to-camera (R, t)."""
    base = rng.uniform(0, 2 * math.pi)
    rig = []
    for i in range(n):
        az = base + 2 * math.pi * i / n + rng.normal(0, 0.12)
        el = math.radians(rng.uniform(20, 65))
        dist = rng.uniform(0.6, 0.9)
        target = np.array([0.0, 0.0, 0.12]) + rng.normal(0, 0.02, 3)
        pos = target + dist * np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
        R = _rz(math.radians(rng.normal(0, 5))) @ _look(target - pos, np.array([0.0, 0.0, 1.0]))
        rig.append((R, -R @ pos))
    return rig


def hand_to_world(rng: np.random.Generator) -> np.ndarray:
    """Rotation of the hand's local frame (fingers +y, palm -z) into the world: fingers roughly horizontal
    (elevation -25..50 deg, any heading), the palm rolled from facing the table to facing sideways, sometimes up."""
    heading, elev = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(-25, 50))
    d = np.array([math.cos(heading) * math.cos(elev), math.sin(heading) * math.cos(elev), math.sin(elev)])
    down = np.array([0.0, 0.0, -1.0]) - d * (-d[2])
    down /= np.linalg.norm(down)
    roll = math.radians(rng.uniform(-100, 100) if rng.random() < 0.85 else rng.uniform(100, 260))
    n = math.cos(roll) * down + math.sin(roll) * np.cross(d, down)
    z_local = -n
    return np.stack([np.cross(d, z_local), d, z_local], axis=1)


def in_view(K: np.ndarray, Jc: np.ndarray) -> bool:
    if Jc[:, 2].min() <= 0.2:
        return False
    uv = project(K, Jc)
    return bool((uv >= MARGIN_PX).all() and (uv[:, 0] < IMAGE_W - MARGIN_PX).all()
                and (uv[:, 1] < IMAGE_H - MARGIN_PX).all())


def sample_world_hand(rng: np.random.Generator, scale: float, left: bool, Ks: list[np.ndarray],
                      rig: list[tuple[np.ndarray, np.ndarray]]):
    """One hand and its sphere in world coordinates, in view of every camera: (J [21,3], centre [3], radius)."""
    for _ in range(200):
        J = hand_joints(rng, scale * (1 + rng.uniform(-0.02, 0.02)))
        centre, radius = place_sphere(J, rng)
        if not left:  # hand_joints builds an anatomical left hand (thumb +x with the palm facing -z)
            J, centre = J * [-1, 1, 1], centre * [-1, 1, 1]
        H = hand_to_world(rng)
        p = np.array([0.0, 0.0, 0.12]) + rng.normal(0, [0.05, 0.05, 0.03])
        Jw, cw = J @ H.T + p, H @ centre + p
        if all(in_view(K, Jw @ R.T + t) for K, (R, t) in zip(Ks, rig)):
            return Jw, cw, radius
    raise RuntimeError("could not place a hand in view of all cameras")  # not reachable with these ranges


def skin_tone(rng: np.random.Generator) -> np.ndarray:
    i = rng.uniform(0, len(SKIN_TONES) - 1)
    lo = int(i)
    tone = SKIN_TONES[lo] * (1 - (i - lo)) + SKIN_TONES[min(lo + 1, len(SKIN_TONES) - 1)] * (i - lo)
    return np.clip(tone * rng.uniform(0.95, 1.05, 3), 0, 255) / 255.0


def _lowfreq(rng: np.random.Generator, h: int, w: int, amp: float) -> np.ndarray:
    g = rng.normal(0, 1, (4, 4)).astype(np.float32)
    im = Image.fromarray(((g - g.min()) / (np.ptp(g) + 1e-6) * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    return 1 + amp * (np.asarray(im, np.float32) / 127.5 - 1)


def render_view(K: np.ndarray, R: np.ndarray, t: np.ndarray, Jw: np.ndarray | None, cw: np.ndarray, radius: float,
                skin: np.ndarray, obj_colours: np.ndarray, obj_axis_w: np.ndarray, light_w: np.ndarray,
                ambient: float, rng: np.random.Generator, scale: float = 1.0) -> Image.Image:
    """One camera's 640x480 view of a world-frame hand (or None) and sphere."""
    bg = photo_background(rng, IMAGE_W, IMAGE_H)
    img = np.array(_background(rng)) if bg is None else bg.copy()  # uint8; only the hand/object boxes are shaded
    light = R @ light_w
    # hand (soft-min skin) and object (one sphere) are cast separately, then merged by depth
    layers = []
    cc = R @ cw + t
    obox = projected_box(K, cc[None], np.array([radius]), IMAGE_W, IMAGE_H)
    od, oi, on = raycast(K, cc[None], np.array([radius]), obox)
    layers.append(("object", obox, od, on))
    if Jw is not None:
        C, rad, _ = hand_spheres(Jw @ R.T + t, scale)
        hbox = projected_box(K, C, rad, IMAGE_W, IMAGE_H)
        hd, hi, hn = raycast(K, C, rad, hbox)
        layers.append(("hand", hbox, hd, hn))
    zbuf = np.full((IMAGE_H, IMAGE_W), np.inf, np.float32)
    for kind, (x0, y0, x1, y1), d, n in layers:
        if x1 <= x0 or y1 <= y0:
            continue
        sl = (slice(y0, y1), slice(x0, x1))
        front = d < zbuf[sl]
        if not front.any():
            continue
        lam = np.clip(n @ light, 0, None)
        if kind == "hand":
            albedo = skin[None, None] * _lowfreq(rng, y1 - y0, x1 - x0, 0.08)[..., None]
            rgb = albedo * (ambient + (1 - ambient) * lam[..., None])
            rgb += 0.06 * np.clip(n @ ((light + np.array([0, 0, -1.0])) / 2), 0, None)[..., None] ** 12
        else:  # banded ball: two colours by latitude about an axis fixed in the world (same in all views)
            band = (np.sin(9 * np.arcsin(np.clip(n @ (R @ obj_axis_w), -1, 1))) > 0)[..., None]
            albedo = np.where(band, obj_colours[0], obj_colours[1])
            half = light + np.array([0, 0, -1.0])
            half /= np.linalg.norm(half)
            rgb = albedo * (ambient + (1 - ambient) * lam[..., None]) + 0.35 * np.clip(n @ half, 0, None)[..., None] ** 30
        region = img[sl]
        region[front] = np.clip(rgb[front] * 255, 0, 255)
        zbuf[sl][front] = d[front]
    hit = np.isfinite(zbuf)
    im = Image.fromarray(img)
    if hit.any():  # soften the aliased silhouettes (the camera's optics would)
        ys, xs = np.nonzero(hit)
        box = (max(0, xs.min() - 3), max(0, ys.min() - 3), min(IMAGE_W, xs.max() + 4), min(IMAGE_H, ys.max() + 4))
        im.paste(im.crop(box).filter(ImageFilter.GaussianBlur(0.6)), box[:2])
    arr = np.asarray(im, dtype=np.int16) + _fine_noise(rng) // 2
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_extrinsics(root: Path, name: str, rig: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """DexYCB's extrinsics file: per serial the camera-to-world transform, 3x4 row-major."""
    ext = {}
    for serial, (R, t) in zip(SERIALS, rig):
        T = np.concatenate([R.T, (-R.T @ t)[:, None]], 1)
        ext[serial] = [float(x) for x in T.ravel()]
    path = root / "calibration" / f"extrinsics_{name}" / "extrinsics.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"extrinsics": ext}))


def read_extrinsics(root: Path, seq_dir: Path) -> dict[str, np.ndarray]:
    """Per serial the world-to-camera 3x4 [R|t] of a sequence written by this generator."""
    meta = yaml.safe_load((seq_dir / "meta.yml").read_text())
    ext = yaml.safe_load((root / "calibration" / f"extrinsics_{meta['extrinsics']}" / "extrinsics.yml").read_text())
    out = {}
    for s, v in ext["extrinsics"].items():
        T = np.array(v, dtype=np.float64).reshape(3, 4)
        R = T[:, :3].T
        out[s] = np.concatenate([R, (-R @ T[:, 3])[:, None]], 1)
    return out


def make_synthetic_v3(root: str | Path, *, sequences_per_subject: int = 5, frames_per_sequence: int = 8, seed: int = 0,
                      left_fraction: float = 0.3, overwrite: bool = False, keep_complete: bool = False,
                      subjects: int = len(SUBJECTS), log=print) -> Path:
    """Write generator 3's dataset (``subjects`` x ``sequences_per_subject`` x 8 cameras x ``frames_per_sequence``),
    built in a temporary folder beside ``root`` and renamed into place (as ``amt.synthetic.make_synthetic``)."""
    root = Path(root)
    tmp = start_output(root, sequences_per_subject, frames_per_sequence, overwrite, keep_complete)
    if not photo_pool():
        log("WARNING: scikit-image's bundled photographs are not available; generator 3 falls back to procedural "
            "backgrounds (install scikit-image for photographic backgrounds)")
    cam_rng = np.random.default_rng([seed, 1])
    Ks = {s: camera_intrinsics(cam_rng) for s in SERIALS}
    for s, K in Ks.items():
        write_intrinsics(tmp, s, K)
    n = 0
    for si, subject in enumerate(SUBJECTS[:subjects]):
        srng = np.random.default_rng([seed, 2, si])
        scale = srng.uniform(0.9, 1.1)  # the subject's hand size (MANO betas in DexYCB)
        skin = skin_tone(srng)
        rig = camera_rig(srng)
        calib = f"{si:02d}_synthetic"
        write_extrinsics(tmp, calib, rig)
        write_mano_scale(tmp, calib, scale)
        for q in range(sequences_per_subject):
            qrng = np.random.default_rng([seed, 3, si, q])
            side = "left" if qrng.random() < left_fraction else "right"
            ycb_id = int(qrng.integers(1, 22))
            obj_colours = qrng.uniform(0.15, 0.95, (2, 3))
            obj_axis = qrng.normal(0, 1, 3)
            obj_axis /= np.linalg.norm(obj_axis)
            seq_dir = tmp / subject / f"2020{si + 1:02d}01_{q:06d}"
            write_meta(seq_dir, serials=SERIALS, num_frames=frames_per_sequence, ycb_ids=[ycb_id], grasp_ind=0,
                       side=side, calib=calib)
            meta = yaml.safe_load((seq_dir / "meta.yml").read_text())
            meta["extrinsics"] = calib
            (seq_dir / "meta.yml").write_text(yaml.safe_dump(meta))
            for serial in SERIALS:
                (seq_dir / serial).mkdir(parents=True)
            for f in range(frames_per_sequence):
                frng = np.random.default_rng([seed, 4, si, q, f])
                Ks_list = [Ks[s] for s in SERIALS]
                Jw, cw, radius = sample_world_hand(frng, scale, side == "left", Ks_list, rig)
                el, az = math.radians(frng.uniform(35, 85)), frng.uniform(0, 2 * math.pi)  # the light, from above
                light_w = np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
                ambient = frng.uniform(0.3, 0.5)
                for ci, serial in enumerate(SERIALS):
                    R, t = rig[ci]
                    K = Ks[serial]
                    vrng = np.random.default_rng([seed, 5, si, q, f, ci])
                    Jc, cc = Jw @ R.T + t, R @ cw + t
                    pose_y = np.concatenate([np.eye(3), cc[:, None]], 1)[None]
                    cam_dir = seq_dir / serial
                    hand = None if f == 0 else Jw  # frame 0: the hand has not entered yet (labelled -1)
                    render_view(K, R, t, hand, cw, radius, skin, obj_colours, obj_axis, light_w, ambient, vrng,
                                scale).save(cam_dir / f"color_{f:06d}.jpg", quality=90)
                    write_labels(cam_dir / f"labels_{f:06d}.npz", None if f == 0 else Jc,
                                 None if f == 0 else project(K, Jc), pose_y,
                                 sphere_radius=np.array([radius], np.float32))
                    n += 1
        log(f"  subject {si + 1}/{subjects} written ({n} frames)")
    if keep_complete and (root / "calibration").is_dir():  # another process finished the same dataset first
        shutil.rmtree(tmp)
        return root
    return finish_output(tmp, root)
