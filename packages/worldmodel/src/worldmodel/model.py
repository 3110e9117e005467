"""The world model: convolutional encoder -> action-conditioned causal transformer over latents -> decoder.

Frames enter in [0, 1] and are mapped to [-1, 1]; decoded frames are in [-1, 1] (unbounded during training,
clamped for metrics and images). ``actions[:, t]`` is the control applied between frame t and t+1, so the
dynamics read (z_<=t, a_<=t) and predict z_{t+1}.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _groups(channels: int) -> int:
    return math.gcd(8, channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(_groups(channels), channels), nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(_groups(channels), channels))

    def forward(self, x):
        return F.silu(x + self.body(x))


class DownStage(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(_groups(cout), cout),
                                  nn.SiLU())
        self.block = ResBlock(cout)

    def forward(self, x):
        return self.block(self.down(x))


class UpStage(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout), nn.SiLU())
        self.block = ResBlock(cout)

    def forward(self, x, skip=None):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, _pad_to(skip, x.shape[-2:])], 1)
        return self.block(self.conv(x))


class SpatialAttention(nn.Module):
    """Multi-head self-attention over the positions of a feature map (pre-norm, residual)."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.attn = nn.MultiheadAttention(channels, num_heads, batch_first=True)

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(t, t, t, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def _conv_out(n: int, stages: int) -> int:
    for _ in range(stages):
        n = (n + 1) // 2
    return n


class Encoder(nn.Module):
    def __init__(self, image_size: tuple[int, int], stages: list[int], num_heads: int, latent_dim: int):
        super().__init__()
        w, h = image_size
        chans = [3] + list(stages)
        self.stages = nn.ModuleList(DownStage(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.attention = SpatialAttention(stages[-1], num_heads) if num_heads else None
        self.grid = (_conv_out(h, len(stages)), _conv_out(w, len(stages)))
        self.to_latent = nn.Linear(stages[-1] * self.grid[0] * self.grid[1], latent_dim)
        self.checkpointing = False

    def forward(self, x, return_features: bool = False):
        feats = []
        for stage in self.stages:
            x = checkpoint(stage, x, use_reentrant=False) if self.checkpointing else stage(x)
            feats.append(x)
        if self.attention is not None:
            x = checkpoint(self.attention, x, use_reentrant=False) if self.checkpointing else self.attention(x)
            feats[-1] = x
        z = self.to_latent(x.flatten(1))
        return (z, feats) if return_features else z


def _pad_to(x, size: tuple[int, int]):
    """Centre-pad (replicate) or centre-crop a feature map to ``size`` (the decoder's grid is the frame
    rounded up to a multiple of 2**stages and centre-cropped at the end, so skips are placed the same way)."""
    dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    if dh < 0 or dw < 0:
        top, left = max(0, -dh) // 2, max(0, -dw) // 2
        x = x[..., top:top + min(size[0], x.shape[-2]), left:left + min(size[1], x.shape[-1])]
        dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    if dh or dw:
        x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), mode="replicate")
    return x


def warp(image, flow):
    """Backward warp: output(p) = image(p + flow(p)); ``flow`` [B, 2, H, W] in pixels (x, y)."""
    b, _, h, w = image.shape
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=image.device, dtype=flow.dtype)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=image.device, dtype=flow.dtype)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)          # [H, W, 2] as (x, y)
    scale = torch.tensor([2.0 / w, 2.0 / h], device=image.device, dtype=flow.dtype)
    grid = base + flow.permute(0, 2, 3, 1) * scale
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=False)


