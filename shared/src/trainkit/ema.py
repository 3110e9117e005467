"""Exponential moving average of weights with the usual warmup (decay grows with the step count)."""
from __future__ import annotations

import copy

import torch


class EMA:
    """decay_t = min(decay, 1 - (1 + t / inv_gamma) ** -power) when ``warmup`` (Diffusion Policy / diffusers form)."""

    def __init__(self, model: torch.nn.Module, *, decay: float = 0.9999, warmup: bool = True,
                 inv_gamma: float = 1.0, power: float = 0.75, min_decay: float = 0.0):
        from .checkpoint import unwrap_model

        self.module = copy.deepcopy(unwrap_model(model)).eval()
        self.module.requires_grad_(False)
        self.decay, self.warmup, self.inv_gamma, self.power, self.min_decay = decay, warmup, inv_gamma, power, min_decay
        self.num_updates = 0

    @property
    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        value = 1.0 - (1.0 + self.num_updates / self.inv_gamma) ** -self.power
        return max(self.min_decay, min(self.decay, value))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        from .checkpoint import unwrap_model

        self.num_updates += 1
        decay = self.current_decay
        source = unwrap_model(model).state_dict()
        for name, ema_value in self.module.state_dict().items():
            value = source[name]
            if ema_value.dtype.is_floating_point:
                ema_value.lerp_(value.to(ema_value.dtype), 1.0 - decay)
            else:  # integer buffers (e.g. BatchNorm counters) are copied, not averaged
                ema_value.copy_(value)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
