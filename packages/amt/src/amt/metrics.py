"""Pure metric functions (tensors in, numbers out), following the DexYCB toolkit's HPE evaluation.

Conventions: joints in millimetres for reported numbers; MPJPE = mean over keypoints of the per-keypoint mean
Euclidean error (all 21 visible, so it equals the plain mean); PCK uses ``<=``; AUC = trapezoid of the
per-keypoint PCK curve over 100 thresholds in [0, 50] mm divided by 50, averaged over keypoints (toolkit
``EvalUtil.get_measures``). Root-relative: subtract each set's own joint 0 (wrist). Procrustes: similarity
alignment (orthogonal map, uniform scale, translation) of the prediction onto the ground truth, in two forms:
``pa_mpjpe`` is the toolkit's (``align_w_scale``: scipy ``orthogonal_procrustes``, which allows a reflection),
``pa_mpjpe_proper`` the literature's Umeyama with the reflection fix (a proper rotation).
"""
from __future__ import annotations

import numpy as np
import torch

AUC_MIN, AUC_MAX, AUC_STEPS = 0.0, 50.0, 100


_JACOBI_PAIRS = ((0, 1), (0, 2), (1, 2))


def symmetric_eig3(A: torch.Tensor, sweeps: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues [B,3] and eigenvectors (columns of [B,3,3]) of symmetric 3x3 matrices by cyclic Jacobi.

    Each rotation is a handful of element-wise ops on [B] vectors, so the whole batch costs ~15 x 30 small
    kernels instead of one LAPACK call per matrix (batched ``eigh``/``svd`` loop over matrices on CPU). Jacobi
    converges quadratically: 4 sweeps reach fp64 round-off for 3x3 (tested), 5 leave margin.
    """
    a = {(i, j): A[:, i, j] for i in range(3) for j in range(i, 3)}
    one, zero = torch.ones_like(a[(0, 0)]), torch.zeros_like(a[(0, 0)])
    V = [[one if i == j else zero for j in range(3)] for i in range(3)]
    for _ in range(sweeps):
        for p, q in _JACOBI_PAIRS:
            apq, d = a[(p, q)], a[(q, q)] - a[(p, p)]
            # tan of the rotation angle that zeroes a_pq (the smaller root, for stability); 0 when a_pq == 0
            t = 2 * apq * torch.where(d >= 0, 1.0, -1.0) / (d.abs() + torch.sqrt(d * d + 4 * apq * apq)).clamp_min(1e-300)
            c = torch.rsqrt(t * t + 1)
            s = t * c
            r = 3 - p - q
            arp, arq = a[(min(r, p), max(r, p))], a[(min(r, q), max(r, q))]
            a[(p, p)], a[(q, q)], a[(p, q)] = a[(p, p)] - t * apq, a[(q, q)] + t * apq, zero
            a[(min(r, p), max(r, p))], a[(min(r, q), max(r, q))] = c * arp - s * arq, s * arp + c * arq
            for row in V:
                row[p], row[q] = c * row[p] - s * row[q], s * row[p] + c * row[q]
    evals = torch.stack([a[(0, 0)], a[(1, 1)], a[(2, 2)]], -1)
    return evals, torch.stack([torch.stack(row, -1) for row in V], -2)


def procrustes_align(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Batched similarity alignment of ``pred`` [B,N,3] onto ``gt`` [B,N,3] (Umeyama), in float64.

    H = X0^T Y0 = U S V^T; the best proper rotation is V diag(1, 1, det(V U^T)) U^T. Computed without an SVD:
    V's two leading columns from the eigenvectors of H^T H (:func:`symmetric_eig3`), u_i = H v_i / |H v_i|, and
    the third columns as cross products, which makes both frames proper rotations, so R = V' U'^T already is the
    reflection-fixed rotation and tr(R H) = s1 + s2 +- s3 is the scale's numerator. Rank-deficient H (planar or
    collapsed predictions) stays finite: a planar set only needs s1, s2; a collapsed one gets scale 0.
    """
    X, Y = pred.double(), gt.double()
    my = Y.mean(1, keepdim=True)
    X0, Y0 = X - X.mean(1, keepdim=True), Y - my
    H = X0.transpose(1, 2) @ Y0                                  # [B,3,3]
    evals, V = symmetric_eig3(H.transpose(1, 2) @ H)
    order = evals.argsort(-1, descending=True)
    V = V.gather(2, order[:, None, :].expand(-1, 3, -1))
    v1, v2 = V[..., 0], V[..., 1]
    u1 = (H @ v1[..., None])[..., 0]
    u1 = u1 / u1.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    u2 = (H @ v2[..., None])[..., 0]
    u2 = u2 - (u2 * u1).sum(-1, keepdim=True) * u1              # Gram-Schmidt against round-off
    u2 = u2 / u2.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    U = torch.stack([u1, u2, torch.linalg.cross(u1, u2)], -1)
    V = torch.stack([v1, v2, torch.linalg.cross(v1, v2)], -1)
    R = V @ U.transpose(1, 2)
    scale = (R * H.transpose(1, 2)).sum((1, 2)) / (X0 * X0).sum((1, 2)).clamp_min(1e-30)
    return scale[:, None, None] * (X0 @ R.transpose(1, 2)) + my


def procrustes_align_toolkit(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """The dex-ycb-toolkit's / FreiHAND's ``align_w_scale``, batched in float64: both sets centred and scaled to
    unit Frobenius norm, the orthogonal map of scipy's ``orthogonal_procrustes`` (U V^T of the SVD of
    gt0^T pred0, so a reflection is allowed when it fits better), scale = sum of the singular values."""
    X, Y = pred.double(), gt.double()
    t1, t2 = Y.mean(1, keepdim=True), X.mean(1, keepdim=True)
    Y0, X0 = Y - t1, X - t2
    s1 = Y0.flatten(1).norm(dim=1)[:, None, None] + 1e-8
    s2 = X0.flatten(1).norm(dim=1)[:, None, None] + 1e-8
    Y0, X0 = Y0 / s1, X0 / s2
    U, S, Vh = torch.linalg.svd(Y0.transpose(1, 2) @ X0)
    R = U @ Vh                                                   # maps gt onto pred: gt0 R ~ pred0
    return (X0 @ R.transpose(1, 2)) * S.sum(-1)[:, None, None] * s1 + t1


def joint_errors(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-joint Euclidean errors [B,N]."""
    return (pred.double() - gt.double()).norm(dim=-1)


def root_relative(x: torch.Tensor) -> torch.Tensor:
    return x - x[:, :1]


def mpjpe(pred, gt) -> float:
    return float(joint_errors(pred, gt).mean(0).mean())


def pa_mpjpe(pred, gt) -> float:
    """The toolkit's PA-MPJPE (reflections allowed)."""
    return float(joint_errors(procrustes_align_toolkit(pred, gt), gt).mean(0).mean())


def pa_mpjpe_proper(pred, gt) -> float:
    """PA-MPJPE with a proper rotation (Umeyama with the reflection fix)."""
    return float(joint_errors(procrustes_align(pred, gt), gt).mean(0).mean())


def frame_errors(pred_mm: torch.Tensor, gt_mm: torch.Tensor) -> dict:
    """Per-frame mean joint errors [B] (numpy): root-relative, toolkit PA and proper-rotation PA."""
    e = {"mpjpe": joint_errors(root_relative(pred_mm), root_relative(gt_mm)),
         "pa_mpjpe": joint_errors(procrustes_align_toolkit(pred_mm, gt_mm), gt_mm),
         "pa_mpjpe_proper": joint_errors(procrustes_align(pred_mm, gt_mm), gt_mm)}
    return {k: v.mean(1).cpu().numpy() for k, v in e.items()}


def pck_curve(errors: torch.Tensor, thresholds: np.ndarray) -> np.ndarray:
    """Per-keypoint PCK [len(thresholds), N] from errors [B,N] (``<=``, as the toolkit)."""
    e = errors.double().cpu().numpy()
    return np.stack([(e <= t).mean(0) for t in thresholds])


def auc(errors: torch.Tensor, lo: float = AUC_MIN, hi: float = AUC_MAX, steps: int = AUC_STEPS) -> float:
    """The toolkit's AUC: per keypoint trapezoid of PCK over linspace(lo, hi, steps) / (hi - lo), then mean."""
    t = np.linspace(lo, hi, steps)
    curve = pck_curve(errors, t)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # NumPy >= 2 renamed it
    areas = [trapezoid(curve[:, k], t) / trapezoid(np.ones_like(t), t) for k in range(curve.shape[1])]
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
    e_pa = joint_errors(procrustes_align_toolkit(pred_mm, gt_mm), gt_mm)
    e_pp = joint_errors(procrustes_align(pred_mm, gt_mm), gt_mm)
    out = {
        "mpjpe": float(e_rr.mean(0).mean()), "mpjpe_abs": float(e_abs.mean(0).mean()),
        "pa_mpjpe": float(e_pa.mean(0).mean()), "pa_mpjpe_proper": float(e_pp.mean(0).mean()),
        "auc_rr": auc(e_rr), "auc_abs": auc(e_abs), "auc_pa": auc(e_pa), "auc_pa_proper": auc(e_pp),
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


def collapse_monitor(pred_rel: torch.Tensor, gt_rel: torch.Tensor, threshold: float = 0.001,
                     ratio_threshold: float = 0.25) -> tuple[dict, str | None]:
    """Prediction spread vs ground-truth spread (metres) and a collapse flag, with a warning string.

    The spread ratio (prediction spread / ground-truth spread over the batch) is the signal to watch: ~1 when
    predictions vary as much as the hands do, falling towards 0 as they collapse to one pose. It warns when the
    ratio drops below ``ratio_threshold`` (predictions vary less than a quarter as much as the hands: a constant
    is creeping in) or when the spread itself is below the guide's absolute ``threshold`` (0.001 m). The bounded
    diversity hinge is 0 in every healthy run by design, so it cannot serve as this alarm.
    """
    p, g = spread(pred_rel), spread(gt_rel)
    ratio = p / g if g > 0 else float("nan")
    warning = None
    if p < threshold:
        warning = (f"hand pose std {p:.5f} < {threshold}: constant predictions (mode collapse). Increase "
                   f"loss_weights.diversity, check model.use_sigma_reparam, or add training.input_noise")
    elif ratio == ratio and ratio < ratio_threshold:
        warning = (f"prediction spread is {ratio:.2f}x the ground truth's (< {ratio_threshold}): predictions are "
                   f"collapsing towards one pose. Increase loss_weights.diversity or training.diversity_target_ratio, "
                   f"or add training.input_noise")
    stats = {"pred_std": p, "gt_std": g, "std_ratio": ratio, "collapse_warning": float(warning is not None)}
    return stats, warning