class Decoder(nn.Module):
    """Latent -> a grid ``init_size`` wide (height from the frame's aspect ratio) -> x2 per stage -> frame.

    ``init_size * 2**len(stages)`` must equal the frame width (256 = 16 x 16 for 256x144 frames). The grid height
    is rounded up and the output center-cropped (e.g. 144 = 9 x 16 is exact; 36 from a 3-high grid x 16 = 48 is
    cropped).

    With ``reference=True`` (the default) the decoder also sees a *reference frame* (the last observed one)
    through skip connections from the encoder's stage features, and renders the target frame as
    ``mask * warp(reference, flow) + (1 - mask) * rgb``: most of a driving frame is the previous frame moved
    (ego-motion flow), so the latent only has to say how it moved and what appeared. Without it the latent
    alone must carry the whole image and PSNR is capped by the autoencoder's reconstruction (README)."""

    def __init__(self, image_size: tuple[int, int], stages: list[int], init_size: int, latent_dim: int,
                 skip_channels: list[int] | None = None):
        super().__init__()
        w, h = image_size
        scale = 2 ** len(stages)
        self.out_size = (h, w)
        self.init = (max(1, math.ceil(init_size * h / w)), init_size)
        if init_size * scale != w or not 0 <= self.init[0] * scale - h < scale:
            hint = (f"init_size {w // scale}" if w % scale == 0 and math.ceil(h / scale) * scale - h < scale
                    else f"frames whose width is a multiple of {scale}")
            raise ValueError(f"decoder init_size {init_size} with {len(stages)} x2 stages gives {init_size * scale} px "
                             f"wide frames, but the data is {w}x{h}; use {hint}")
        if skip_channels is not None and len(skip_channels) != len(stages):
            raise ValueError(f"encoder has {len(skip_channels)} stages and decoder {len(stages)}; with "
                             "model.decoder.reference_frame their skips pair up by resolution, so give both as "
                             "many stages")
        self.c0 = stages[0]
        self.from_latent = nn.Linear(latent_dim, stages[0] * self.init[0] * self.init[1])
        self.reference = skip_channels is not None
        n = len(stages)
        # skip into the first grid: the encoder's deepest features; into up-stage i: the encoder stage whose
        # resolution it has (deeper to shallower), and the reference frame itself (3 channels) at full size
        if self.reference:
            skips = list(skip_channels)[::-1]                      # deepest first
            self.skip_in = [skips[0]] + [skips[i + 1] if i + 1 < len(skips) else 0 for i in range(n - 1)] + [3]
            self.merge = nn.Sequential(nn.Conv2d(stages[0] + self.skip_in[0], stages[0], 3, padding=1),
                                       nn.GroupNorm(_groups(stages[0]), stages[0]), nn.SiLU())
        else:
            self.skip_in = [0] * (n + 1)
        chans = [stages[0]] + list(stages)
        self.stages = nn.ModuleList(UpStage(a + s, b) for a, b, s in zip(chans[:-1], chans[1:], self.skip_in[1:]))
        self.to_rgb = nn.Conv2d(stages[-1], 6 if self.reference else 3, 3, padding=1)
        if self.reference:   # start as "copy the reference frame": zero flow, mask ~0.95 on the warp
            with torch.no_grad():
                self.to_rgb.weight[3:].zero_()
                self.to_rgb.bias[3:5].zero_()
                self.to_rgb.bias[5].fill_(3.0)
        self.checkpointing = False

    def forward(self, z, ref_frame=None, ref_feats=None):
        x = F.silu(self.from_latent(z)).view(-1, self.c0, *self.init)
        if self.reference:
            feats = list(ref_feats)[::-1]                       # deepest first
            x = self.merge(torch.cat([x, _pad_to(feats[0], x.shape[-2:])], 1))
            skips = [feats[i + 1] if i + 1 < len(feats) else None for i in range(len(self.stages) - 1)] + [ref_frame]
        else:
            skips = [None] * len(self.stages)
        for stage, skip in zip(self.stages, skips):
            x = checkpoint(stage, x, skip, use_reentrant=False) if self.checkpointing else stage(x, skip)
        x = self.to_rgb(x)
        h, w = self.out_size
        top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
        x = x[:, :, top:top + h, left:left + w]
        if not self.reference:
            return x
        rgb, flow, mask = x[:, :3], x[:, 3:5], torch.sigmoid(x[:, 5:6])
        return mask * warp(ref_frame, flow) + (1 - mask) * rgb


