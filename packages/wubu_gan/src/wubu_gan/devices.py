"""Device helpers that trainkit is adding (``trainkit.device.make_generator``); used from there once it lands."""
from __future__ import annotations

import torch

try:  # pragma: no cover - depends on the trainkit version
    from trainkit.device import make_generator  # type: ignore[attr-defined]
except ImportError:
    def make_generator(device, seed: int) -> torch.Generator:
        """A torch.Generator on ``device``'s type (a CPU generator cannot drive CUDA sampling)."""
        device = torch.device(device)
        g = torch.Generator(device=device.type if device.type != "mps" else "cpu")
        g.manual_seed(int(seed))
        return g
