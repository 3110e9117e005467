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
        self._cache = None

    @property
    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        value = 1.0 - (1.0 + self.num_updates / self.inv_gamma) ** -self.power
        return max(self.min_decay, min(self.decay, value))

    def _pairs(self, model: torch.nn.Module):
        """(ema tensors, model tensors) to average and to copy, matched by name once per model object."""
        from .checkpoint import unwrap_model

        source = unwrap_model(model)
        if self._cache is None or self._cache[0] is not source:
            src = dict(source.named_parameters())
            src.update(source.named_buffers())
            mine = dict(self.module.named_parameters())
            mine.update(self.module.named_buffers())
            lerp_ema, lerp_src, copy_ema, copy_src, slow = [], [], [], [], []
            for name, ema_value in mine.items():
                value = src[name]
                if not ema_value.dtype.is_floating_point:
                    copy_ema.append(ema_value)  # integer buffers (e.g. BatchNorm counters) are copied
                    copy_src.append(value)
                elif value.dtype == ema_value.dtype and value.device == ema_value.device:
                    lerp_ema.append(ema_value)
                    lerp_src.append(value)
                else:
                    slow.append((ema_value, value))
            self._cache = (source, lerp_ema, lerp_src, copy_ema, copy_src, slow)
        return self._cache[1:]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        weight = 1.0 - self.current_decay
        lerp_ema, lerp_src, copy_ema, copy_src, slow = self._pairs(model)
        if lerp_ema:
            torch._foreach_lerp_(lerp_ema, lerp_src, weight)  # one fused call (no_grad), no host sync
        for ema_value, value in zip(copy_ema, copy_src):
            ema_value.copy_(value)
        for ema_value, value in slow:
            ema_value.lerp_(value.detach().to(ema_value.dtype), weight)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
