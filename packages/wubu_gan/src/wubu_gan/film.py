"""FiLM and the GAAD box embedding, shared by the generator and the discriminators."""
from __future__ import annotations

import torch
import torch.nn as nn

from .gaad import box_features


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


class RegionCondition(nn.Module):
    """Per-sample, per-region FiLM conditions for D: an MLP over each GAAD box's (cx, cy, w, h) plus a projection
    of that region's content (per-channel mean and std of its crop). (N, R, C, h, w) crops -> (N, R, dim).
    The original's condition was the box embedding averaged over boxes: one constant vector, so FiLM in D was a
    plain affine (audit M2). Invariant: two samples or two regions with different content get different conditions."""

    def __init__(self, boxes: torch.Tensor, height: int, width: int, channels: int, dim: int):
        super().__init__()
        self.register_buffer("feats", box_features(boxes, height, width), persistent=False)
        self.box_mlp = nn.Sequential(nn.Linear(4, dim), nn.GELU(), nn.Linear(dim, dim))
        self.content = nn.Linear(2 * channels, dim)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        flat = crops.flatten(3)                                                  # (N, R, C, h*w)
        stats = torch.cat([flat.mean(-1), flat.std(-1, unbiased=False)], -1)    # (N, R, 2C)
        return self.box_mlp(self.feats).unsqueeze(0) + self.content(stats.to(self.content.weight.dtype))