class Dynamics(nn.Module):
    """Causal transformer over the latent sequence: token_t = proj(z_t) + embed(a_t) + pos_t; the head
    predicts the change z_{t+1} - z_t (zero-initialised, so an untrained model copies the last latent)."""

    def __init__(self, latent_dim: int, action_dim: int, hidden_dim: int, num_layers: int, num_heads: int,
                 dropout: float, max_len: int):
        super().__init__()
        self.max_len = max_len
        self.z_in = nn.Linear(latent_dim, hidden_dim)
        self.a_in = nn.Sequential(nn.Linear(action_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim))
        self.pos = nn.Parameter(torch.zeros(max_len, hidden_dim))
        nn.init.normal_(self.pos, std=0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(hidden_dim, num_heads, 4 * hidden_dim, dropout, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_dim)
        self.head = nn.Linear(hidden_dim, latent_dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.checkpointing = False

    def forward(self, z, actions):
        t = z.shape[1]
        if t > self.max_len:
            raise ValueError(f"sequence of {t} steps is longer than the dynamics' {self.max_len} positions")
        x = self.z_in(z) + self.a_in(actions) + self.pos[:t]
        mask = torch.nn.Transformer.generate_square_subsequent_mask(t, device=z.device, dtype=x.dtype)
        for layer in self.layers:
            if self.checkpointing:
                x = checkpoint(layer, x, mask, None, True, use_reentrant=False)
            else:
                x = layer(x, src_mask=mask, is_causal=True)
        return z + self.head(self.norm(x))


class WorldModel(nn.Module):
    def __init__(self, *, image_size: tuple[int, int], latent_dim: int, action_dim: int, hidden_dim: int,
                 encoder_stages: list[int], encoder_heads: int, dynamics_layers: int, dynamics_heads: int,
                 dropout: float, decoder_stages: list[int], decoder_init_size: int, max_len: int,
                 reference_frame: bool = True, rollout_reference: str = "context"):
        super().__init__()
        if rollout_reference not in ("predicted", "context"):
            raise ValueError(f"rollout_reference {rollout_reference!r}: expected predicted or context")
        self.rollout_reference = rollout_reference
        self.image_size = tuple(image_size)
        self.action_dim = action_dim
        self.encoder = Encoder(image_size, encoder_stages, encoder_heads, latent_dim)
        self.dynamics = Dynamics(latent_dim, action_dim, hidden_dim, dynamics_layers, dynamics_heads, dropout,
                                 max_len)
        self.decoder = Decoder(image_size, decoder_stages, decoder_init_size, latent_dim,
                               skip_channels=list(encoder_stages) if reference_frame else None)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each encoder/decoder stage and transformer layer in backward instead of storing its
        activations (less memory, ~one extra forward of compute)."""
        for m in (self.encoder, self.dynamics, self.decoder):
            m.checkpointing = enabled

    def encode(self, frames, return_features: bool = False):
        """[B, T, 3, H, W] in [0, 1] -> latents [B, T, latent_dim] (and, if asked, the reference: the frames in
        [-1, 1] and the encoder's per-stage features, each [B, T, ...])."""
        b, t = frames.shape[:2]
        x = frames.flatten(0, 1) * 2 - 1
        z, feats = self.encoder(x, return_features=True)
        z = z.view(b, t, -1)
        if not return_features:
            return z
        return z, (x.view(b, t, *x.shape[1:]), [f.view(b, t, *f.shape[1:]) for f in feats])

    def decode(self, z, ref=None):
        """[B, T, latent_dim] -> [B, T, 3, H, W] in [-1, 1] (unclamped). ``ref`` (from ``encode``) gives each
        target its reference frame: [B, T, ...] (one per target) or [B, 1, ...] (one for all)."""
        b, t = z.shape[:2]
        if self.decoder.reference:
            frame, feats = ref
            expand = lambda x: x.expand(b, t, *x.shape[2:]).flatten(0, 1)  # noqa: E731
            x = self.decoder(z.flatten(0, 1), expand(frame), [expand(f) for f in feats])
        else:
            x = self.decoder(z.flatten(0, 1))
        return x.view(b, t, *x.shape[1:])

    @staticmethod
    def select_ref(ref, index):
        """The reference (frames, features) at time positions ``index`` (a slice)."""
        frame, feats = ref
        return frame[:, index], [f[:, index] for f in feats]

    def forward(self, frames, actions, rollout_latents: bool = True):
        """``reconstructed``: every frame decoded from its own latent, rendered from the window's first frame;
        ``predicted``: teacher-forced 1-step predictions (latent from the dynamics,
        rendered from the previous observed frame); optionally ``rollout``: an open-loop rollout from the first
        frame over the whole window, exactly as ``rollout`` does it (trained by the temporal loss)."""
        z, ref = self.encode(frames, return_features=True)
        # reconstructions are rendered from the window's FIRST frame (offsets 0..T-1): far references make the
        # latent carry the view's pose and motion (from the previous frame alone a mean forward flow does most
        # of the work and the latent, hence the actions, barely matter; measured, README)
        out = {"latents": z, "reconstructed": self.decode(z, self.select_ref(ref, slice(0, 1)))}
        z_next = self.dynamics(z, actions)[:, :-1]            # predicts z[:, 1:]
        out["pred_latents"] = z_next
        out["predicted"] = self.decode(z_next, self.select_ref(ref, slice(0, -1)))
        if rollout_latents and z.shape[1] > 2:
            out["rollout_latents"], out["rollout"] = self.rollout_both(
                z[:, :1], self.select_ref(ref, slice(0, 1)), actions, z.shape[1] - 1)
        return out

    def rollout_latents(self, z_context, actions, horizon: int):
        """Latents only: feed the model its own predictions for ``horizon`` steps."""
        return self.rollout_both(z_context, None, actions, horizon, render=False)[0]

    def rollout_both(self, z_context, ref_last, actions, horizon: int, render: bool = True,
                     reference_every: int | None = None):
        """Open-loop: feed the dynamics its own predicted latents for ``horizon`` steps (at most ``max_len``
        latest positions are attended; a sliding window beyond that); ``actions`` covers positions
        0 .. C+horizon-2. With a reference decoder, each predicted latent is rendered from the reference
        ``ref_last`` (the last context frame's, from ``encode``): with ``rollout_reference="predicted"`` the
        reference then moves on to the frame just predicted (re-encoded), so every step is a 1-step
        rendering, as in training; with ``"context"`` it stays the last context frame. ``reference_every`` K
        overrides that at inference: after every K-th step the reference becomes the frame just predicted
        (re-encoded), so new content can enter a long rollout while no target is ever more than K steps from its
        reference (0 = the context frame throughout, 1 = the ``"predicted"`` behaviour). Returns (latents,
        frames in [-1, 1], or None when not ``render``)."""
        every = reference_every if reference_every is not None else int(self.rollout_reference == "predicted")
        seq = z_context
        zs, frames = [], []
        for k in range(horizon):
            lo = max(0, seq.shape[1] - self.dynamics.max_len)
            z_next = self.dynamics(seq[:, lo:], actions[:, lo:seq.shape[1]])[:, -1:]
            zs.append(z_next)
            seq = torch.cat([seq, z_next], 1)
            if render:
                frame = self.decode(z_next, ref_last)
                frames.append(frame)
                if self.decoder.reference and every and (k + 1) % every == 0 and k + 1 < horizon:
                    _, ref_last = self.encode(to_unit(frame), return_features=True)
        return torch.cat(zs, 1), (torch.cat(frames, 1) if render else None)

    @torch.no_grad()
    def rollout(self, context_frames, actions, horizon: int, reference_every: int | None = None):
        """Open-loop frames [B, horizon, 3, H, W] in [0, 1] after the context frames (``reference_every``: see
        ``rollout_both``)."""
        z, ref = self.encode(context_frames, return_features=True)
        _, frames = self.rollout_both(z, self.select_ref(ref, slice(-1, None)), actions, horizon,
                                      reference_every=reference_every)
        return to_unit(frames)


def to_unit(x):
    """Decoder output in [-1, 1] -> clamped [0, 1]."""
    return ((x + 1) * 0.5).clamp(0, 1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(model: WorldModel) -> dict[str, int]:
    return {"encoder": count_parameters(model.encoder), "dynamics": count_parameters(model.dynamics),
            "decoder": count_parameters(model.decoder), "total": count_parameters(model)}
