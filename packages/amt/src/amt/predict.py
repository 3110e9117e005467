"""`amt predict`: a trained model on a folder of unlabelled hand crops -> joints JSON + overlay PNGs.

Each image is one hand crop. With no labels there is no joint box to crop around, so the whole image is the
crop (padded to a square about its centre, resized to the model's input size, by the same affine geometry as
training: ``data.crop_transform``). The camera comes from ``--fov`` (horizontal field of view, principal point at
the image centre, square pixels) or ``--intrinsics`` (a JSON file: {"fx", "fy", "cx", "cy"} or a 3x3 list for
every image, or {"<file name>": either} per image). Outputs camera-frame joints in mm (absolute: the model's
root depth; root-relative: what it learned best) and their projections in image pixels.
Models were trained on 1.5x joint-box crops: crops framed much tighter or looser than that are out of
distribution, which is why `evaluate` on labelled data remains the way to judge a model.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from trainkit.device import autocast, resolve_device
from trainkit.errors import UserError

from .data import BONES, IMAGENET_MEAN, IMAGENET_STD, JOINT_NAMES, crop_transform, warp_image
from .evaluate import load_for_inference, model_right_sign, training_canonical_hand

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
FINGER_RGB = [(230, 60, 50), (60, 200, 70), (60, 110, 235), (235, 215, 50), (210, 70, 210)]


def _K_from(value, where: str) -> np.ndarray:
    try:
        if isinstance(value, dict):
            K = np.array([[float(value["fx"]), 0, float(value["cx"])], [0, float(value["fy"]), float(value["cy"])], [0, 0, 1]])
        else:
            K = np.asarray(value, dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise UserError("intrinsics entry is not usable", where, '{"fx", "fy", "cx", "cy"} or a 3x3 list') from None
    if K.shape != (3, 3) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise UserError(f"intrinsics entry has shape {K.shape}", where, "a 3x3 matrix with positive fx, fy")
    return K


def intrinsics_for(files: list[Path], fov: float | None, intrinsics: str | None) -> list[np.ndarray]:
    if (fov is None) == (intrinsics is None):
        raise UserError("give exactly one camera description", "--fov / --intrinsics",
                        "--fov DEGREES (horizontal) or --intrinsics FILE.json")
    if fov is not None:
        if not 1.0 <= fov <= 179.0:
            raise UserError(f"fov={fov}", "--fov", "a horizontal field of view in degrees, 1..179")
        out = []
        for f in files:
            with Image.open(f) as im:
                W, H = im.size
            fx = (W / 2) / math.tan(math.radians(fov) / 2)
            out.append(np.array([[fx, 0, (W - 1) / 2], [0, fx, (H - 1) / 2], [0, 0, 1]]))
        return out
    path = Path(intrinsics)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError("missing intrinsics file", str(path), "a JSON file") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError("intrinsics file is not valid JSON", str(path), str(err).splitlines()[0]) from None
    if isinstance(data, dict) and not {"fx", "fy", "cx", "cy"} <= set(data):
        missing = [f.name for f in files if f.name not in data]
        if missing:
            raise UserError(f"no intrinsics for {missing[0]} ({len(missing)} images lack them)", str(path),
                            'one entry per image name, or a single {"fx", "fy", "cx", "cy"} for all')
        return [_K_from(data[f.name], f"{path} [{f.name}]") for f in files]
    K = _K_from(data, str(path))
    return [K] * len(files)


def whole_image_sample(image: Image.Image, K: np.ndarray, size: int, mirror: bool):
    """(normalised [3,S,S] tensor, T, K_crop, M) for the whole image as the crop (square about its centre)."""
    W, H = image.size
    corners = np.array([[0, 0, 1], [W - 1, 0, 1], [0, H - 1, 1], [W - 1, H - 1, 1]], dtype=np.float64)
    rays = corners @ np.linalg.inv(K).T  # points at depth 1 whose projections are the image corners
    T, Kc, M = crop_transform(K, rays, size, crop_scale=1.0, mirror=mirror)
    crop = warp_image(image.convert("RGB"), M, size)
    img = (np.asarray(crop, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), T, Kc, M


def draw_overlay(image: Image.Image, uv: np.ndarray) -> Image.Image:
    out = image.convert("RGB").copy()
    d = ImageDraw.Draw(out)
    w = max(1, round(max(out.size) / 150))
    for i, (a, b) in enumerate(BONES):
        d.line([tuple(uv[a]), tuple(uv[b])], fill=FINGER_RGB[i // 4], width=w)
    for u, v in uv:
        d.ellipse([u - w, v - w, u + w, v + w], fill=(255, 255, 255), outline=(0, 0, 0))
    return out


@torch.no_grad()
def predict_folder(checkpoint: str, images: str, out: str, *, fov: float | None = None, intrinsics: str | None = None,
                   hand: str = "right", device: str = "auto", log=print) -> Path:
    folder, out_dir = Path(images), Path(out)
    if not folder.is_dir():
        raise UserError("not a folder", str(folder), "--images DIR holding JPEG/PNG hand crops")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError("no images in the folder", str(folder), f"files ending in {', '.join(IMAGE_SUFFIXES)}")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError("not a folder", str(out_dir), "--out DIR (created if missing)")
    if hand not in ("right", "left"):
        raise UserError(f"hand={hand!r}", "--hand", "right or left (anatomical)")
    Ks = intrinsics_for(files, fov, intrinsics)
    dev = resolve_device(device)
    model, cfg, extra = load_for_inference(checkpoint, dev, log=log)
    # mirror when the anatomical hand differs from the chirality the model was trained on
    right_sign = model_right_sign(training_canonical_hand(cfg, extra, log)[0])
    mirror = (hand == "right") != (right_sign > 0)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    records = []
    for f, K in zip(files, Ks):
        try:
            with Image.open(f) as im:
                im.load()
                image = im.convert("RGB")
        except (OSError, SyntaxError, ValueError) as err:
            raise UserError("unreadable image", str(f), f"a JPEG/PNG ({type(err).__name__})") from None
        x, T, Kc, _ = whole_image_sample(image, K, cfg.data.image_size, mirror)
        with autocast(dev, cfg.precision):
            o = model(x[None].to(dev), torch.as_tensor(Kc, dtype=torch.float32)[None].to(dev))
        rel = (o["refined"][-1] if o["refined"] else o["joints_rel"]).float()[0].cpu().double().numpy()
        root = o["root"].float()[0].cpu().double().numpy()
        J = (rel + root) @ T  # sample frame -> camera frame (T orthogonal)
        p = J @ K.T
        uv = p[:, :2] / np.maximum(p[:, 2:3], 1e-6)
        draw_overlay(image, uv).save(out_dir / "overlays" / f"{f.stem}.png")
        records.append({"file": f.name, "K": K.tolist(), "joints_3d_mm": np.round(J * 1000, 3).tolist(),
                        "joints_3d_root_relative_mm": np.round((J - J[0]) * 1000, 3).tolist(),
                        "joints_2d_px": np.round(uv, 2).tolist()})
    doc = {"checkpoint": str(checkpoint), "hand": hand, "mirrored_for_model": bool(mirror), "units": "mm",
           "frame": "camera (x right, y down, z forward)", "joint_names": JOINT_NAMES, "images": records}
    path = out_dir / "joints.json"
    tmp = path.with_name(".joints.json.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    log(f"{len(records)} images -> {path} and {out_dir / 'overlays'}/")
    return path
