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
