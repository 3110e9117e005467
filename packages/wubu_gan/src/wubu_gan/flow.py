"""Optical flow for the motion branch (RAFT when cached and the frames suit it, else a classical fallback
computed by the data pipeline), the GAAD region sampler, and per-region flow statistics."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .gaad import _supports, region_crops, region_sampling_matrices


def rois_for(boxes: torch.Tensor, n_images: int) -> torch.Tensor:
    """(n_images * R, 5) RoIs [image index, x1, y1, x2, y2] for the same R boxes on every image."""
    idx = torch.arange(n_images, device=boxes.device, dtype=boxes.dtype).repeat_interleave(boxes.shape[0])
    return torch.cat([idx[:, None], boxes.repeat(n_images, 1)], 1)


RAFT_MIN_SIDE = 128  # RAFT's 1/8 feature maps must survive its 4-level correlation pyramid
RAFT_FILES = {"raft_small": "raft_small_C_T_V2-01064c6d.pth", "raft_large": "raft_large_C_T_SKHT_V2-ff5fadd5.pth"}


def cached_raft_weights(net_type: str) -> Path | None:
    """The RAFT weight file if it is already in the local torch hub cache (never downloads)."""
    try:
        from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights

        weights = Raft_Small_Weights.C_T_V2 if net_type == "raft_small" else Raft_Large_Weights.C_T_SKHT_V2
        name = weights.url.rsplit("/", 1)[-1]
    except Exception:
        name = RAFT_FILES[net_type]
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    return path if path.is_file() else None


def decide_flow(cfg, image_h: int, image_w: int) -> tuple[str, str]:
    """("raft", why) when RAFT weights are cached and the frame size suits RAFT, else (fallback, why).
    Decided before any layer is sized (the original sized WuBu-T for motion and then dropped the branch)."""
    if not cfg.use_wubu_motion_branch:
        return "none", "motion branch off"
    if image_h % 8 or image_w % 8 or min(image_h, image_w) < RAFT_MIN_SIDE:
        return cfg.flow_fallback, (f"RAFT needs frame sides divisible by 8 and at least {RAFT_MIN_SIDE} px "
                                   f"(its correlation pyramid), got {image_h}x{image_w}")
    path = cached_raft_weights(cfg.optical_flow_net_type)
    if path is None:
        return cfg.flow_fallback, (f"{cfg.optical_flow_net_type} weights are not in the local torch cache "
                                   f"({torch.hub.get_dir()}/checkpoints)")
    return "raft", f"{cfg.optical_flow_net_type} weights found at {path}"


class RaftFlow(nn.Module):
    def __init__(self, net_type: str, freeze: bool):
        super().__init__()
        from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights, raft_large, raft_small

        if net_type == "raft_small":
            self.net = raft_small(weights=Raft_Small_Weights.C_T_V2, progress=False)
        else:
            self.net = raft_large(weights=Raft_Large_Weights.C_T_SKHT_V2, progress=False)
        self.freeze = freeze
        if freeze:
            self.net.requires_grad_(False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, T, C, H, W) in [-1, 1] -> flow (B, T-1, 2, H, W)."""
        b, t = frames.shape[:2]
        a = frames[:, :-1].reshape(-1, *frames.shape[2:]).float()
        c = frames[:, 1:].reshape(-1, *frames.shape[2:]).float()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            flow = self.net(a, c, num_flow_updates=6)[-1]
        return flow.reshape(b, t - 1, 2, *frames.shape[-2:])


class RegionSampler(nn.Module):
    """Crops of fixed GAAD boxes resized to (out_h, out_w), for a batch of maps: the numbers of torchvision's
    ``roi_align(..., sampling_ratio=-1, aligned=True)`` (an area-weighted, antialiased crop-resize), computed as
    two cached matrix products per batch instead of per-sample bilinear gathers (see gaad.region_crops)."""

    def __init__(self, boxes: torch.Tensor, height: int, width: int, out_h: int, out_w: int):
        super().__init__()
        wy, wx = region_sampling_matrices(boxes, height, width, out_h, out_w)
        self.register_buffer("wy", wy, persistent=False)
        self.register_buffer("wx", wx, persistent=False)
        # Per-box supports (work ~ box area) beat the dense products (work ~ R x frame) at every size measured.
        self.supports = _supports(wy, wx)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, R, C, out_h, out_w)."""
        return region_crops(maps, self.wy, self.wx, self.supports)


def flow_statistics(flow: torch.Tensor, sampler: RegionSampler, components) -> torch.Tensor:
    """Per-box flow statistics. flow (N, 2, H, W) px -> (N, R, n_stats) with mag_mean, angle_mean (cos, sin),
    mag_std, angle_std (circular). Region means: a 1x1 RegionSampler (roi_align's adaptive box average)."""
    dx, dy = flow[:, 0], flow[:, 1]
    mag = torch.sqrt(dx * dx + dy * dy + 1e-6)  # +eps: sqrt has no gradient at exactly zero flow
    cos, sin = dx / mag, dy / mag
    maps = torch.stack([mag, mag * mag, cos, sin], 1)
    pooled = sampler(maps).reshape(flow.shape[0], -1, 4)
    m, m2, c, s = pooled.unbind(-1)
    out = []
    for name in components:
        if name == "mag_mean":
            out.append(m[..., None])
        elif name == "angle_mean":
            out.append(torch.stack([c, s], -1))
        elif name == "mag_std":
            out.append((m2 - m * m).clamp_min(0).add(1e-6).sqrt()[..., None])
        elif name == "angle_std":
            r = torch.sqrt(c * c + s * s).clamp(1e-4, 1.0)
            out.append(torch.sqrt(-2 * torch.log(r))[..., None])
    return torch.cat(out, -1)


def num_flow_stats(components) -> int:
    return sum(2 if c == "angle_mean" else 1 for c in components)
