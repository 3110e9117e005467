"""`worldmodel rollout --actions FILE.csv`: drive the model with per-step actions from a file.

The file has a header row naming the dataset's action channels (``index.json``'s ``action_names``, any order,
each exactly once) and one row per rollout step, in the channels' physical units (``action_units``), e.g. for
the synthetic and nuScenes sets::

    speed,yaw_rate,accel,curvature
    10.0,0.0,0.0,0.0
    8.0,0.0,-5.0,0.0
    ...

Row k is the control applied between frame k and frame k+1 of the rollout (the first row moves the last context
frame). Each validation window given by ``--num-sequences`` supplies the context frame(s); every one is driven
with the same actions. Output per window: an animated GIF (and an MP4 when PyAV is installed) whose frames show
the context frame, then each predicted frame, with the step's actions written under it and a bar per channel.
"""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from trainkit.errors import UserError

from .data import ProcessedDataset, WindowDataset, collate, finish_output_dir, stage_output_dir
from .evaluate import check_compatible, eval_indices, load_for_inference

SCALE = 6           # frames are upscaled by this (48x27 -> 288x162) so the text panel stays readable
PANEL_LINE = 12     # px per text line under the frame


def read_action_csv(path: str | Path, names: list[str]) -> np.ndarray:
    """Per-step actions [steps, len(names)] in the file's (physical) units, columns reordered to ``names``.
    Bad header, row or value: a one-line UserError naming the file, the line and what was expected."""
    path = Path(path)
    flag = f"--actions {path}"
    if not path.is_file():
        raise UserError("action file not found", flag, "a CSV file with a header row of action channel names")
    try:
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"unreadable: {err}", flag, "a UTF-8 CSV file") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise UserError("empty file", flag, f"a header row {','.join(names)} and one row per step")
    header = [h.strip() for h in rows[0]]
    unknown = [h for h in header if h not in names]
    missing = [n for n in names if n not in header]
    dup = sorted({h for h in header if header.count(h) > 1})
    if unknown or missing or dup:
        what = "; ".join(part for part in (f"unknown column(s) {', '.join(unknown)}" if unknown else "",
                                           f"missing {', '.join(missing)}" if missing else "",
                                           f"repeated {', '.join(dup)}" if dup else "") if part)
        raise UserError(f"header: {what}", f"{flag} line 1",
                        f"the dataset's action channels, each once: {','.join(names)}")
    if len(rows) < 2:
        raise UserError("no action rows after the header", flag, "one row per rollout step")
    order = [header.index(n) for n in names]
    out = np.empty((len(rows) - 1, len(names)), np.float32)
    for k, row in enumerate(rows[1:]):
        line = f"{flag} line {k + 2}"
        if len(row) != len(header):
            raise UserError(f"{len(row)} values for {len(header)} columns", line,
                            f"{len(header)} comma-separated numbers")
        for j, col in enumerate(order):
            try:
                value = float(row[col])
            except ValueError:
                raise UserError(f"{names[j]}={row[col].strip()!r} is not a number", line, "a finite number") from None
            if not math.isfinite(value):
                raise UserError(f"{names[j]}={value}", line, "a finite number")
            out[k, j] = value
    return out


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] -> HWC uint8."""
    return (x.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=10)
    except TypeError:   # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def annotate(frame: np.ndarray, title: str, values: np.ndarray | None, names: list[str], units: list[str],
             ranges: np.ndarray) -> np.ndarray:
    """frame HWC uint8 -> upscaled frame with a panel below: the title, then per channel its value, unit and a
    bar (centred at 0; full width = the largest |value| of that channel in the action file)."""
    from PIL import Image, ImageDraw

    big = np.repeat(np.repeat(frame, SCALE, 0), SCALE, 1)
    h, w = big.shape[:2]
    panel_h = PANEL_LINE * (len(names) + 1) + 4
    img = Image.new("RGB", (w, h + panel_h), (20, 20, 20))
    img.paste(Image.fromarray(big), (0, 0))
    draw, font = ImageDraw.Draw(img), _font()
    draw.text((3, h + 1), title, fill=(255, 255, 255), font=font)
    if values is not None:
        bar_x0, bar_w = int(w * 0.62), int(w * 0.36)
        mid = bar_x0 + bar_w // 2
        for j, (name, unit) in enumerate(zip(names, units)):
            y = h + 1 + PANEL_LINE * (j + 1)
            draw.text((3, y), f"{name} {values[j]:+.3g} {unit}", fill=(230, 230, 120), font=font)
            frac = float(values[j]) / ranges[j] if ranges[j] > 0 else 0.0
            end = int(mid + frac * bar_w / 2)
            draw.rectangle([bar_x0, y + 3, bar_x0 + bar_w, y + PANEL_LINE - 3], outline=(90, 90, 90))
            draw.rectangle([min(mid, end), y + 3, max(mid, end), y + PANEL_LINE - 3],
                           fill=(90, 200, 90) if frac >= 0 else (220, 80, 80))
    return np.asarray(img)


def write_video(frames: list[np.ndarray], path_stem: Path, fps: float, log=None) -> list[Path]:
    """Always a GIF; also an MP4 (H.264) when PyAV is importable (a declared dependency; a GIF alone if an environment lacks it)."""
    import imageio.v2 as imageio

    gif = path_stem.with_suffix(".gif")
    imageio.mimsave(gif, frames, duration=1.0 / fps, loop=0)
    written = [gif]
    try:
        import av  # noqa: F401
        import imageio.v3 as iio
    except ImportError:
        if log:
            log("PyAV is not installed: wrote the GIF only (pip install av for MP4)")
        return written
    # H.264 wants even sides: pad by a row/column of the panel colour where needed
    h, w = frames[0].shape[:2]
    ph, pw = h % 2, w % 2
    padded = [np.pad(f, ((0, ph), (0, pw), (0, 0)), constant_values=20) for f in frames]
    mp4 = path_stem.with_suffix(".mp4")
    iio.imwrite(mp4, np.stack(padded), plugin="pyav", codec="libx264", fps=fps)
    return written + [mp4]


@torch.no_grad()
def drive(checkpoint: str, data_root: str, out: str, actions_file: str, *, num_sequences: int, horizon: int | None,
          device, overwrite: bool, reference_every: int | None = None, fps: float = 5.0, log=None) -> list[Path]:
    if num_sequences < 1:
        raise UserError(f"num-sequences={num_sequences}", "--num-sequences", "a positive integer")
    model, cfg, extra = load_for_inference(checkpoint, device)
    data = ProcessedDataset(data_root)
    check_compatible(data, extra, f"--data-root {data_root}")
    names, units = list(data.index["action_names"]), list(data.index["action_units"])
    physical = read_action_csv(actions_file, names)
    H = len(physical)
    if horizon is not None and horizon != H:
        raise UserError(f"horizon={horizon} but {actions_file} has {H} action rows", "--horizon",
                        "the number of rows of --actions (or leave --horizon out)")
    C = cfg.eval.context_frames
    windows = WindowDataset(data, "val", C, cfg.data.frame_skip, 1)   # context frames only: any scene fits
    idx = eval_indices(len(windows), num_sequences)
    out_dir = stage_output_dir(out, overwrite)  # written beside --out, swapped in at the end (audit A9)
    try:
        normed = torch.from_numpy(data.normalise(physical).astype(np.float32)).to(device)
        ranges = np.abs(physical).max(0)
        written = []
        for i in idx:
            item = collate([windows[i]])
            frames = item["frames"].to(device)
            # the context keeps its own observed actions (positions 0..C-2); the file drives positions C-1 onward
            acts = torch.cat([item["actions"].to(device)[:, :C - 1], normed[None]], 1)
            pred = model.rollout(frames, acts, H, reference_every)[0]
            video = [annotate(_to_uint8(frames[0, -1]), "context (observed)", None, names, units, ranges)]
            for k in range(H):
                video.append(annotate(_to_uint8(pred[k]), f"step {k + 1}/{H} (model)", physical[k], names, units, ranges))
            name = f"{windows.scene_names[i]}_w{i:05d}_drive"
            written += write_video(video, out_dir / name, fps, log)
        (out_dir / "README.txt").write_text(
            f"open-loop rollouts driven by {actions_file} ({H} steps; columns {','.join(names)} in "
            f"{','.join(units)}); first frame: the last observed context frame; reference_every: "
            f"{reference_every if reference_every is not None else 'checkpoint default'}; checkpoint: {checkpoint}\n")
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)  # the previous output stays as it was
        raise
    return finish_output_dir(out_dir, out, written)


__all__ = ["read_action_csv", "drive", "annotate", "write_video"]
