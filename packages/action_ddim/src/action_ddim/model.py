"""Transformer denoiser over ``[batch, seq_len, 3]`` action sequences."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[N] -> [N, dim]`` sin/cos features with geometric frequencies (Vaswani et al.)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def running_positions(x: torch.Tensor, increment_scale: float, channels=(0, 1)) -> torch.Tensor:
    """``[B, L, C] -> [B, L, len(channels)]``: the pointer position at every step, in model units, of a
    velocity-encoded sequence (``data.Normalizer`` with ``increment_scale``): row 0 holds the start
    position in [-1, 1], later rows ``scale * (u_i - u_{i-1})`` with u in [0, 1], so position_i =
    x_0 + (2 / scale) * sum_{j<=i} x_j.

    Why: in velocities the model sees where the pointer is only by summing up to 64 rows itself. A
    transformer does that poorly, and samples drifted off the screen (55% of the 5-epoch samples touched
    an edge, where decoding pins the pointer: false idles, too little speed).
    """
    c = list(channels)
    v = x[..., c]
    return v[:, :1] + (2.0 / increment_scale) * torch.cat([torch.zeros_like(v[:, :1]), torch.cumsum(v[:, 1:], dim=1)], dim=1)


def scaled_increments(x: torch.Tensor, floor: float = 1e-4) -> torch.Tensor:
    """``[B, L, C] -> [B, L, 2C]``: each step's backward and forward increment (0 past the ends),
    divided by the RMS of the sequence's increments per channel.

    Why: at low noise the noise to remove (sigma ~ 0.006-0.04 in model space) is ~1% of a position's
    magnitude, so a linear embedding of raw positions hides it; the transformer would have to learn a
    precise high-pass filter. Increments normalised per sequence are O(1) at every noise level (motion
    dominates at low noise, noise at high noise), so the noise is a visible part of the input.
    """
    d = x[:, 1:] - x[:, :-1]
    rms = d.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(floor)
    zero = torch.zeros_like(x[:, :1])
    backward = torch.cat([zero, d], dim=1) / rms
    forward = torch.cat([d, zero], dim=1) / rms
    return torch.cat([backward, forward], dim=-1)


class LocalConv(nn.Module):
    """Pre-LN residual sublayer: depthwise 1-D convolution over time, GELU, pointwise projection.

    Why: pointer data is mostly local structure (sensor jitter that is white from step to step, bell-shaped
    speed profiles over 5-30 steps). Attention can express a fixed local filter only through its position
    encodings; a depthwise convolution is one, at d_model * kernel weights and a few % of the block's cost.
    The projection starts at zero, so the sublayer starts as the identity (the block is the plain
    transformer block at initialisation).
    """

    def __init__(self, d_model: int, kernel: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.conv = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.proj = nn.Linear(d_model, d_model)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.norm(h).transpose(1, 2)).transpose(1, 2)
        return h + self.proj(nn.functional.gelu(y))


class ActionDenoiser(nn.Module):
    """Input projection + positional encoding + timestep embedding -> pre-LN encoder -> head.

    The timestep embedding is added to every position: cheap, and for short sequences as good as
    a separate conditioning token. Pre-LN (``norm_first``) keeps early training stable with warmup.
    ``position_features_scale`` > 0 (velocity data with that ``increment_scale``) feeds the running
    position (``running_positions``) beside the input. ``conv_kernel`` > 0 puts a ``LocalConv`` sublayer (odd kernel) before every encoder layer; 0 (the
    guide's model) has none and the same weights as before the option existed.
    """

    def __init__(self, seq_len: int = 64, channels: int = 3, d_model: int = 128, num_layers: int = 4,
                 nhead: int = 4, dropout: float = 0.0, ff_mult: int = 4, increment_features: bool = False,
                 conv_kernel: int = 0, position_features_scale: float = 0.0):
        super().__init__()
        if conv_kernel and (conv_kernel < 0 or conv_kernel % 2 == 0):
            raise ValueError(f"conv_kernel={conv_kernel} must be 0 or a positive odd number")
        if d_model % nhead:
            raise ValueError(f"d_model={d_model} is not divisible by nhead={nhead}")
        self.d_model = d_model
        self.increment_features = increment_features
        self.position_features_scale = float(position_features_scale)
        in_features = channels * 3 if increment_features else channels
        self.input_proj = nn.Linear(in_features + (2 if position_features_scale else 0), d_model)
        pos = sinusoidal_embedding(torch.arange(seq_len), d_model)
        self.register_buffer("pos_emb", pos[None], persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.SiLU(), nn.Linear(4 * d_model, d_model))
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward=ff_mult * d_model, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.convs = nn.ModuleList([LocalConv(d_model, conv_kernel) for _ in range(num_layers)]) if conv_kernel else None
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, channels)
        # A zero head makes the initial prediction 0 (the mean of eps), so the loss starts at ~1.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        if L > self.pos_emb.shape[1]:
            self.pos_emb = sinusoidal_embedding(torch.arange(L, device=x.device), self.d_model)[None]
        feats = torch.cat([x, scaled_increments(x)], dim=-1) if self.increment_features else x
        if self.position_features_scale:
            feats = torch.cat([feats, running_positions(x, self.position_features_scale)], dim=-1)
        h = self.input_proj(feats) + self.pos_emb[:, :L].to(x.dtype)
        h = h + self.time_mlp(sinusoidal_embedding(t, self.d_model).to(x.dtype))[:, None, :]
        if self.convs is None:
            h = self.encoder(h)
        else:  # the encoder has no final norm, so this is its forward with a conv before each layer
            for conv, layer in zip(self.convs, self.encoder.layers):
                h = layer(conv(h))
        return self.head(self.norm(h))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
