"""Discriminators (spatio-temporal 3-D CNN, regional GAAD CNN) and what they score (disc_input)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from .film import FiLM, RegionCondition
from .flow import RegionSampler
from .gaad import gaad_boxes


def _sn(module: nn.Module, on: bool) -> nn.Module:
    return spectral_norm(module) if on else module


class SpatioTemporalDisc(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        H, W, T, C = cfg.image_h, cfg.image_w, disc_frames(cfg), disc_channels(cfg)
        sn, self.film_on = cfg.disc_apply_spectral_norm, cfg.disc_use_gaad_film_condition
        n_blocks = max(1, int(math.log2(min(H, W) / 4)))
        kt = min(cfg.disc_temporal_kernel_size, T)
        if self.film_on:  # per-sample condition: GAAD region conditions of the clip's frames, averaged
            boxes = gaad_boxes(H, W, cfg.gaad_num_regions, cfg.gaad_decomposition_type, cfg.gaad_min_size_px)
            self.cond_sampler = RegionSampler(boxes, H, W, 4, 4)
            self.region_cond = RegionCondition(boxes, H, W, C, cfg.disc_gaad_condition_dim_disc)
        self.convs, self.norms, self.films = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        ch_in, t = C, T
        for i in range(n_blocks):
            ch = min(cfg.disc_base_disc_channels * 2 ** i, cfg.disc_max_disc_channels)
            st = 2 if (i == 0 and T > 3) else 1
            self.convs.append(_sn(nn.Conv3d(ch_in, ch, (kt, 4, 4), (st, 2, 2), (kt // 2, 1, 1), bias=False), sn))
            self.norms.append(nn.InstanceNorm3d(ch, affine=not self.film_on))
            if self.film_on:
                self.films.append(FiLM(cfg.disc_gaad_condition_dim_disc, ch))
            t = (t + 2 * (kt // 2) - kt) // st + 1
            ch_in = ch
        # --disc_output patch (ours): a 1x1x1 conv scores every (time, row, column) cell of the last feature map
        # (PatchGAN-style); the loss averages over cells. An option, not in the recipe (measurements: README).
        self.patch_output = getattr(cfg, "disc_output", "global") == "patch"
        if self.patch_output:
            self.head = _sn(nn.Conv3d(ch_in, 1, 1), sn)
            self.t_out = t
            return
        flat = ch_in * t
        if flat <= 192:
            self.head = nn.Sequential(_sn(nn.Linear(flat, 1), sn))
        else:
            hid = int(min(max(flat // 2, cfg.disc_min_hidden_fc_dim), cfg.disc_max_hidden_fc_dim))
            self.head = nn.Sequential(_sn(nn.Linear(flat, hid), sn), nn.LeakyReLU(0.2), _sn(nn.Linear(hid, 1), sn))
        self.t_out = t

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T_d, C, H, W) -> logits (B,), or (B, cells) with --disc_output patch; T_d = disc_frames(cfg)."""
        x = frames.permute(0, 2, 1, 3, 4)
        cond = None
        if self.film_on:
            b, t = frames.shape[:2]
            crops = self.cond_sampler(frames.reshape(b * t, *frames.shape[2:]).float())   # (B*T, R, C, 4, 4)
            cond = self.region_cond(crops).reshape(b, t * crops.shape[1], -1).mean(1).to(x.dtype)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = norm(conv(x))
            if self.film_on:
                x = self.films[i](x, cond)
            x = F.leaky_relu(x, 0.2)
        if self.patch_output:
            return self.head(x).flatten(1)  # (B, cells)
        x = F.adaptive_avg_pool3d(x, (self.t_out, 1, 1)).flatten(1)
        return self.head(x).squeeze(-1)


