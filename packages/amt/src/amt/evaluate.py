"""Prediction, validation, the mean-pose baseline, the toolkit's result file, and `amt evaluate`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from trainkit.checkpoint import load_checkpoint
from trainkit.config import load_config
from trainkit.device import autocast, resolve_device
from trainkit.errors import UserError

from .config import Config
from .data import AugmentConfigLike, DexYCBIndex, HandCropDataset, read_labels
from .metrics import collapse_monitor, hand_metrics
from .model import AMTModel, project_points
from .synthetic import ensure_synthetic


def resolve_root(cfg: Config, log=print) -> Path:
    d = cfg.data
    if d.root is None:
        s = d.synthetic
        return ensure_synthetic(s.sequences_per_subject, s.frames_per_sequence, s.seed, log=log,
                                generator_version=s.generator_version)
    return Path(d.root)


def make_dataset(cfg: Config, root: Path, split: str, *, augment: bool = False, limit: int | None = None, log=None):
    d = cfg.data
    aug = AugmentConfigLike(d.aug_rotation_deg, d.aug_scale, d.aug_translation, d.aug_color_jitter)
    index = DexYCBIndex(root, split)
    note = index.incompleteness() if d.root is not None else None  # the synthetic default is small on purpose
    if note and log is not None:
        log(f"WARNING: {note}")
    if len(index) == 0:
        raise UserError(f"split {split} has no labelled frames", str(root), "frames with hand labels (not all -1)")
    ds = HandCropDataset(index, d.image_size, augment=augment, crop_scale=d.crop_scale, aug=aug,
                         seed=cfg.training.seed, mirror_left=d.mirror_left)
    if limit is not None and limit < len(ds):
        # An evenly spaced subset: covers every subject/camera instead of the first sequences only.
        keep = np.linspace(0, len(ds) - 1, limit).round().astype(int).tolist()
        ds = Subset(ds, keep)
    return ds


def build_model(cfg: Config, log=None) -> AMTModel:
    m = cfg.model
    return AMTModel(backbone=m.backbone, image_size=cfg.data.image_size, hidden_dim=m.hidden_dim, num_heads=m.num_heads,
                    num_decoder_layers=m.num_decoder_layers, num_refinement_steps=m.num_refinement_steps,
                    use_sigma_reparam=m.use_sigma_reparam, dropout=m.dropout, freeze_layers=m.freeze_layers,
                    backbone_weights=m.backbone_weights, cnn_width=m.cnn_width, log=log)


def mean_pose(dataset) -> dict:
    """The training set's mean root-relative pose and mean root, in the samples' frame (left hands mirrored),
    from the label files alone (no augmentation)."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    ids = dataset.indices if isinstance(dataset, Subset) else range(len(base))
    rel, roots = np.zeros((21, 3)), np.zeros(3)
    for i in ids:
        fr = base.index.frames[i]
        J = read_labels(Path(fr.label))["joint_3d"]
        if base.mirror_left and fr.mano_side == "left":
            J = J * [-1, 1, 1]
        rel += J - J[0]
        roots += J[0]
    n = max(len(ids), 1)
    return {"mean_rel": torch.tensor(rel / n, dtype=torch.float32), "mean_root": torch.tensor(roots / n, dtype=torch.float32)}


@torch.no_grad()
def predict(model: AMTModel | None, loader, device, precision: str = "fp32", baseline: dict | None = None,
            keep_images: int = 0) -> dict:
    """Run the model (or the mean-pose baseline when ``model`` is None) over a loader.

    Returns absolute joints in the original camera frame (mm), their 640x480 projections, the sample-frame
    root-relative predictions and ground truth (m, for the spread monitor), toolkit indices, and a few crops.
    """
    keys = ["pred_mm", "gt_mm", "pred_uv", "gt_uv", "pred_rel", "gt_rel", "tk_index", "coarse_mm"]
    acc = {k: [] for k in keys}
    shown = {"images": [], "pred_uv_crop": [], "gt_uv_crop": []}
    if model is not None:
        model.eval()
    for batch in loader:
        b = {k: v.to(device) for k, v in batch.items()}
        B = b["image"].shape[0]
        if model is None:
            rel = baseline["mean_rel"].to(device)[None].expand(B, -1, -1)
            root = baseline["mean_root"].to(device)[None].expand(B, -1)
            coarse = rel
        else:
            with autocast(device, precision):
                out = model(b["image"], b["K"])
            rel = (out["refined"][-1] if out["refined"] else out["joints_rel"]).float()
            coarse, root = out["joints_rel"].float(), out["root"].float()
        T = b["T"]
        pred_abs_s = rel + root[:, None]
        gt_abs_s = b["joints_rel"] + b["root"][:, None]
        # back to the original camera frame: X_s = X T^T and T is orthogonal, so X = X_s T
        pred_abs = pred_abs_s @ T
        gt_abs = gt_abs_s @ T
        acc["pred_mm"].append((pred_abs * 1000).double().cpu())
        acc["gt_mm"].append((gt_abs * 1000).double().cpu())
        acc["coarse_mm"].append(((coarse + root[:, None]) @ T * 1000).double().cpu())
        acc["pred_uv"].append(project_points(b["K_orig"], pred_abs).cpu())
        acc["gt_uv"].append(b["joints_2d_orig"].cpu())
        acc["pred_rel"].append(rel.cpu())
        acc["gt_rel"].append(b["joints_rel"].cpu())
        acc["tk_index"].append(b["tk_index"].cpu())
        if len(shown["images"]) < keep_images:
            k = min(keep_images - len(shown["images"]), B)
            shown["images"] += list(b["image"][:k].cpu())
            shown["pred_uv_crop"] += list(project_points(b["K"], pred_abs_s)[:k].cpu())
            shown["gt_uv_crop"] += list(b["joints_2d"][:k].cpu())
    res = {k: torch.cat(v) for k, v in acc.items()}
    res.update(shown)
    return res


