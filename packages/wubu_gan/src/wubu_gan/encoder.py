"""Encoder: GAAD regions -> WuBu-S, flow statistics -> WuBu-M, frames over time -> WuBu-T -> mu, logvar."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .flow import RaftFlow, RegionSampler, flow_statistics, num_flow_stats
from .gaad import gaad_boxes
from .hyperbolic import WuBuStack

LOGVAR_RANGE = (-10.0, 10.0)  # the original never clamped logvar, so exp(logvar) could overflow the KL


class RegionEncoder(nn.Module):
    """Frame -> per-GAAD-region tangent vectors: shallow CNN + roi_align, or pixel crops (roi_align on the frame)."""

    def __init__(self, cfg, boxes: torch.Tensor):
        super().__init__()
        self.use_roi = cfg.encoder_use_roi_align
        self.register_buffer("boxes", boxes, persistent=False)
        c = cfg.num_channels
        if self.use_roi:
            ch = cfg.encoder_shallow_cnn_channels
            self.cnn = nn.Sequential(nn.Conv2d(c, ch, 3, 1, 1), nn.GroupNorm(math.gcd(8, ch), ch), nn.GELU())
            self.out_hw = (cfg.encoder_roi_align_output_h, cfg.encoder_roi_align_output_w)
            flat = ch * self.out_hw[0] * self.out_hw[1]
        else:
            self.cnn = None
            self.out_hw = (cfg.encoder_pixel_patch_size, cfg.encoder_pixel_patch_size)
            flat = c * self.out_hw[0] * self.out_hw[1]
        self.proj = nn.Linear(flat, cfg.encoder_initial_tangent_dim)
        self.sampler = RegionSampler(boxes, cfg.image_h, cfg.image_w, *self.out_hw)
        self.region_embed = nn.Parameter(torch.zeros(boxes.shape[0], cfg.encoder_initial_tangent_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, R, tangent_dim)."""
        feat = self.cnn(images) if self.cnn is not None else images
        # roi_align's adaptive sampling: ceil(box/out) samples per bin, an area-weighted (antialiased) crop-resize.
        regions = self.sampler(feat).reshape(images.shape[0], self.boxes.shape[0], -1)
        return self.proj(regions) + self.region_embed


class Encoder(nn.Module):
    def __init__(self, cfg, flow_kind: str = "none"):
        super().__init__()
        H, W = cfg.image_h, cfg.image_w
        boxes = gaad_boxes(H, W, cfg.gaad_num_regions, cfg.gaad_decomposition_type, cfg.gaad_min_size_px)
        self.regions = RegionEncoder(cfg, boxes)
        s = cfg.stack("s")
        s_out = s["dims"][-1]
        self.wubu_s = WuBuStack(cfg.encoder_initial_tangent_dim, s_out, **s)
        # Region outputs are concatenated, not averaged: the mean discarded which region saw what.
        frame_dim = cfg.wubu_t_hyperbolic_dims[0]
        self.frame_proj = nn.Linear(cfg.gaad_num_regions * s_out, frame_dim)
        self.use_motion = flow_kind != "none"
        self.flow_components = list(cfg.flow_stats_components)
        t_in = frame_dim
        if self.use_motion:
            mboxes = gaad_boxes(H, W, cfg.gaad_motion_num_regions, cfg.gaad_motion_decomposition_type, cfg.gaad_min_size_px)
            self.register_buffer("motion_boxes", mboxes, persistent=False)
            self.motion_sampler = RegionSampler(mboxes, H, W, 1, 1)
            m = cfg.stack("m")
            self.wubu_m = WuBuStack(num_flow_stats(self.flow_components), m["dims"][-1], **m)
            motion_dim = cfg.wubu_m_hyperbolic_dims[0]
            self.motion_proj = nn.Linear(cfg.gaad_motion_num_regions * m["dims"][-1], motion_dim)
            self.motion_start = nn.Parameter(torch.zeros(motion_dim))  # frame 0 has no previous frame
            self.flow_scale = 4.0 / min(H, W) * 16  # flow in px -> O(1) numbers
            self.raft = RaftFlow(cfg.optical_flow_net_type, cfg.freeze_flow_net) if flow_kind == "raft" else None
            t_in += motion_dim
        t = cfg.stack("t")
        self.wubu_t = WuBuStack(t_in, t["dims"][-1], temporal=True, **t)
        self.attn = nn.Linear(t["dims"][-1], 1)  # attention pooling over time (the original kept only the last step)
        self.fc_mu = nn.Linear(t["dims"][-1], cfg.latent_dim)
        self.fc_logvar = nn.Linear(t["dims"][-1], cfg.latent_dim)
        # Start with a narrow posterior (sigma ~ 0.05): at logvar = 0 the sampling noise (sigma 1) drowned mu's
        # input-dependent part (~0.2), the decoder could only learn the mean frame, and a 160-step run with the
        # guide's phase-1 settings never left it. The KL term widens sigma again as lambda_KL grows.
        nn.init.constant_(self.fc_logvar.bias, -6.0)

    def motion_features(self, frames: torch.Tensor, flow: torch.Tensor | None) -> torch.Tensor:
        b, t = frames.shape[:2]
        if self.raft is not None:
            flow = self.raft(frames)
        if flow is None:
            raise ValueError("the motion branch needs flow: the data pipeline provides it when the branch is on")
        stats = flow_statistics(flow.reshape(-1, *flow.shape[2:]).float() * self.flow_scale, self.motion_sampler,
                                self.flow_components)                                # (B*(T-1), Rm, n)
        m = self.wubu_m(stats)                                                       # (B*(T-1), Rm, m_out)
        m = self.motion_proj(m.reshape(b, t - 1, -1))                                # (B, T-1, motion_dim)
        return torch.cat([self.motion_start.expand(b, 1, -1), m], 1)

    def forward(self, frames: torch.Tensor, flow: torch.Tensor | None = None):
        """frames (B, T, C, H, W) in [-1, 1]; flow (B, T-1, 2, H, W) px or None -> mu, logvar (B, latent)."""
        b, t = frames.shape[:2]
        r = self.regions(frames.reshape(b * t, *frames.shape[2:]))                  # (B*T, R, D)
        s = self.wubu_s(r)                                                           # (B*T, R, s_out)
        per_frame = self.frame_proj(s.reshape(b, t, -1))                             # (B, T, frame_dim)
        if self.use_motion:
            per_frame = torch.cat([per_frame, self.motion_features(frames, flow)], -1)
        h = self.wubu_t(per_frame)                                                   # (B, T, t_out), mixes over T
        weights = torch.softmax(self.attn(h), 1)
        pooled = (weights * h).sum(1)
        return self.fc_mu(pooled), self.fc_logvar(pooled).clamp(*LOGVAR_RANGE)