class RegionalDisc(nn.Module):
    """GAAD crops (roi_align to disc_patch_size) of every predicted frame -> 2-D CNN -> mean over regions.
    With --disc_see_context each crop stacks the context frames' crops along channels."""

    def __init__(self, cfg):
        super().__init__()
        H, W = cfg.image_h, cfg.image_w
        sn, self.film_on = cfg.disc_apply_spectral_norm, cfg.disc_use_gaad_film_condition
        boxes = gaad_boxes(H, W, cfg.gaad_num_regions, cfg.gaad_decomposition_type, cfg.gaad_min_size_px)
        self.register_buffer("boxes", boxes, persistent=False)
        self.patch = cfg.disc_patch_size
        self.sampler = RegionSampler(boxes, H, W, self.patch, self.patch)
        self.convs, self.films = nn.ModuleList(), nn.ModuleList()
        self.context_frames = cfg.num_input_frames if cfg.disc_see_context else 0
        ch_in = disc_channels(cfg) * (1 + self.context_frames)
        if self.film_on:  # per-sample, per-region: each crop is modulated by its own box and content
            self.region_cond = RegionCondition(boxes, H, W, ch_in, cfg.disc_gaad_condition_dim_disc)
        for ch in cfg.disc_cnn_channels_2d:
            self.convs.append(_sn(nn.Conv2d(ch_in, ch, 4, 2, 1), sn))
            if self.film_on:
                self.films.append(FiLM(cfg.disc_gaad_condition_dim_disc, ch))
            ch_in = ch
        self.head = _sn(nn.Linear(ch_in, 1), sn)
        self.patch_output = getattr(cfg, "disc_output", "global") == "patch"  # per-region logits, not their mean

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        k = self.context_frames
        if k:  # each predicted frame with the context frames stacked on its channels
            ctx, pred = frames[:, :k], frames[:, k:]
            frames = torch.cat([ctx.flatten(1, 2).unsqueeze(1).expand(-1, pred.shape[1], -1, -1, -1), pred], 2)
        b, t = frames.shape[:2]
        imgs = frames.reshape(b * t, *frames.shape[2:])
        crops = self.sampler(imgs)  # (B*T, R, C, patch, patch)
        cond = self.region_cond(crops.float()).flatten(0, 1).to(crops.dtype) if self.film_on else None
        x = crops.flatten(0, 1)  # (B*T*R, C, patch, patch)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.film_on:
                x = self.films[i](x, cond)
            x = F.leaky_relu(x, 0.2)
        x = x.mean((2, 3))
        logits = self.head(x).reshape(b, -1)  # one per (predicted frame, region)
        return logits if self.patch_output else logits.mean(1)


def disc_frames(cfg) -> int:
    """Frames D scores per clip: the predicted ones, preceded by the input frames with --disc_see_context
    (a conditional D: "is this a plausible continuation of these frames?"). A D that sees the predicted frame
    alone cannot tell a copy of the last input frame from the real next one, so it sat at chance (0.69)."""
    return cfg.num_predict_frames + (cfg.num_input_frames if cfg.disc_see_context else 0)


def disc_channels(cfg) -> int:
    """Channels per frame D reads: RGB, plus the difference to the previous frame with --disc_frame_diff."""
    return cfg.num_channels * (2 if getattr(cfg, "disc_frame_diff", False) else 1)


def disc_input(cfg, frames: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """What D scores: ``predicted`` (B, T_pred, C, H, W), after the clip's input frames with --disc_see_context;
    with --disc_frame_diff every frame also carries (frame - previous frame) on its channels (zero for the first),
    so the motion a prediction implies is a direct input, not something D must learn to subtract."""
    x = predicted
    if cfg.disc_see_context:
        x = torch.cat([frames[:, :cfg.num_input_frames].to(predicted.dtype), predicted], 1)
    if getattr(cfg, "disc_frame_diff", False):
        prev = frames[:, cfg.num_input_frames - 1:cfg.num_input_frames].to(x.dtype) if not cfg.disc_see_context \
            else x[:, :1]
        x = torch.cat([x, x - torch.cat([prev, x[:, :-1]], 1)], 2)
    return x


def build_discriminator(cfg) -> nn.Module:
    return SpatioTemporalDisc(cfg) if cfg.discriminator_type == "spatio_temporal_cnn" else RegionalDisc(cfg)
