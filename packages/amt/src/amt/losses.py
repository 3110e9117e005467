"""Training losses, all computed in fp32 (outside autocast), each returned for logging."""
from __future__ import annotations

import torch

from .model import no_autocast, project_points

LOSS_TERMS = ["hand_pose", "hand_pose_refined", "hand_2d", "root", "object_position", "diversity",
              "physics_penetration"]


def diversity_loss(pred_rel: torch.Tensor, gt_rel: torch.Tensor, target_ratio: float) -> torch.Tensor:
    """Bounded in [0, 1]: zero while the batch spread of predictions is at least ``target_ratio`` x the ground
    truth's, rising linearly to 1 as predictions collapse to a constant. Never rewards spread beyond that (the
    original's unbounded -log pushed predictions apart without limit)."""
    B = pred_rel.shape[0]
    if B < 2 or target_ratio <= 0:
        return pred_rel.sum() * 0
    ps = pred_rel.reshape(B, -1).std(0, unbiased=False).mean()
    gs = gt_rel.reshape(B, -1).std(0, unbiased=False).mean().detach()
    return torch.relu(1 - ps / (target_ratio * gs + 1e-9))


def penetration_loss(pred_rel: torch.Tensor, obj_rel: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Mean depth (m) by which predicted joints enter the grasped object's surface (a sphere with a closed-form
    signed distance: |x - c| - r). Samples without a known surface (radius 0) contribute nothing."""
    has = radius > 0
    if not has.any():
        return pred_rel.sum() * 0
    sdf = (pred_rel[has] - obj_rel[has, None]).norm(dim=-1) - radius[has, None]
    return torch.relu(-sdf).mean()


def compute_losses(out: dict, batch: dict, weights: dict, target_ratio: float) -> tuple[torch.Tensor, dict]:
    """Weighted total and every term (unweighted, detached) for logging."""
    with no_autocast():
        gt_rel, gt_root, K = batch["joints_rel"].float(), batch["root"].float(), batch["K"].float()
        S = batch["image"].shape[-1]
        coarse = out["joints_rel"].float()
        final = out["refined"][-1].float() if out["refined"] else coarse
        terms = {"hand_pose": (coarse - gt_rel).abs().mean()}
        if out["refined"]:
            terms["hand_pose_refined"] = torch.stack([(r.float() - gt_rel).abs().mean() for r in out["refined"]]).mean()
        else:
            terms["hand_pose_refined"] = coarse.sum() * 0
        root = out["root"].float()
        uv = project_points(K, final + root[:, None])
        terms["hand_2d"] = ((uv - batch["joints_2d"].float()).abs() / S).clamp(max=1.0).mean()
        terms["root"] = (root - gt_root).abs().mean()
        # frames without an object pose (own data) do not pull the object branch towards a made-up target
        valid = batch.get("obj_valid", torch.ones_like(gt_root[:, 0])).float()
        obj_err = (out["obj_rel"].float() - batch["obj_rel"].float()).abs().mean(-1)
        terms["object_position"] = (obj_err * valid).sum() / valid.sum().clamp_min(1.0)
        terms["diversity"] = diversity_loss(final, gt_rel, target_ratio)
        terms["physics_penetration"] = penetration_loss(final, batch["obj_rel"].float(), batch["obj_radius"].float())
        total = sum(weights[k] * terms[k] for k in LOSS_TERMS if weights.get(k, 0) > 0)
        if not torch.is_tensor(total):
            total = coarse.sum() * 0
    return total, {k: v.detach() for k, v in terms.items()}
