"""Encoder (GAAD regions -> WuBu-S, flow statistics -> WuBu-M, frames over time -> WuBu-T -> mu, logvar),
generator (latent -> 3-D transposed convolutions with FiLM), discriminators. ``nn.Module``s only."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm
from .gaad import _supports, box_features, gaad_boxes, region_crops, region_sampling_matrices
from .hyperbolic import WuBuStack

LOGVAR_RANGE = (-10.0, 10.0)  # the original never clamped logvar, so exp(logvar) could overflow the KL


def rois_for(boxes: torch.Tensor, n_images: int) -> torch.Tensor:
    """(n_images * R, 5) RoIs [image index, x1, y1, x2, y2] for the same R boxes on every image."""
    idx = torch.arange(n_images, device=boxes.device, dtype=boxes.dtype).repeat_interleave(boxes.shape[0])
    return torch.cat([idx[:, None], boxes.repeat(n_images, 1)], 1)


# ------------------------------------------------------------------------------------------ flow
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


# ------------------------------------------------------------------------------------------ encoder
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


# ------------------------------------------------------------------------------------------ generator
class FiLM(nn.Module):
    """(1 + gamma) * x + beta, gamma/beta from a conditioning vector; starts as the identity."""

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.to_gb = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.to_gb.weight)
        nn.init.zeros_(self.to_gb.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.to_gb(cond).chunk(2, -1)
        shape = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
        return x * (1 + gamma.reshape(shape)) + beta.reshape(shape)


class BoxEmbedding(nn.Module):
    """MLP over each GAAD box's normalised (cx, cy, w, h), averaged over boxes."""

    def __init__(self, boxes: torch.Tensor, height: int, width: int, dim: int):
        super().__init__()
        self.register_buffer("feats", box_features(boxes, height, width), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(4, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self) -> torch.Tensor:
        return self.mlp(self.feats).mean(0)


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
        # predicts a residual to the last one (in tanh's pre-activation space).
        # The original decoded the target from z alone; at CPU budgets that never left the mean frame (~19 dB
        # against copy-last's ~24 dB). Off, this is the original's decoder.
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


class WuBuGen(nn.Module):
    """The VAE: encoder + generator (one module so that DDP wraps and all-reduces both)."""

    def __init__(self, cfg, flow_kind: str = "none"):
        super().__init__()
        self.encoder = Encoder(cfg, flow_kind)
        self.generator = Generator(cfg)
        self.num_input_frames = cfg.num_input_frames

    def forward(self, frames: torch.Tensor, flow: torch.Tensor | None = None, sample: bool = True):
        mu, logvar = self.encoder(frames, flow)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        context = frames[:, :self.num_input_frames] if self.generator.use_context else None
        return self.generator(z, context), mu, logvar


# ------------------------------------------------------------------------------------------ discriminators
def _sn(module: nn.Module, on: bool) -> nn.Module:
    return spectral_norm(module) if on else module


class SpatioTemporalDisc(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        H, W, T, C = cfg.image_h, cfg.image_w, disc_frames(cfg), disc_channels(cfg)
        sn, self.film_on = cfg.disc_apply_spectral_norm, cfg.disc_use_gaad_film_condition
        n_blocks = max(1, int(math.log2(min(H, W) / 4)))
        kt = min(cfg.disc_temporal_kernel_size, T)
        if self.film_on:
            boxes = gaad_boxes(H, W, cfg.gaad_num_regions, cfg.gaad_decomposition_type, cfg.gaad_min_size_px)
            self.box_embed = BoxEmbedding(boxes, H, W, cfg.disc_gaad_condition_dim_disc)
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
        # (PatchGAN-style), the loss averages over cells. Why it was tried: the original's global head pools
        # after InstanceNorm, which has already set every channel's mean to zero, so the pooled features depend
        # little on the input. It did not fix the D band: trained alone against a frozen generator the patch head
        # also stayed at chance (0.693) for 60 steps, while the global head with --disc_frame_diff left it
        # within 30 (README "Discriminators"). Kept as an option, not used by the recipe.
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
        cond = self.box_embed().expand(x.shape[0], -1) if self.film_on else None
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
        if self.film_on:
            self.box_embed = BoxEmbedding(boxes, H, W, cfg.disc_gaad_condition_dim_disc)
        self.convs, self.films = nn.ModuleList(), nn.ModuleList()
        self.context_frames = cfg.num_input_frames if cfg.disc_see_context else 0
        ch_in = disc_channels(cfg) * (1 + self.context_frames)
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
        x = self.sampler(imgs).flatten(0, 1)  # (B*T*R, C, patch, patch)
        cond = self.box_embed().expand(x.shape[0], -1) if self.film_on else None
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


def count_parameters(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
