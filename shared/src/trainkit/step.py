"""The optimizer step a loop calls per micro-batch: accumulation, DDP sync, scaling, clipping, non-finite guard.

At most one device-to-host transfer per optimizer step and none per micro-batch: the loss's finiteness is
kept on the device during the accumulation window, combined with the gradient norm's finiteness at the
boundary (and all-reduced across ranks), and read back once to decide whether to step.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What one ``OptimizerStep.backward`` call did.

    All fields are final when ``backward`` returns: the step decision is made on the boundary micro-batch
    (that is the one host transfer), so ``stepped`` and ``skipped_nonfinite`` are plain bools you can branch
    on at no cost. Off the boundary they are all ``False`` and ``grad_norm`` is ``None``.
    """

    boundary: bool  # this micro-batch closed an accumulation window
    stepped: bool  # the optimizer actually stepped (False on a non-finite skip or an fp16 overflow)
    skipped_nonfinite: bool  # skipped because the window's loss or the gradients were NaN/Inf (not fp16 overflow)
    # Total gradient norm before clipping, a 0-dim tensor on the parameters' device (boundary only).
    # Reading it (``.item()``, ``float()``) is a device sync: do it at log intervals, not every step;
    # ``Tracker.log_scalars`` accepts it as is.
    grad_norm: torch.Tensor | None


_MICRO = StepOutcome(boundary=False, stepped=False, skipped_nonfinite=False, grad_norm=None)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _any_rank_flags(flags: torch.Tensor) -> torch.Tensor:
    """Element-wise max of a small flag tensor over ranks (no host transfer: the collective runs on its device)."""
    if _distributed():
        flags = flags.to(torch.float32)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags


class OptimizerStep:
    """Per micro-batch::

        with stepper.micro_batch():            # DDP gradient all-reduce only on the accumulation boundary
            loss = model(...)
            out = stepper.backward(loss)       # /accum, (scale,) backward; on the boundary: unscale, clip, step
        if out.stepped:
            scheduler.step()
            ema.update(model)
        if out.boundary and step % log_every == 0:
            tracker.log_scalars({"train/loss": loss.detach(), "train/grad_norm": out.grad_norm}, step)

    Non-finite guard: a NaN/Inf loss in any micro-batch of the window, or a NaN/Inf gradient norm, on any
    rank, skips the step on every rank before the optimizer sees the gradients (momentum/variance buffers
    stay finite), counts it (``num_skipped``) and raises a UserError with advice after
    ``max_consecutive_nonfinite`` skips in a row. With fp16 a gradient overflow (finite loss) is the
    GradScaler's normal back-off: not stepped, scale reduced, not counted as a non-finite skip.

    Host transfers: none per non-boundary micro-batch; one per optimizer step (a combined flag, all-reduced
    across ranks first when distributed). ``grad_norm`` stays on the device.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, scaler=None,
                 accum_steps: int = 1, grad_clip: float | None = None, max_consecutive_nonfinite: int = 10,
                 detect_anomaly: bool = False):
        if accum_steps < 1:
            raise UserError(f"bad accumulation count {accum_steps}", "accum_steps", "expected an integer >= 1")
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler("cpu", enabled=False)
        self._scaling = self.scaler.is_enabled()
        self.accum_steps = accum_steps
        self.grad_clip = grad_clip if grad_clip and grad_clip > 0 else None
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.detect_anomaly = detect_anomaly
        self.micro_index = 0  # position inside the current accumulation window
        self.num_skipped = 0
        self.consecutive_skipped = 0
        self.num_overflow = 0  # fp16 GradScaler back-offs
        self._window_losses: list[torch.Tensor] = []
        self._is_ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        self._null = contextlib.nullcontext()
        self._params: list[torch.nn.Parameter] = []
        self._params_key: tuple | None = None

    @property
    def is_boundary(self) -> bool:
        return self.micro_index == self.accum_steps - 1

    def micro_batch(self):
        """Wrap forward + backward: DDP all-reduces gradients only on the accumulation boundary."""
        if self.detect_anomaly:
            return self._anomaly_micro_batch()
        if self._is_ddp and self.micro_index != self.accum_steps - 1:
            return self.model.no_sync()
        return self._null

    @contextlib.contextmanager
    def _anomaly_micro_batch(self):
        sync_ctx = self.model.no_sync() if (self._is_ddp and not self.is_boundary) else contextlib.nullcontext()
        with sync_ctx, torch.autograd.detect_anomaly():
            yield

    def _param_list(self) -> list[torch.nn.Parameter]:
        groups = self.optimizer.param_groups
        key = tuple(id(g["params"]) for g in groups) + tuple(len(g["params"]) for g in groups)
        if key != self._params_key:  # rebuilt only when param groups change
            self._params = [p for g in groups for p in g["params"]]
            self._params_key = key
        return self._params

    def backward(self, loss: torch.Tensor) -> StepOutcome:
        self._window_losses.append(loss.detach())
        if self.accum_steps > 1:
            loss = loss / self.accum_steps
        if self._scaling:
            loss = self.scaler.scale(loss)
        loss.backward()
        if self.micro_index != self.accum_steps - 1:
            self.micro_index += 1
            return _MICRO
        self.micro_index = 0
        return self._step()

    def _step(self) -> StepOutcome:
        optimizer = self.optimizer
        if self._scaling:
            self.scaler.unscale_(optimizer)
        params = self._param_list()
        if self.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip, error_if_nonfinite=False)
        else:
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        losses = self._window_losses
        self._window_losses = []
        window_loss = losses[0]
        for value in losses[1:]:  # NaN/Inf in any micro-batch's loss survives the sum
            window_loss = window_loss + value
        if window_loss.device != norm.device:
            window_loss = window_loss.to(norm.device)
        if self._scaling:  # two flags: a bad loss is a real skip; bad gradients alone are an fp16 overflow
            flags = _any_rank_flags(torch.stack([~torch.isfinite(window_loss.reshape(()).float()),
                                                 ~torch.isfinite(norm)]))
            loss_bad, grad_bad = (bool(v) for v in flags.tolist())  # the one host transfer of this step
        else:
            # norm + 0 * loss: 0 * NaN/Inf is NaN, so it is non-finite exactly when the norm or the loss is.
            finite = torch.isfinite(torch.add(norm, window_loss.reshape(()), alpha=0))
            if _distributed():
                loss_bad = bool(_any_rank_flags(~finite).item())  # the one host transfer of this step
            else:
                loss_bad = not finite.item()  # the one host transfer of this step
            grad_bad = False

        if loss_bad or grad_bad:
            # Skip without touching optimizer state, so no NaN reaches momentum buffers.
            optimizer.zero_grad(set_to_none=True)
            if self._scaling:
                self.scaler.update()  # found_inf from unscale_ (still on the device) backs the scale off
            if not loss_bad:
                self.num_overflow += 1
                return StepOutcome(boundary=True, stepped=False, skipped_nonfinite=False, grad_norm=norm)
            self.num_skipped += 1
            self.consecutive_skipped += 1
            if self.consecutive_skipped >= self.max_consecutive_nonfinite:
                raise UserError(
                    f"{self.consecutive_skipped} optimizer steps in a row had a non-finite loss or gradient",
                    "training",
                    "lower the learning rate, check the input data for NaN/Inf, use --precision fp32, "
                    "or rerun with --detect_anomaly to find the operation that produced it",
                )
            return StepOutcome(boundary=True, stepped=False, skipped_nonfinite=True, grad_norm=norm)
        # Gradients are already unscaled and known finite: step directly (GradScaler.step would read
        # found_inf back to the host again).
        optimizer.step()
        if self._scaling:
            self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        self.consecutive_skipped = 0
        return StepOutcome(boundary=True, stepped=True, skipped_nonfinite=False, grad_norm=norm)

    def state_dict(self) -> dict:
        return {"micro_index": self.micro_index, "num_skipped": self.num_skipped,
                "consecutive_skipped": self.consecutive_skipped, "num_overflow": self.num_overflow}

    def load_state_dict(self, state: dict) -> None:
        self.micro_index = int(state.get("micro_index", 0))
        self.num_skipped = int(state.get("num_skipped", 0))
        self.consecutive_skipped = int(state.get("consecutive_skipped", 0))
        self.num_overflow = int(state.get("num_overflow", 0))
        if self.micro_index:
            warnings.warn(f"the checkpoint was saved inside an accumulation window ({self.micro_index} of "
                          f"{self.accum_steps} micro-batches): their gradients are not in it, so this resume "
                          "is not exact; save only when out.boundary", stacklevel=2)