def metrics_from_predictions(p: dict, threshold: float = 0.001) -> dict:
    m = hand_metrics(p["pred_mm"], p["gt_mm"], p["pred_uv"], p["gt_uv"])
    m["mpjpe_coarse"] = hand_metrics(p["coarse_mm"], p["gt_mm"])["mpjpe"]
    stats, _ = collapse_monitor(p["pred_rel"], p["gt_rel"], threshold)
    m.update(stats)
    m["num_frames"] = int(p["pred_mm"].shape[0])
    return m


def make_loader(ds, batch_size: int, num_workers: int = 0):
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def write_results(path: str | Path, p: dict) -> Path:
    """The toolkit's HPE result file: per frame, its dataset index then 63 numbers (x,y,z per joint, mm,
    camera frame, toolkit joint order), comma-separated."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    order = torch.argsort(p["tk_index"])
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:  # written aside and renamed: an interrupted run never leaves half a result file
        for i in order.tolist():
            vals = ",".join(f"{v:.4f}" for v in p["pred_mm"][i].reshape(-1).tolist())
            f.write(f"{int(p['tk_index'][i])},{vals}\n")
    tmp.replace(path)
    return path


def load_for_inference(path: str | Path, device, config_path: str | None = None, overrides=(), cli_values=None,
                       log=None) -> tuple[AMTModel, Config, dict]:
    """The EMA model (raw weights if the file has no EMA), config (checkpoint's, with --config/--set on top) and
    the checkpoint's extra data (mean-pose baseline)."""
    state = load_checkpoint(path, map_location="cpu")
    if not isinstance(state.get("config"), dict) or "amt" not in (state.get("extra") or {}):
        raise UserError("not an amt checkpoint", str(path), "a latest.pth / best.pth written by `amt train`")
    cfg = load_config(Config, config_path, overrides, cli_values, base=state["config"])
    model = build_model(cfg, log=log)
    weights = state["ema"]["module"] if "ema" in state else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError("checkpoint weights do not match the model config", str(path),
                        " ".join(str(e).split())[:200]) from None
    model.refresh_sigma()  # an EMA's averaged sigma-reparam vectors, realigned with its averaged weights
    return model.to(device).eval(), cfg, state["extra"]


def evaluate_checkpoint(checkpoint: str, *, split: str | None = None, config_path=None, overrides=(), cli_values=None,
                        results: str | None = None, device: str = "auto", batch_size: int | None = None, log=print) -> dict:
    dev = resolve_device(device)
    model, cfg, extra = load_for_inference(checkpoint, dev, config_path, overrides, cli_values, log=log)
    split = split or cfg.data.test_split
    root = resolve_root(cfg, log)
    ds = make_dataset(cfg, root, split, log=log)
    loader = make_loader(ds, batch_size or cfg.training.batch_size, cfg.data.num_workers)
    p = predict(model, loader, dev, cfg.precision)
    baseline = {"mean_rel": extra["amt"]["mean_rel"], "mean_root": extra["amt"]["mean_root"]}
    pb = predict(None, loader, dev, baseline=baseline)
    out = {"checkpoint": str(checkpoint), "split": split, "data_root": str(root), "num_frames": len(ds),
           "model": metrics_from_predictions(p, cfg.training.collapse_std_threshold),
           "mean_pose_baseline": metrics_from_predictions(pb, cfg.training.collapse_std_threshold)}
    out["ratio_to_baseline"] = {k: out["model"][k] / out["mean_pose_baseline"][k]
                                for k in ("mpjpe", "pa_mpjpe", "mpjpe_abs") if out["mean_pose_baseline"][k]}
    if results:
        out["results_file"] = str(write_results(results, p))
    return out


def format_report(r: dict) -> str:
    rows = [("root-relative MPJPE (mm)", "mpjpe"), ("absolute MPJPE (mm)", "mpjpe_abs"), ("PA-MPJPE (mm)", "pa_mpjpe"),
            ("AUC 0-50 mm root-rel", "auc_rr"), ("AUC 0-50 mm absolute", "auc_abs"), ("AUC 0-50 mm Procrustes", "auc_pa"),
            ("3-D PCK@20mm root-rel", "pck3d_20mm"), ("3-D PCK@50mm root-rel", "pck3d_50mm"),
            ("PCK@5px (640x480)", "pck_5px"), ("2-D error (px)", "error_2d_px"), ("coarse MPJPE (mm)", "mpjpe_coarse"),
            ("prediction spread (m)", "pred_std"), ("ground-truth spread (m)", "gt_std")]
    lines = [f"{r['split']} on {r['data_root']}: {r['num_frames']} frames",
             f"{'metric':<28}{'model':>12}{'mean pose':>12}"]
    for name, k in rows:
        lines.append(f"{name:<28}{r['model'][k]:>12.4f}{r['mean_pose_baseline'][k]:>12.4f}")
    if "results_file" in r:
        lines.append(f"wrote toolkit result file {r['results_file']}")
    return "\n".join(lines)


def report_json(r: dict) -> str:
    return json.dumps(r, indent=2, sort_keys=True)
