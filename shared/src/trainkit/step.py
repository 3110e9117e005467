"""The optimizer step a loop calls per micro-batch: accumulation, DDP sync, scaling, clipping, non-finite guard."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass
class StepOutcome:
    boundary: bool  # this micro-batch closed an accumulation window
    stepped: bool  # the optimizer actually stepped
    skipped_nonfinite: bool  # the step was skipped because loss or gradients were NaN/Inf
    grad_norm: float | None  # total gradient norm before clipping (boundary only)


class OptimizerStep:
    """Per micro-batch::

        with stepper.micro_batch():
            loss = model(...)
            out = stepper.backward(loss)
        if out.stepped:
            scheduler.step()
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, scaler=None,
                 accum_steps: int = 1, grad_clip: float | None = None, max_consecutive_nonfinite: int = 10,
                 detect_anomaly: bool = False):
        if accum_steps < 1:
            raise UserError(f"bad accumulation count {accum_steps}", "accum_steps", "expected an integer >= 1")
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler("cpu", enabled=False)
        self.accum_steps = accum_steps
        self.grad_clip = grad_clip if grad_clip and grad_clip > 0 else None
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.detect_anomaly = detect_anomaly
        self.micro_index = 0  # position inside the current accumulation window
        self.num_skipped = 0
        self.consecutive_skipped = 0
        self._window_loss_nonfinite = False

    @property
    def is_boundary(self) -> bool:
        return self.micro_index == self.accum_steps - 1

    @contextlib.contextmanager
    def micro_batch(self):
        """Wrap forward + backward: DDP all-reduces gradients only on the accumulation boundary."""
        is_ddp = isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
        sync_ctx = self.model.no_sync() if (is_ddp and not self.is_boundary) else contextlib.nullcontext()
        anomaly_ctx = torch.autograd.detect_anomaly() if self.detect_anomaly else contextlib.nullcontext()
        with sync_ctx, anomaly_ctx:
            yield

    def _params(self):
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    yield p

    @staticmethod
    def _any_rank(flag: bool, device: torch.device) -> bool:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([1.0 if flag else 0.0], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            return bool(t.item() > 0)
        return flag

    def backward(self, loss: torch.Tensor) -> StepOutcome:
        if not torch.isfinite(loss.detach()).all():
            self._window_loss_nonfinite = True
        self.scaler.scale(loss / self.accum_steps).backward()
        if not self.is_boundary:
            self.micro_index += 1
            return StepOutcome(boundary=False, stepped=False, skipped_nonfinite=False, grad_norm=None)
        self.micro_index = 0
        return self._step()

    def _step(self) -> StepOutcome:
        self.scaler.unscale_(self.optimizer)
        params = list(self._params())
        if self.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip, error_if_nonfinite=False)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.tensor(0.0)
        grad_norm = float(norm)
        device = params[0].device if params else torch.device("cpu")
        loss_bad = self._any_rank(self._window_loss_nonfinite, device)
        self._window_loss_nonfinite = False
        fp16_overflow = self.scaler.is_enabled() and not loss_bad
        if loss_bad or (not math.isfinite(grad_norm) and not fp16_overflow):
            # Skip without touching optimizer state, so no NaN reaches momentum buffers.
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update(self.scaler.get_scale() * self.scaler.get_backoff_factor())
            self.num_skipped += 1
            self.consecutive_skipped += 1
            if self.consecutive_skipped >= self.max_consecutive_nonfinite:
                raise UserError(
                    f"{self.consecutive_skipped} optimizer steps in a row had a non-finite loss or gradient",
                    "training",
                    "lower the learning rate, check the input data for NaN/Inf, use --precision fp32, "
                    "or rerun with --detect_anomaly to find the operation that produced it",
                )
            return StepOutcome(boundary=True, stepped=False, skipped_nonfinite=True, grad_norm=grad_norm)
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)  # with fp16 this itself skips on inf grads
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        stepped = scale_before is None or self.scaler.get_scale() >= scale_before
        self.consecutive_skipped = 0
        return StepOutcome(boundary=True, stepped=stepped, skipped_nonfinite=False, grad_norm=grad_norm)

    def state_dict(self) -> dict:
        return {"micro_index": self.micro_index, "num_skipped": self.num_skipped,
                "consecutive_skipped": self.consecutive_skipped}

    def load_state_dict(self, state: dict) -> None:
        self.micro_index = int(state.get("micro_index", 0))
        self.num_skipped = int(state.get("num_skipped", 0))
        self.consecutive_skipped = int(state.get("consecutive_skipped", 0))
