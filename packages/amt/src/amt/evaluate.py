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
from trainkit.runsafety import raise_if_stopped

from .config import Config
from .data import AugmentConfigLike, HandCropDataset
from .realdata import make_index
from .baselines import canonical_hand, chirality, orient_like
from .metrics import collapse_monitor, frame_errors, hand_metrics
from .model import AMTModel, project_points
from .synthetic import ensure_synthetic


def resolve_root(cfg: Config, log=print) -> Path:
    d = cfg.data
    if d.root is None:
        s = d.synthetic
        return ensure_synthetic(s.sequences_per_subject, s.frames_per_sequence, s.seed, log=log,
                                generator_version=s.generator_version)
    return Path(d.root)


def make_dataset(cfg: Config, root: Path, split: str, *, augment: bool = False, limit: int | None = None, log=None,
                 right_sign: float = 1.0):
    """Hand crops of one split of a data root in any layout (DexYCB, real hand crops, FreiHAND). For real layouts
    ``right_sign`` is the chirality the model treats as unmirrored (see ``realdata``)."""
    d = cfg.data
    aug = AugmentConfigLike(d.aug_rotation_deg, d.aug_scale, d.aug_translation, d.aug_color_jitter)
    index = make_index(root, split, right_sign)
    note = index.incompleteness() if d.root is not None else None  # the synthetic default is small on purpose
    if note and log is not None:
        log(f"WARNING: {note}")
    if hasattr(index, "summary") and log is not None:
        log(index.summary())
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


