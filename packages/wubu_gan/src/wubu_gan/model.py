"""The VAE (encoder + generator as one module, so DDP wraps and all-reduces both), plus re-exports so that
``from wubu_gan.model import X`` keeps working after the split into flow / encoder / generator / discriminators."""
from __future__ import annotations

import torch
import torch.nn as nn

from .discriminators import (RegionalDisc, SpatioTemporalDisc, build_discriminator, disc_channels,  # noqa: F401
                             disc_frames, disc_input)
from .encoder import LOGVAR_RANGE, Encoder, RegionEncoder  # noqa: F401
from .film import BoxEmbedding, FiLM  # noqa: F401
from .flow import (RAFT_FILES, RAFT_MIN_SIDE, RaftFlow, RegionSampler, cached_raft_weights, decide_flow,  # noqa: F401
                   flow_statistics, num_flow_stats, rois_for)
from .generator import Generator, generator_plan, warp  # noqa: F401


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

    def predict(self, context: torch.Tensor, context_flow: torch.Tensor | None = None, z: torch.Tensor | None = None):
        """Prediction: the encoder sees the input frames only (context (B, T_in, C, H, W), context_flow
        (B, T_in - 1, 2, H, W) or None), never the target or the flow into it; z = mu unless given.
        forward() is the reconstruction (the encoder reads the whole clip, target included): training's posterior."""
        mu, logvar = self.encoder(context, context_flow)
        z = mu if z is None else z
        return self.generator(z, context if self.generator.use_context else None), mu, logvar


def count_parameters(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
