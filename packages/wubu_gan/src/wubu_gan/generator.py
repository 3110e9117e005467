"""Generator: latent (+ context frames) -> predicted frames; FiLM, warp and the three output modes."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .film import BoxEmbedding, FiLM
from .gaad import gaad_boxes


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: out(p) = image(p + flow(p)), bilinear, borders repeated. image (N, C, H, W); flow (N, 2, H, W)
    in pixels, channel 0 = x (width), 1 = y. flow = 0 returns ``image`` exactly (sampling at pixel centres)."""
    n, _, h, w = image.shape
    # The grid and the sampling run in float32 whatever the autocast dtype: in bf16 a sub-pixel flow is
    # quantised (44 dB against float32 at 128 px), and fp16 grid_sample on CPU returns NaN at 256 px.
    flow = flow.float()
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=image.device, dtype=torch.float32)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=image.device, dtype=torch.float32)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx + flow[:, 0] * (2.0 / w), gy + flow[:, 1] * (2.0 / h)], -1)  # (N, H, W, 2) as (x, y)
    with torch.autocast(image.device.type, enabled=False):
        out = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(image.dtype)


def generator_plan(h: int, w: int):
    short = min(h, w)
    s0 = 1 if short <= 8 else (2 if short <= 32 else 4)
    n_up = max(1, math.ceil(math.log2(short / s0)))
    return n_up, math.ceil(h / 2 ** n_up), math.ceil(w / 2 ** n_up)