def mean_pose(dataset, max_canonical: int = 20000) -> dict:
    """Baselines from the training set's label files alone (no augmentation), in the samples' frame (left
    hands mirrored, so every hand is a right hand): the camera-frame mean root-relative pose and mean root, and
    the canonical hand (generalised-Procrustes mean in the hand's own frame, over at most ``max_canonical``
    evenly spaced frames)."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    ids = list(dataset.indices if isinstance(dataset, Subset) else range(len(base)))
    rel, roots, hands = np.zeros((21, 3)), np.zeros(3), []
    keep = set(np.linspace(0, len(ids) - 1, min(len(ids), max_canonical)).round().astype(int).tolist()) if ids else set()
    for n, i in enumerate(ids):
        fr = base.index.frames[i]
        J = base.index.read(fr)["joint_3d"]
        if base.mirror_left and fr.mano_side == "left":
            J = J * [-1, 1, 1]
        rel += J - J[0]
        roots += J[0]
        if n in keep:
            hands.append(J - J[0])
    n = max(len(ids), 1)
    out = {"mean_rel": torch.tensor(rel / n, dtype=torch.float32), "mean_root": torch.tensor(roots / n, dtype=torch.float32)}
    if hands:
        out["canonical_hand"] = torch.tensor(canonical_hand(np.stack(hands)), dtype=torch.float32)
    return out


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
        raise_if_stopped()  # a training run's SIGTERM ends validation within one batch (issue 24); never in evaluate
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


def metrics_from_predictions(p: dict, threshold: float = 0.001, ratio_threshold: float = 0.25) -> dict:
    m = hand_metrics(p["pred_mm"], p["gt_mm"], p["pred_uv"], p["gt_uv"])
    m["mpjpe_coarse"] = hand_metrics(p["coarse_mm"], p["gt_mm"])["mpjpe"]
    stats, _ = collapse_monitor(p["pred_rel"], p["gt_rel"], threshold, ratio_threshold)
    m.update(stats)
    m["num_frames"] = int(p["pred_mm"].shape[0])
    return m


def make_loader(ds, batch_size: int, num_workers: int = 0):
    from trainkit.runsafety import worker_init

    # workers ignore SIGTERM/SIGINT: a stop signal to the job reaches the main process, which saves
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, worker_init_fn=worker_init())


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


def training_canonical_hand(cfg: Config, extra: dict, log=print) -> tuple[np.ndarray, str]:
    """The canonical hand of the model's own training split: stored in the checkpoint by `amt train`, else (older
    checkpoints) rebuilt from the training split's labels under the checkpoint's data root."""
    a = extra["amt"]
    if "canonical_hand" in a:
        return np.asarray(a["canonical_hand"], dtype=np.float64), "checkpoint (training split)"
    root = Path(a.get("data_root") or resolve_root(cfg, log))
    if not root.is_dir():
        root = resolve_root(cfg, log)
    ds = make_dataset(cfg, root, cfg.data.train_split)
    log(f"checkpoint predates the canonical hand: fitting it on {cfg.data.train_split} of {root}")
    return mean_pose(ds)["canonical_hand"].double().numpy(), f"{cfg.data.train_split} of {root}"


def model_right_sign(canon: np.ndarray) -> float:
    """The chirality sign of the hands a model was trained on (its canonical hand): real frames whose geometry
    has the other sign are mirrored, so the model sees the chirality it learned."""
    return 1.0 if chirality(np.asarray(canon)[None])[0] >= 0 else -1.0


def _crossfit_canonical(gt_rel: np.ndarray) -> np.ndarray:
    """Per frame, a canonical hand fitted on the *other* half of the evaluated frames (even frames scored with
    the odd frames' hand and vice versa): the constant-hand baseline for a set the model never trained on."""
    out = np.empty_like(gt_rel)
    idx = np.arange(len(gt_rel))
    for part in (0, 1):
        fit, score = idx % 2 != part, idx % 2 == part
        if fit.any() and score.any():
            out[score] = canonical_hand(gt_rel[fit])
        elif score.any():  # a single frame: nothing else to fit on
            out[score] = gt_rel[score]
    return out


def baseline_comparison(p: dict, canon: np.ndarray) -> dict:
    """Model vs the canonical hand on the same frames (all mm; computed in the samples' right-hand frame, where
    both errors are unchanged because the frame map is orthogonal and applied to prediction and truth alike).

    - ``canonical_hand``: PA metrics of the constant canonical hand (toolkit and proper-rotation alignment);
    - ``canonical_oracle_rotation``: root-relative MPJPE of that hand turned to each frame's true orientation;
    - ``canonical_crossfit``: PA of a canonical hand fitted on the other half of the evaluated frames;
    - ``ratio_to_canonical``: model / baseline (PA to the canonical hand, root-relative to the oracle one);
    - ``frames_beating_canonical``: fraction of frames where the model's error is below the baseline's.
    """
    gt_rel = p["gt_rel"].double().numpy() * 1000
    canon_mm = np.asarray(canon, dtype=np.float64) * 1000
    gt = torch.tensor(gt_rel)
    const = torch.tensor(np.broadcast_to(canon_mm, gt_rel.shape).copy())
    oracle = torch.tensor(orient_like(canon_mm, gt_rel))
    cross = torch.tensor(_crossfit_canonical(gt_rel))
    fm = frame_errors(p["pred_mm"], p["gt_mm"])
    fc, fo, fx = frame_errors(const, gt), frame_errors(oracle, gt), frame_errors(cross, gt)
    ch = hand_metrics(const, gt)
    out = {
        "canonical_hand": {k: ch[k] for k in ("pa_mpjpe", "pa_mpjpe_proper", "auc_pa", "auc_pa_proper")},
        "canonical_oracle_rotation": {k: hand_metrics(oracle, gt)[k] for k in ("mpjpe", "auc_rr")},
        "canonical_crossfit": {"pa_mpjpe": float(fx["pa_mpjpe"].mean()), "pa_mpjpe_proper": float(fx["pa_mpjpe_proper"].mean())},
    }
    model = {k: float(fm[k].mean()) for k in fm}
    out["ratio_to_canonical"] = {
        "pa_mpjpe": model["pa_mpjpe"] / out["canonical_hand"]["pa_mpjpe"],
        "pa_mpjpe_proper": model["pa_mpjpe_proper"] / out["canonical_hand"]["pa_mpjpe_proper"],
        "mpjpe_vs_oracle_rotation": model["mpjpe"] / out["canonical_oracle_rotation"]["mpjpe"],
        "pa_mpjpe_vs_crossfit": model["pa_mpjpe"] / out["canonical_crossfit"]["pa_mpjpe"],
    }
    out["frames_beating_canonical"] = {
        "pa_mpjpe": float((fm["pa_mpjpe"] < fc["pa_mpjpe"]).mean()),
        "pa_mpjpe_proper": float((fm["pa_mpjpe_proper"] < fc["pa_mpjpe_proper"]).mean()),
        "mpjpe_vs_oracle_rotation": float((fm["mpjpe"] < fo["mpjpe"]).mean()),
        "pa_mpjpe_vs_crossfit": float((fm["pa_mpjpe"] < fx["pa_mpjpe"]).mean()),
    }
    return out


def evaluate_checkpoint(checkpoint: str, *, split: str | None = None, config_path=None, overrides=(), cli_values=None,
                        results: str | None = None, device: str = "auto", batch_size: int | None = None, log=print) -> dict:
    dev = resolve_device(device)
    model, cfg, extra = load_for_inference(checkpoint, dev, config_path, overrides, cli_values, log=log)
    split = split or cfg.data.test_split
    root = resolve_root(cfg, log)
    canon, canon_source = training_canonical_hand(cfg, extra, log)
    ds = make_dataset(cfg, root, split, log=log, right_sign=model_right_sign(canon))
    loader = make_loader(ds, batch_size or cfg.training.batch_size, cfg.data.num_workers)
    p = predict(model, loader, dev, cfg.precision)
    baseline = {"mean_rel": extra["amt"]["mean_rel"], "mean_root": extra["amt"]["mean_root"]}
    pb = predict(None, loader, dev, baseline=baseline)
    out = {"checkpoint": str(checkpoint), "split": split, "data_root": str(root), "num_frames": len(ds),
           "model": metrics_from_predictions(p, cfg.training.collapse_std_threshold, cfg.training.collapse_ratio_threshold),
           "canonical_hand_source": canon_source,
           # the camera-frame average: a shrunken blob, kept for comparison with older reports, never a denominator
           "mean_pose_camera_frame": metrics_from_predictions(pb, cfg.training.collapse_std_threshold)}
    out.update(baseline_comparison(p, canon))
    if results:
        out["results_file"] = str(write_results(results, p))
    return out


def format_report(r: dict) -> str:
    c, o, m, cam = r["canonical_hand"], r["canonical_oracle_rotation"], r["model"], r["mean_pose_camera_frame"]
    lines = [f"{r['split']} on {r['data_root']}: {r['num_frames']} frames; canonical hand from {r['canonical_hand_source']}",
             f"{'metric':<34}{'model':>10}{'canonical':>11}{'ratio':>8}{'beats on':>10}{'cam-mean':>10}"]

    def row(name, k, base, rk=None, fk=None):
        ratio = f"{r['ratio_to_canonical'][rk]:>8.3f}" if rk else f"{'':>8}"
        beats = f"{100 * r['frames_beating_canonical'][fk]:>9.1f}%" if fk else f"{'':>10}"
        b = f"{base:>11.4f}" if base is not None else f"{'':>11}"
        lines.append(f"{name:<34}{m[k]:>10.4f}{b}{ratio}{beats}{cam.get(k, float('nan')):>10.4f}")

    row("PA-MPJPE, toolkit (mm)", "pa_mpjpe", c["pa_mpjpe"], "pa_mpjpe", "pa_mpjpe")
    row("PA-MPJPE, proper rotation (mm)", "pa_mpjpe_proper", c["pa_mpjpe_proper"], "pa_mpjpe_proper", "pa_mpjpe_proper")
    row("root-rel MPJPE vs oracle-rot (mm)", "mpjpe", o["mpjpe"], "mpjpe_vs_oracle_rotation", "mpjpe_vs_oracle_rotation")
    row("AUC 0-50 mm Procrustes (toolkit)", "auc_pa", c["auc_pa"])
    row("AUC 0-50 mm root-rel", "auc_rr", o["auc_rr"])
    for name, k in (("absolute MPJPE (mm)", "mpjpe_abs"), ("AUC 0-50 mm absolute", "auc_abs"),
                    ("3-D PCK@20mm root-rel", "pck3d_20mm"), ("3-D PCK@50mm root-rel", "pck3d_50mm"),
                    ("PCK@5px (original image)", "pck_5px"), ("2-D error (px)", "error_2d_px"),
                    ("coarse MPJPE (mm)", "mpjpe_coarse"), ("prediction spread (m)", "pred_std"),
                    ("ground-truth spread (m)", "gt_std"), ("spread ratio", "std_ratio")):
        row(name, k, None)
    x = r["canonical_crossfit"]
    lines.append(f"canonical hand cross-fitted on the evaluated frames (even/odd halves): PA {x['pa_mpjpe']:.4f} mm; "
                 f"model/crossfit {r['ratio_to_canonical']['pa_mpjpe_vs_crossfit']:.3f}, model better on "
                 f"{100 * r['frames_beating_canonical']['pa_mpjpe_vs_crossfit']:.1f}% of frames")
    lines.append("canonical = generalised-Procrustes mean hand (hand's own frame); root-relative row compares with it "
                 "at each frame's true orientation; cam-mean = camera-frame average pose (not a baseline for PA)")
    if "results_file" in r:
        lines.append(f"wrote result file {r['results_file']}")
    return "\n".join(lines)


def report_json(r: dict) -> str:
    return json.dumps(r, indent=2, sort_keys=True)
