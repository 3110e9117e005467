"""Pure metric functions (tensors in, numbers out), following the DexYCB toolkit's HPE evaluation.

Conventions: joints in millimetres for reported numbers; MPJPE = mean over keypoints of the per-keypoint mean
Euclidean error (all 21 visible, so it equals the plain mean); PCK uses ``<=``; AUC = trapezoid of the
per-keypoint PCK curve over 100 thresholds in [0, 50] mm divided by 50, averaged over keypoints (toolkit
``EvalUtil.get_measures``). Root-relative: subtract each set's own joint 0 (wrist). Procrustes: similarity
alignment (rotation with reflection fix, uniform scale, translation) of the prediction onto the ground truth.
"""
from __future__ import annotations

import numpy as np
import torch

AUC_MIN, AUC_MAX, AUC_STEPS = 0.0, 50.0, 100


def procrustes_align(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Batched similarity alignment of ``pred`` [B,N,3] onto ``gt`` [B,N,3] (Umeyama), in float64."""
    X, Y = pred.double(), gt.double()
    mx, my = X.mean(1, keepdim=True), Y.mean(1, keepdim=True)
    X0, Y0 = X - mx, Y - my
    H = X0.transpose(1, 2) @ Y0                                  # [B,3,3]
    U, S, Vh = torch.linalg.svd(H)
    V = Vh.transpose(1, 2)
    d = torch.sign(torch.linalg.det(V @ U.transpose(1, 2)))
    d = torch.where(d == 0, torch.ones_like(d), d)
    Dm = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = V @ Dm @ U.transpose(1, 2)
    scale = (S * torch.diagonal(Dm, dim1=1, dim2=2)).sum(-1) / (X0 ** 2).sum((1, 2)).clamp_min(1e-30)
    return scale[:, None, None] * X0 @ R.transpose(1, 2) + my


def joint_errors(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-joint Euclidean errors [B,N]."""
    return (pred.double() - gt.double()).norm(dim=-1)


def root_relative(x: torch.Tensor) -> torch.Tensor:
    return x - x[:, :1]


def mpjpe(pred, gt) -> float:
    return float(joint_errors(pred, gt).mean(0).mean())


def pa_mpjpe(pred, gt) -> float:
    return float(joint_errors(procrustes_align(pred, gt), gt).mean(0).mean())


def pck_curve(errors: torch.Tensor, thresholds: np.ndarray) -> np.ndarray:
    """Per-keypoint PCK [len(thresholds), N] from errors [B,N] (``<=``, as the toolkit)."""
    e = errors.double().cpu().numpy()
    return np.stack([(e <= t).mean(0) for t in thresholds])


def auc(errors: torch.Tensor, lo: float = AUC_MIN, hi: float = AUC_MAX, steps: int = AUC_STEPS) -> float:
    """The toolkit's AUC: per keypoint trapezoid of PCK over linspace(lo, hi, steps) / (hi - lo), then mean."""
    t = np.linspace(lo, hi, steps)
    curve = pck_curve(errors, t)
    areas = [np.trapezoid(curve[:, k], t) / np.trapezoid(np.ones_like(t), t) for k in range(curve.shape[1])]
    return float(np.mean(areas))


def pck(errors: torch.Tensor, threshold: float) -> float:
    """Fraction of joints with error <= threshold."""
    return float((errors <= threshold).double().mean())


def hand_metrics(pred_mm: torch.Tensor, gt_mm: torch.Tensor, pred_uv: torch.Tensor | None = None,
                 gt_uv: torch.Tensor | None = None, pck_px: float = 5.0, pck_3d_mm=(20, 30, 40, 50)) -> dict:
    """All reported hand metrics for absolute camera-frame joints [B,21,3] in mm.

    ``pred_uv``/``gt_uv`` [B,21,2] are 640x480 image pixels (ground-truth ``joint_2d``); -1 entries are masked.
    """
    e_abs = joint_errors(pred_mm, gt_mm)
    e_rr = joint_errors(root_relative(pred_mm), root_relative(gt_mm))
    e_pa = joint_errors(procrustes_align(pred_mm, gt_mm), gt_mm)
    out = {
        "mpjpe": float(e_rr.mean(0).mean()), "mpjpe_abs": float(e_abs.mean(0).mean()),
        "pa_mpjpe": float(e_pa.mean(0).mean()),
        "auc_rr": auc(e_rr), "auc_abs": auc(e_abs), "auc_pa": auc(e_pa),
    }
    for t in pck_3d_mm:
        out[f"pck3d_{t}mm"] = pck(e_rr, t)
    if pred_uv is not None and gt_uv is not None:
        valid = (gt_uv >= 0).all(-1)
        e2 = (pred_uv.double() - gt_uv.double()).norm(dim=-1)
        out["pck_5px" if pck_px == 5 else f"pck_{pck_px:g}px"] = float((e2[valid] <= pck_px).double().mean())
        out["error_2d_px"] = float(e2[valid].mean())
    return out


def spread(x_rel: torch.Tensor) -> float:
    """Batch standard deviation of root-relative joints, averaged over the 63 coordinates (same units as x)."""
    return float(x_rel.double().reshape(x_rel.shape[0], -1).std(0, unbiased=False).mean())


def collapse_monitor(pred_rel: torch.Tensor, gt_rel: torch.Tensor, threshold: float = 0.001) -> tuple[dict, str | None]:
    """Prediction spread vs ground-truth spread (metres); a warning string when the guide's alarm fires."""
    p, g = spread(pred_rel), spread(gt_rel)
    stats = {"pred_std": p, "gt_std": g, "std_ratio": p / g if g > 0 else float("nan")}
    warning = None
    if p < threshold:
        warning = (f"hand pose std {p:.5f} < {threshold}: constant predictions (mode collapse). Increase "
                   f"loss_weights.diversity, check model.use_sigma_reparam, or add training.input_noise")
    return stats, warning