class Generator(nn.Module):
    """latent -> (B, T_pred, C, H, W) in [-1, 1]. FiLM conditioning: GAAD box embedding + latent."""

    def __init__(self, cfg):
        super().__init__()
        self.H, self.W, self.T, self.C = cfg.image_h, cfg.image_w, cfg.num_predict_frames, cfg.num_channels
        n_up, self.h0, self.w0 = generator_plan(self.H, self.W)
        ch = min(512, max(128, 2 * cfg.latent_dim))
        floor = max(32, 4 * self.C)
        self.ch0 = ch
        boxes = gaad_boxes(self.H, self.W, cfg.gaad_num_regions, cfg.gaad_decomposition_type, cfg.gaad_min_size_px)
        box_dim = max(32, cfg.latent_dim // 4)
        self.box_embed = BoxEmbedding(boxes, self.H, self.W, box_dim)
        cond_dim = box_dim + cfg.latent_dim
        self.fc = nn.Linear(cfg.latent_dim, ch * self.T * self.h0 * self.w0)
        kt = cfg.gen_temporal_kernel_size
        self.blocks, self.norms, self.films = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for _ in range(n_up):
            out = max(floor, ch // 2)
            self.blocks.append(nn.ConvTranspose3d(ch, out, (kt, 4, 4), (1, 2, 2), (kt // 2, 1, 1), bias=False))
            self.norms.append(nn.InstanceNorm3d(out, affine=True))
            self.films.append(FiLM(cond_dim, out))
            ch = out
        ks = cfg.gen_final_conv_kernel_spatial
        self.use_context = bool(getattr(cfg, "gen_context_skip", False))
        # --gen_output warp (ours, with the context path): besides the rgb residual the last layer gives a flow
        # field (2 channels, pixels) and a mask logit per predicted frame; see forward().
        self.warp_output = self.use_context and getattr(cfg, "gen_output", "residual") == "warp"
        self.final = nn.Conv3d(ch, self.C + (3 if self.warp_output else 0), (kt, ks, ks),
                               padding=(kt // 2, ks // 2, ks // 2))
        # Context path (--gen_context_skip, ours): the generator also sees the input frames (all of them, stacked
        # on channels, so motion so far is visible), as a feature pyramid added to every decoder block, and
        # predicts a residual to the last one (in tanh's pre-activation space). Off, this is the original's
        # z-only decoder (why the path exists: README "Model"). Invariant: at init the output is copy-last.
        if self.use_context:
            cc = cfg.gen_context_channels
            self.ctx_frames = cfg.num_input_frames
            self.ctx_in = nn.Sequential(nn.Conv2d(self.C * self.ctx_frames, cc, 3, 1, 1), nn.GELU())
            self.ctx_down = nn.ModuleList(nn.Sequential(nn.Conv2d(cc, cc, 3, 2, 1), nn.GELU()) for _ in range(n_up - 1))
            self.ctx_proj = nn.ModuleList(nn.Conv2d(cc, blk.out_channels, 1) for blk in self.blocks)
            with torch.no_grad():  # start close to copy-last-frame: a small residual
                self.final.weight.mul_(0.1)
                self.final.bias.zero_()
                if self.warp_output:  # zero flow, mask sigmoid(2) = 0.88 on the warped frame
                    self.final.weight[self.C:].zero_()
                    self.final.bias[self.C + 2] = 2.0

    def context_pyramid(self, context: torch.Tensor) -> list[torch.Tensor]:
        """Input frames (B, T_in, C, H, W) -> features at each decoder block's resolution, coarsest first."""
        feats = [self.ctx_in(context.flatten(1, 2))]
        for down in self.ctx_down:
            feats.append(down(feats[-1]))
        return feats[::-1]

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, latent); context (B, T_in, C, H, W) = the input frames (used with --gen_context_skip; required
        then) -> (B, T_pred, C, H, W) in [-1, 1]."""
        b = z.shape[0]
        if self.use_context and context is None:
            raise ValueError("this generator predicts a residual to the last input frame: pass context")
        cond = torch.cat([self.box_embed().expand(b, -1), z], -1)
        x = self.fc(z).reshape(b, self.ch0, self.T, self.h0, self.w0)
        pyramid = self.context_pyramid(context.to(x.dtype)) if self.use_context else None
        for i, (block, norm, film) in enumerate(zip(self.blocks, self.norms, self.films)):
            x = block(x)
            if pyramid is not None:  # context features enter before FiLM, so z modulates them (motion x appearance)
                f = self.ctx_proj[i](pyramid[i])
                if f.shape[-2:] != x.shape[-2:]:
                    f = F.interpolate(f, size=x.shape[-2:], mode="bilinear", align_corners=False)
                x = x + f.unsqueeze(2)
            x = F.gelu(film(norm(x), cond))
        x = self.final(x)
        # Crop (never stretch) to the frame size: the plan rounds the start size up.
        top, left = (x.shape[-2] - self.H) // 2, (x.shape[-1] - self.W) // 2
        x = x[..., top:top + self.H, left:left + self.W]
        if not self.use_context:
            return torch.tanh(x).permute(0, 2, 1, 3, 4).contiguous()  # (B, T, C, H, W)
        last = context[:, -1].to(x.dtype)
        rgb = torch.tanh(x[:, :self.C] + torch.atanh(last.clamp(-0.995, 0.995)).unsqueeze(2))
        rgb = rgb.permute(0, 2, 1, 3, 4)  # (B, T, C, H, W)
        if not self.warp_output:
            return rgb.contiguous()
        # Warp output: frame = mask * warp(last, flow) + (1 - mask) * rgb. Moving content is the last frame moved
        # (transfers to unseen textures); rgb (a residual to the last frame) fills what appears. At init flow = 0,
        # so both terms are the last frame: the generator starts as copy-last-frame.
        b, t = rgb.shape[:2]
        flow = x[:, self.C:self.C + 2].permute(0, 2, 1, 3, 4).reshape(b * t, 2, self.H, self.W)
        mask = torch.sigmoid(x[:, self.C + 2:self.C + 3]).permute(0, 2, 1, 3, 4)
        warped = warp(last.unsqueeze(1).expand(-1, t, -1, -1, -1).reshape(b * t, self.C, self.H, self.W), flow)
        return (mask * warped.reshape(b, t, self.C, self.H, self.W) + (1 - mask) * rgb).contiguous()
