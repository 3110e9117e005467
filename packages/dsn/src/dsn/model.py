"""Policy networks: per-step selection probabilities from a sequence of frame features.

Both models take ``x [B, T, D]`` and an optional ``mask [B, T]`` (True = real step, False = padding)
and return probabilities ``[B, T]`` (padding positions are 0). Modules only: no I/O, no logging.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .config import DSNConfig


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def _full_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return mask.to(torch.bool)


def _run_bilstm(lstm: nn.LSTM, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BiLSTM over padded sequences: packing keeps padding out of the backward direction."""
    lengths = mask.sum(1)
    if bool((lengths == x.shape[1]).all()):
        out, _ = lstm(x)
        return out
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out


# --------------------------------------------------------------------------------------------- baseline
class BiLSTMEncoder(nn.Module):
    """The original DSN's encoder: one bidirectional LSTM layer over precomputed features."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return _run_bilstm(self.lstm, x, mask)


class PolicyHead(nn.Module):
    """Linear -> sigmoid per step, as in the original DSN."""

    def __init__(self, in_dim: int, init_prob: float | None = None):
        super().__init__()
        self.fc = nn.Linear(in_dim, 1)
        if init_prob is not None:
            # Start at the budget: with Adam at lr 1e-4 the bias would otherwise need ~1e4 steps to walk
            # from p=0.5 down to a 6% selection rate.
            nn.init.constant_(self.fc.bias, _logit(init_prob))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(h).squeeze(-1))


class DSNBaseline(nn.Module):
    """BiLSTM encoder + policy head (kept as two modules: the checkpoint stores ``encoder`` and ``policy``)."""

    model_type = "baseline"

    def __init__(self, config: DSNConfig | Mapping[str, Any], *, init_prob: float | None = None):
        super().__init__()
        self.config = DSNConfig.from_any(config)
        if self.config.in_dim < 1:
            raise ValueError("DSNConfig.in_dim must be set to the feature dimension")
        self.encoder = BiLSTMEncoder(self.config.in_dim, self.config.enc_hidden)
        self.policy = PolicyHead(self.encoder.out_dim, init_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, pyramid=None) -> torch.Tensor:
        mask = _full_mask(x, mask)
        probs = self.policy(self.encoder(x, mask))
        return probs * mask


# --------------------------------------------------------------------------------------------- advanced
def pool_pyramid(x: torch.Tensor, mask: torch.Tensor | None, num_scales: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Masked average pooling of the raw features at strides 1, 2, 4, ... (parameter-free, so cacheable).

    Returns ``[(pooled [B, ceil(T/k), D], mask [B, ceil(T/k)]), ...]``; a window that holds only padding is 0
    and masked out. Pooling before the learned input projection equals pooling after it (the projection
    is linear), which is what lets the cache hold these per video.
    """
    mask = _full_mask(x, mask)
    B, T, D = x.shape
    out = [(x * mask.unsqueeze(-1).to(x.dtype), mask)]
    for s in range(1, num_scales):
        k = 2**s
        Tk = -(-T // k)
        pad = Tk * k - T
        xm = F.pad(x * mask.unsqueeze(-1).to(x.dtype), (0, 0, 0, pad)).view(B, Tk, k, D)
        m = F.pad(mask, (0, pad)).view(B, Tk, k)
        count = m.sum(-1, keepdim=True).to(x.dtype)
        pooled = xm.sum(2) / count.clamp_min(1)
        out.append((pooled, m.any(-1)))
    return out


class SinusoidalPositions(nn.Module):
    """The Transformer's sin/cos table times ``scale`` (its std is 0.63 * scale)."""

    def __init__(self, dim: int, scale: float = 1.0):
        super().__init__()
        self.dim = dim
        self.scale = scale

    def forward(self, T: int, device, dtype) -> torch.Tensor:
        pos = torch.arange(T, device=device, dtype=torch.float32).unsqueeze(1)
        i = torch.arange(0, self.dim, 2, device=device, dtype=torch.float32)
        angle = pos / torch.pow(10000.0, i / self.dim)
        pe = torch.zeros(T, self.dim, device=device)
        pe[:, 0::2] = torch.sin(angle)
        pe[:, 1::2] = torch.cos(angle[:, : self.dim // 2])
        return (self.scale * pe).to(dtype)


class ScaleBranch(nn.Module):
    """One temporal resolution: project, temporal conv (kernel 3) with a residual, LayerNorm."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.conv = nn.Conv1d(dim, dim, kernel_size=3, padding=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(x.dtype)
        h = self.proj(x) * m
        # Zeroed padding makes the conv see the same zero border a lone sequence would.
        h = h + F.gelu(self.conv(h.transpose(1, 2)).transpose(1, 2))
        return self.norm(h) * m


class DSNAdvanced(nn.Module):
    """Multi-scale temporal branches -> fused -> positional encoding -> self-attention -> [BiLSTM] -> head.

    * multi-scale: the features are average-pooled at strides 1, 2, 4, ... (``num_scales``), each
      resolution gets its own projection + temporal conv, is upsampled back to T by repetition, and
      the scales are fused by a linear layer over their concatenation;
    * positional encoding is added to the fused sequence (inputs of attention), sinusoidal (scaled by
      ``pos_scale``), learned or none;
    * ``num_attn_layers`` pre-norm Transformer encoder layers with ``num_attn_heads`` heads and key
      padding masks;
    * optional BiLSTM after attention (``use_lstm_in_advanced``);
    * policy head: LayerNorm -> Linear -> GELU -> Linear -> sigmoid.
    """

    model_type = "advanced"

    def __init__(self, config: DSNConfig | Mapping[str, Any], *, init_prob: float | None = None):
        super().__init__()
        cfg = DSNConfig.from_any(config)
        self.config = cfg
        if cfg.in_dim < 1:
            raise ValueError("DSNConfig.in_dim must be set to the feature dimension")
        d = cfg.enc_hidden
        self.branches = nn.ModuleList(ScaleBranch(cfg.in_dim, d) for _ in range(cfg.num_scales))
        self.fuse = nn.Linear(d * cfg.num_scales, d) if cfg.num_scales > 1 else nn.Identity()
        if cfg.pos_encoding_type == "learned":
            self.pos = nn.Embedding(cfg.max_len, d)
            nn.init.normal_(self.pos.weight, std=0.02)
        elif cfg.pos_encoding_type == "sinusoidal":
            self.pos = SinusoidalPositions(d, cfg.pos_scale)
        else:
            self.pos = None
        self.attn_layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d, cfg.num_attn_heads, dim_feedforward=cfg.ffn_mult * d, dropout=cfg.dropout,
                activation="gelu", batch_first=True, norm_first=True,
            )
            for _ in range(cfg.num_attn_layers)
        )
        self.lstm = nn.LSTM(d, d // 2, batch_first=True, bidirectional=True) if cfg.use_lstm_in_advanced else None
        self.head_norm = nn.LayerNorm(d)
        self.head_hidden = nn.Linear(d, d // 2)
        self.policy = PolicyHead(d // 2, init_prob)

    def pyramid(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        return pool_pyramid(x, mask, self.config.num_scales)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, pyramid: Sequence | None = None) -> torch.Tensor:
        mask = _full_mask(x, mask)
        B, T, _ = x.shape
        if pyramid is None:
            pyramid = self.pyramid(x, mask)
        feats = []
        for s, (branch, (xs, ms)) in enumerate(zip(self.branches, pyramid)):
            h = branch(xs, ms)
            if s:
                h = h.repeat_interleave(2**s, dim=1)[:, :T]
            feats.append(h)
        h = self.fuse(torch.cat(feats, -1)) if len(feats) > 1 else feats[0]
        if self.pos is not None:
            if isinstance(self.pos, nn.Embedding):
                if T > self.config.max_len:
                    raise ValueError(f"sequence of {T} steps exceeds learned positions (max_len={self.config.max_len})")
                h = h + self.pos.weight[:T].unsqueeze(0)
            else:
                h = h + self.pos(T, h.device, h.dtype).unsqueeze(0)
        pad = ~mask
        for layer in self.attn_layers:
            h = layer(h, src_key_padding_mask=pad if bool(pad.any()) else None)
        if self.lstm is not None:
            h = _run_bilstm(self.lstm, h, mask)
        h = F.gelu(self.head_hidden(self.head_norm(h)))
        return self.policy(h) * mask


def build_model(config: DSNConfig | Mapping[str, Any], *, init_prob: float | None = None) -> nn.Module:
    cfg = DSNConfig.from_any(config)
    cls = DSNBaseline if cfg.model_type == "baseline" else DSNAdvanced
    return cls(cfg, init_prob=init_prob)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
