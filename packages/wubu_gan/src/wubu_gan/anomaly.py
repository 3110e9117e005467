"""--detect_anomaly support: name the first module whose forward output is non-finite, and turn autograd's
backward anomaly into a one-line error. Used only in anomaly mode (the hooks cost a sync per module call)."""
from __future__ import annotations

import torch
import torch.nn as nn

from trainkit.errors import UserError

LOSS_NAMES = ("recon", "kl", "g_adv", "g_total", "d_real", "d_fake", "d_total")


class NonFiniteWatch:
    """Forward hooks on every submodule of ``nets`` ({prefix: module}); ``first`` is the qualified name of the
    first module (in call order) since ``reset()`` whose output held a NaN/Inf. Invariant: the hooks only read."""

    def __init__(self, nets: dict[str, nn.Module]):
        self.first: str | None = None
        self.handles = []
        for prefix, net in nets.items():
            for name, mod in net.named_modules():
                if len(list(mod.children())) == 0:  # leaves: the operation, not its container
                    self.handles.append(mod.register_forward_hook(self._hook(f"{prefix}.{name}" if name else prefix)))

    def _hook(self, name: str):
        def hook(_mod, _inp, out):
            if self.first is None:
                outs = out if isinstance(out, (tuple, list)) else (out,)
                if any(isinstance(o, torch.Tensor) and o.is_floating_point() and not bool(torch.isfinite(o).all())
                       for o in outs):
                    self.first = name
        return hook

    def reset(self) -> None:
        self.first = None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def non_finite_loss_error(parts: torch.Tensor, step: int, watch: NonFiniteWatch | None) -> UserError:
    """The one-line error for a non-finite loss under --detect_anomaly: which loss terms, and where it started."""
    bad = [n for n, v in zip(LOSS_NAMES, parts.tolist()) if not torch.isfinite(torch.tensor(v))]
    # g_total / d_total are sums: name the primary terms when one of them is bad.
    primary = [n for n in bad if n not in ("g_total", "d_total")] or bad
    where = watch.first if watch is not None and watch.first else None
    origin = (f"first non-finite module output: {where}" if where else
              "every module output was finite, so the loss term's own formula produced it")
    return UserError(f"non-finite loss term {', '.join(primary)} at step {step}", "--detect_anomaly", origin)


def backward_anomaly_error(err: RuntimeError, which: str, step: int) -> UserError | None:
    """autograd's anomaly RuntimeError ("Function 'XBackward0' returned nan values ...") as a one-line error;
    None for any other RuntimeError (a bug keeps its traceback). torch prints the forward traceback above it."""
    text = " ".join(str(err).split())
    if "returned nan values" not in text and "returned inf values" not in text:
        return None
    return UserError(f"non-finite gradient in the {which} backward at step {step}: {text[:160]}", "--detect_anomaly",
                     "the forward line that created this operation is in the warning printed just above")
