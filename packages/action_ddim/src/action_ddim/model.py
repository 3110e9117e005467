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


class ActionDenoiser(nn.Module):
    """Input projection + positional encoding + timestep embedding -> pre-LN encoder -> head.

    The timestep embedding is added to every position: cheap, and for short sequences as good as
    a separate conditioning token. Pre-LN (``norm_first``) keeps early training stable with warmup.
    """

    def __init__(self, seq_len: int = 64, channels: int = 3, d_model: int = 128, num_layers: int = 4,
                 nhead: int = 4, dropout: float = 0.0, ff_mult: int = 4, increment_features: bool = False):
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model={d_model} is not divisible by nhead={nhead}")
        self.d_model = d_model
        self.increment_features = increment_features
        self.input_proj = nn.Linear(channels * 3 if increment_features else channels, d_model)
        pos = sinusoidal_embedding(torch.arange(seq_len), d_model)
        self.register_buffer("pos_emb", pos[None], persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.SiLU(), nn.Linear(4 * d_model, d_model))
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward=ff_mult * d_model, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
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
        h = self.input_proj(feats) + self.pos_emb[:, :L].to(x.dtype)
        h = h + self.time_mlp(sinusoidal_embedding(t, self.d_model).to(x.dtype))[:, None, :]
        return self.head(self.norm(self.encoder(h)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
