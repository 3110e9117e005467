"""Validation, `worldmodel evaluate` and `worldmodel rollout`: the model against the copy-last-frame baseline,
open-loop rollout at horizons 1..H, and action sensitivity (true vs foreign actions)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from trainkit.checkpoint import load_checkpoint
from trainkit.config import load_config
from trainkit.device import autocast
from trainkit.errors import UserError
from trainkit.runsafety import raise_if_stopped

from .config import Config, upgrade_saved_config
from .data import ProcessedDataset, WindowDataset, collate, finish_output_dir, stage_output_dir
from .losses import compute_losses
from .metrics import psnr_per_image, ssim_per_image
from .model import WorldModel, to_unit


def build_model(cfg: Config, image_size: tuple[int, int], max_len: int) -> WorldModel:
    m = cfg.model
    try:
        return _build(cfg, m, image_size, max_len)
    except ValueError as err:
        key = "model.decoder.stages" if str(err).startswith("encoder has") else "model.decoder.init_size"
        raise UserError(str(err), key, "a decoder that produces the data's frame size") from None


def _build(cfg, m, image_size, max_len):
    return WorldModel(image_size=image_size, latent_dim=m.latent_dim, action_dim=m.action_dim,
                      hidden_dim=m.hidden_dim, encoder_stages=list(m.encoder.stages), encoder_heads=m.encoder.num_heads,
                      dynamics_layers=m.dynamics.num_layers,
                      dynamics_heads=m.dynamics.num_heads or max(1, m.hidden_dim // 64), dropout=m.dynamics.dropout,
                      decoder_stages=list(m.decoder.stages), decoder_init_size=m.decoder.init_size, max_len=max_len,
                      reference_frame=m.decoder.reference_frame,
                      rollout_reference=m.decoder.rollout_reference)


def precision_for(cfg: Config, device: torch.device) -> str:
    """``use_amp``: bf16 autocast on CPU (no scaler needed), fp16 + GradScaler on CUDA."""
    if not cfg.training.use_amp:
        return "fp32"
    return "fp16" if device.type == "cuda" else "bf16"


def eval_indices(n: int, max_sequences: int) -> list[int]:
    """A fixed, evenly spaced subset (the same on every rank and at every evaluation)."""
    if not max_sequences or n <= max_sequences:
        return list(range(n))
    return np.linspace(0, n - 1, max_sequences).round().astype(int).tolist()


def foreign_partner(windows: WindowDataset, indices: list[int]) -> list[int]:
    """For each window, a window from another scene (half the list away, then onward), for foreign actions."""
    n = len(indices)
    out = []
    for k, i in enumerate(indices):
        for step in range(n // 2, n // 2 + n):
            j = indices[(k + step) % n]
            if windows.scene_names[j] != windows.scene_names[i]:
                out.append(j)
                break
        else:
            out.append(indices[(k + max(1, n // 2)) % n])
    return out


def _batches(indices: list[int], size: int):
    for a in range(0, len(indices), size):
        yield indices[a:a + size]


@torch.no_grad()
def rollout_metrics(model: WorldModel, data: ProcessedDataset, *, context: int, horizon: int, frame_skip: int,
                    max_sequences: int, device, precision: str = "fp32", batch_size: int = 16,
                    per_channel: bool = False, reference_every: int | None = None) -> dict:
    """``{"model": {psnr@h, ssim@h}, "copy_last_frame": {...}, "action_sensitivity": {...}}`` on val scenes.

    Action sensitivity: PSNR with the window's true future actions minus PSNR with a foreign window's (from
    another scene). With ``per_channel``, also ``action_sensitivity.per_channel.<name>.delta_psnr@h``: only that
    channel is swapped for the foreign window's and the others keep their true values (one extra rollout per
    channel), so a model that ignores speed shows ~0 there even when steering carries the overall figure."""
    windows = WindowDataset(data, "val", context + horizon, frame_skip, 1)
    idx = eval_indices(len(windows), max_sequences)
    partner = dict(zip(idx, foreign_partner(windows, idx)))
    sums = {k: np.zeros(horizon) for k in ("m_psnr", "m_ssim", "c_psnr", "c_ssim", "f_psnr", "f_ssim")}
    names = list(data.index["action_names"]) if per_channel else []
    for c in range(len(names)):
        sums[f"ch{c}_psnr"] = np.zeros(horizon)
    was_training = model.training
    model.eval()
    for chunk in _batches(idx, batch_size):
        raise_if_stopped()  # only after a training run's stop signal (GracefulStop); never in `evaluate`
        batch = collate([windows[i] for i in chunk])
        frames = batch["frames"].to(device)
        actions = batch["actions"].to(device)
        foreign = torch.stack([torch.from_numpy(windows.actions_of(partner[i])) for i in chunk]).to(device)
        # the context keeps its own (observed) actions; only the future controls are swapped
        foreign[:, :context - 1] = actions[:, :context - 1]
        ctx, future = frames[:, :context], frames[:, context:]
        with autocast(device, precision):
            pred = model.rollout(ctx, actions, horizon, reference_every).float()
            pred_f = model.rollout(ctx, foreign, horizon, reference_every).float()
        last = ctx[:, -1:].expand_as(future)
        for h in range(horizon):
            gt = future[:, h]
            for key, img in (("m", pred[:, h]), ("c", last[:, h]), ("f", pred_f[:, h])):
                sums[f"{key}_psnr"][h] += float(psnr_per_image(img, gt).sum())
                sums[f"{key}_ssim"][h] += float(ssim_per_image(img, gt).sum())
        for c in range(len(names)):
            swapped = actions.clone()
            swapped[:, context - 1:, c] = foreign[:, context - 1:, c]
            with autocast(device, precision):
                pred_c = model.rollout(ctx, swapped, horizon, reference_every).float()
            for h in range(horizon):
                sums[f"ch{c}_psnr"][h] += float(psnr_per_image(pred_c[:, h], future[:, h]).sum())
    model.train(was_training)
    n = len(idx)
    res = {"model": {}, "copy_last_frame": {}, "action_sensitivity": {}}
    for h in range(horizon):
        k = h + 1
        res["model"][f"psnr@{k}"] = sums["m_psnr"][h] / n
        res["model"][f"ssim@{k}"] = sums["m_ssim"][h] / n
        res["copy_last_frame"][f"psnr@{k}"] = sums["c_psnr"][h] / n
        res["copy_last_frame"][f"ssim@{k}"] = sums["c_ssim"][h] / n
        res["action_sensitivity"][f"psnr_true@{k}"] = sums["m_psnr"][h] / n
        res["action_sensitivity"][f"psnr_foreign@{k}"] = sums["f_psnr"][h] / n
        res["action_sensitivity"][f"delta_psnr@{k}"] = (sums["m_psnr"][h] - sums["f_psnr"][h]) / n
    if names:
        res["action_sensitivity"]["per_channel"] = {
            name: {f"delta_psnr@{h + 1}": (sums["m_psnr"][h] - sums[f"ch{c}_psnr"][h]) / n for h in range(horizon)}
            for c, name in enumerate(names)}
    res["model"]["num_sequences"] = n
    res["model"]["context_frames"] = context
    if reference_every is not None:
        res["model"]["reference_every"] = reference_every
    return res


@torch.no_grad()
def validate(model: WorldModel, windows: WindowDataset, cfg: Config, perceptual, device, precision: str) -> dict:
    """Loss terms, 1-step prediction and reconstruction PSNR/SSIM on validation windows, plus rollout metrics.
    ``val/psnr`` / ``val/ssim`` are the 1-step prediction (the world model's job); reconstruction is
    ``val/recon_psnr`` / ``val/recon_ssim``."""
    was_training = model.training
    model.eval()
    idx = eval_indices(len(windows), cfg.eval.max_sequences)
    sums: dict[str, float] = {}
    n_img_pred = n_img_rec = n_batches = 0
    for chunk in _batches(idx, cfg.training.batch_size):
        raise_if_stopped()  # SIGTERM in training: end within one batch, not after the whole validation (issue 24)
        batch = collate([windows[i] for i in chunk])
        frames, actions = batch["frames"].to(device), batch["actions"].to(device)
        with autocast(device, precision):
            out = model(frames, actions)
            terms = compute_losses(out, frames, cfg.loss, perceptual)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n_batches += 1
        pred = to_unit(out["predicted"].float()).flatten(0, 1)
        rec = to_unit(out["reconstructed"].float()).flatten(0, 1)
        nxt, cur = frames[:, 1:].flatten(0, 1), frames.flatten(0, 1)
        sums["psnr"] = sums.get("psnr", 0.0) + float(psnr_per_image(pred, nxt).sum())
        sums["ssim"] = sums.get("ssim", 0.0) + float(ssim_per_image(pred, nxt).sum())
        sums["recon_psnr"] = sums.get("recon_psnr", 0.0) + float(psnr_per_image(rec, cur).sum())
        sums["recon_ssim"] = sums.get("recon_ssim", 0.0) + float(ssim_per_image(rec, cur).sum())
        sums["copy_last_psnr"] = sums.get("copy_last_psnr", 0.0) + float(
            psnr_per_image(frames[:, :-1].flatten(0, 1), nxt).sum())
        n_img_pred += len(pred)
        n_img_rec += len(rec)
    metrics = {}
    for k, v in sums.items():
        denom = n_img_pred if k in ("psnr", "ssim", "copy_last_psnr") else n_img_rec if k in ("recon_psnr", "recon_ssim") else n_batches
        metrics[f"val/{k}"] = v / denom  # recon_loss is a per-batch loss like the others (audit H3)
    roll = rollout_metrics(model, windows.data, context=cfg.eval.context_frames, horizon=cfg.eval.horizon,
                           frame_skip=windows.frame_skip, max_sequences=cfg.eval.max_sequences, device=device,
                           precision=precision, batch_size=cfg.training.batch_size)
    for k, v in roll["model"].items():
        metrics[f"val/rollout_{k}"] = v
    for k, v in roll["copy_last_frame"].items():
        metrics[f"val/copy_last_{k}"] = v
    H = cfg.eval.horizon
    metrics[f"val/action_sensitivity@{H}"] = roll["action_sensitivity"][f"delta_psnr@{H}"]
    model.train(was_training)
    return metrics


def image_grid(rows: list[torch.Tensor], pad: int = 1) -> np.ndarray:
    """rows: tensors [T, 3, H, W] in [0, 1] -> one HWC uint8 image, one row per tensor."""
    t = max(r.shape[0] for r in rows)
    _, h, w = rows[0].shape[1:]
    grid = np.ones(((h + pad) * len(rows) + pad, (w + pad) * t + pad, 3), np.float32)
    for i, r in enumerate(rows):
        for j in range(r.shape[0]):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y:y + h, x:x + w] = r[j].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return (grid * 255 + 0.5).astype(np.uint8)


def load_for_inference(path: str | Path, device, overrides=()) -> tuple[WorldModel, Config, dict]:
    state = load_checkpoint(path, map_location=device)
    if not isinstance(state.get("extra"), dict) or "image_size" not in state["extra"] or "config" not in state:
        raise UserError("not a worldmodel checkpoint", str(path), "a file written by `worldmodel train`")
    cfg = load_config(Config, None, overrides, base=upgrade_saved_config(state["config"]))
    extra = state["extra"]
    model = build_model(cfg, tuple(extra["image_size"]), int(extra["max_len"])).to(device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise UserError("checkpoint weights do not match its config", str(path), " ".join(str(err).split())[:200])
    model.eval()
    return model, cfg, extra


def check_compatible(data: ProcessedDataset, extra: dict, where: str) -> None:
    """Same frame size as training; actions normalised with the *training* data's statistics (stored in the
    checkpoint), not with those of the dataset being evaluated."""
    if list(data.image_size) != list(extra["image_size"]):
        raise UserError(f"frames are {data.image_size[0]}x{data.image_size[1]} but the model was trained on "
                        f"{extra['image_size'][0]}x{extra['image_size'][1]}", where,
                        "a dataset prepared at the checkpoint's image size")
    names = extra.get("action_names")
    if names is not None and list(names) != list(data.index["action_names"]):
        raise UserError(f"the dataset's actions are {data.index['action_names']} but the model was trained on "
                        f"{list(names)}", where, "a dataset with the checkpoint's action channels")
    norm = extra.get("action_normalisation")
    if norm:
        data.action_mean = np.asarray(norm["mean"], np.float32)
        data.action_std = np.asarray(norm["std"], np.float32)


def evaluate_checkpoint(checkpoint: str, data_root: str, horizon: int | None, device, context: int | None = None,
                        max_sequences: int | None = None, reference_every: int | None = None) -> dict:
    model, cfg, extra = load_for_inference(checkpoint, device)
    data = ProcessedDataset(data_root)
    check_compatible(data, extra, f"--data-root {data_root}")
    H = horizon if horizon is not None else cfg.eval.horizon
    C = context if context is not None else cfg.eval.context_frames
    for name, v in (("--horizon", H), ("--context", C)):
        if v < 1:
            raise UserError(f"{name.lstrip('-')}={v}", name, "a positive integer")
    res = rollout_metrics(model, data, context=C, horizon=H, frame_skip=cfg.data.frame_skip,
                          max_sequences=cfg.eval.max_sequences if max_sequences is None else max_sequences,
                          device=device, per_channel=True, reference_every=reference_every)
    return res


def format_table(res: dict) -> str:
    H = sum(1 for k in res["model"] if k.startswith("psnr@"))
    lines = [f"open-loop rollout on {res['model']['num_sequences']} validation windows "
             f"({res['model']['context_frames']} context frame(s))",
             f"{'h':>3} {'model PSNR':>11} {'copy-last':>10} {'gain':>6} {'model SSIM':>11} {'copy SSIM':>10} "
             f"{'foreign-act PSNR':>17} {'sensitivity':>12}"]
    for h in range(1, H + 1):
        m, c, a = res["model"], res["copy_last_frame"], res["action_sensitivity"]
        lines.append(f"{h:>3} {m[f'psnr@{h}']:>11.2f} {c[f'psnr@{h}']:>10.2f} {m[f'psnr@{h}'] - c[f'psnr@{h}']:>6.2f} "
                     f"{m[f'ssim@{h}']:>11.4f} {c[f'ssim@{h}']:>10.4f} {a[f'psnr_foreign@{h}']:>17.2f} "
                     f"{a[f'delta_psnr@{h}']:>12.2f}")
    per = res["action_sensitivity"].get("per_channel")
    if per:
        lines.append("action sensitivity per channel (PSNR drop in dB when only that channel is a foreign "
                     "window's)")
        lines.append(f"{'h':>3} " + " ".join(f"{name:>12}" for name in per))
        for h in range(1, H + 1):
            lines.append(f"{h:>3} " + " ".join(f"{per[name][f'delta_psnr@{h}']:>12.2f}" for name in per))
    return "\n".join(lines)


def to_json(res: dict) -> str:
    return json.dumps(res, indent=None, sort_keys=False, default=float)


def write_rollouts(checkpoint: str, data_root: str, out: str, *, num_sequences: int, horizon: int | None,
                   steer_offset: float, device, overwrite: bool, fps: float = 5.0,
                   reference_every: int | None = None) -> list[Path]:
    """PNG strips (GT / rollout / rollout with steering offset) and an animated GIF per sequence."""
    import imageio.v2 as imageio

    if num_sequences < 1:
        raise UserError(f"num-sequences={num_sequences}", "--num-sequences", "a positive integer")
    model, cfg, extra = load_for_inference(checkpoint, device)
    data = ProcessedDataset(data_root)
    check_compatible(data, extra, f"--data-root {data_root}")
    H = horizon if horizon is not None else max(cfg.eval.horizon, 8)
    if H < 1:
        raise UserError(f"horizon={H}", "--horizon", "a positive integer")
    C = cfg.eval.context_frames
    windows = WindowDataset(data, "val", C + H, cfg.data.frame_skip, 1)
    idx = eval_indices(len(windows), num_sequences)
    out_dir = stage_output_dir(out, overwrite)  # written beside --out, swapped in at the end (audit A9)
    try:
        steer = int(data.index.get("steer_channel", 1))
        unit = data.index["action_units"][steer]
        written = []
        for i in idx:
            item = collate([windows[i]])
            frames, actions = item["frames"].to(device), item["actions"].to(device)
            edited = actions.clone()
            # the offset is in the channel's physical unit; the model sees normalised actions
            edited[:, C - 1:, steer] += steer_offset / float(data.action_std[steer])
            names = data.index["action_names"]
            if "curvature" in names and "speed" in names and names[steer] == "yaw_rate":
                # keep the action vector consistent: curvature = yaw_rate / speed (as every source computes it)
                k, v = names.index("curvature"), names.index("speed")
                speed = actions[:, C - 1:, v] * float(data.action_std[v]) + float(data.action_mean[v])
                edited[:, C - 1:, k] += steer_offset / speed.clamp_min(1.0) / float(data.action_std[k])
            pred = model.rollout(frames[:, :C], actions, H, reference_every)[0]
            rows = [frames[0, C:], pred]
            if steer_offset:
                rows.append(model.rollout(frames[:, :C], edited, H, reference_every)[0])
            grid = image_grid(rows)
            name = f"{windows.scene_names[i]}_w{i:05d}"
            imageio.imwrite(out_dir / f"{name}.png", grid)
            gif = []
            for h in range(H):
                panel = image_grid([r[h:h + 1] for r in rows])
                gif.append(np.repeat(np.repeat(panel, 3, 0), 3, 1))
            imageio.mimsave(out_dir / f"{name}.gif", gif, duration=1.0 / fps, loop=0)
            written += [out_dir / f"{name}.png", out_dir / f"{name}.gif"]
        (out_dir / "README.txt").write_text(
            f"rows: ground truth, open-loop rollout with the true actions"
            + (f", rollout with steering channel {data.index['action_names'][steer]} offset by {steer_offset} {unit}"
               + (" (curvature moved with it: offset / speed)" if "curvature" in data.index["action_names"] else "")
               if steer_offset else "") + f"\ncontext frames: {C}; horizon: {H}; checkpoint: {checkpoint}\n")
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)  # the previous output stays as it was
        raise
    return finish_output_dir(out_dir, out, written)


__all__ = ["validate", "rollout_metrics", "evaluate_checkpoint", "write_rollouts", "load_for_inference",
           "build_model", "image_grid"]
