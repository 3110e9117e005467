"""Device resolution, mixed precision (torch.amp), seeding and TF32."""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from .errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")
_PRECISION_ALIASES = {"32": "fp32", "float32": "fp32", "bfloat16": "bf16", "16": "fp16", "float16": "fp16"}


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto|cpu|cuda|cuda:N|mps`` -> torch.device; a device that is not there is a UserError."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise UserError("device 'mps' is not available", "--device", "use --device cpu or auto")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"device '{spec}' requested but CUDA is not available on this machine", "--device",
                            "use --device cpu or --device auto")
        if ":" in spec:
            index_text = spec.split(":", 1)[1]
            if not index_text.isdigit():
                raise UserError(f"bad device '{spec}'", "--device", "expected cuda:N with N an integer")
            index = int(index_text)
            count = torch.cuda.device_count()
            if index >= count:
                raise UserError(f"device '{spec}' does not exist", "--device", f"expected cuda:0..cuda:{count - 1}")
            return torch.device("cuda", index)
        return torch.device("cuda")
    raise UserError(f"unknown device '{spec}'", "--device", "expected auto, cpu, cuda, cuda:N or mps")


def check_precision(precision: str) -> str:
    p = _PRECISION_ALIASES.get(str(precision).lower(), str(precision).lower())
    if p not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'", "--precision", f"expected one of {list(PRECISIONS)}")
    return p


_NO_AUTOCAST = contextlib.nullcontext()


def autocast(device: torch.device | str, precision: str):
    """Autocast context for bf16/fp16 (``torch.amp`` API, CPU included); a no-op for fp32."""
    if precision == "fp32":  # the common case, once per micro-batch: no parsing, no allocation
        return _NO_AUTOCAST
    precision = check_precision(precision)
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.amp.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler:
    """A real GradScaler only for fp16 on CUDA (bf16 needs none); otherwise a disabled one (every call a no-op)."""
    device = torch.device(device)
    enabled = check_precision(precision) == "fp16" and device.type == "cuda"
    return torch.amp.GradScaler(device.type if device.type in ("cuda", "cpu") else "cpu", enabled=enabled)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


class TargetedGenerator(torch.Generator):
    """A CPU-backed generator that stands for a device which has no generator of its own (``meta``).

    ``make_generator("meta", seed)`` returns one, so code that asks trainkit for "the generator for this
    device" runs unchanged on the meta device in tests, while :func:`trainkit.testing.strict_rng_devices`
    can still tell it apart from a plain ``torch.Generator()`` (the CPU generator that crashes on CUDA).
    """

    target_device: torch.device


def make_generator(device: torch.device | str, seed: int | None = None) -> torch.Generator:
    """A ``torch.Generator`` on ``device``'s type, seeded with ``seed`` (``None``: left at torch's default seed).

    Random draws that fill a tensor on a device must use a generator of that device's type:
    ``torch.randn(shape, generator=torch.Generator(), device="cuda")`` raises on a GPU. So::

        g = make_generator(device, seed)             # cuda -> CUDA generator, cpu -> CPU generator
        noise = torch.randn(shape, generator=g, device=device)

    * ``cuda`` / ``cuda:N``: a generator on that CUDA device (``cuda`` means the current device).
    * ``cpu``: a CPU generator.
    * ``mps``: an MPS generator (torch >= 2.1 supports them). If this torch build cannot make one, a CPU
      generator is returned with a warning; draw on the CPU and move the result:
      ``torch.randn(shape, generator=g).to(device)`` (streams then differ from a native MPS generator).
    * ``meta``: torch has no meta generator and the meta device ignores generators; a CPU-backed
      :class:`TargetedGenerator` that remembers ``meta`` is returned so device-correctness tests on ``meta``
      can tell it from a stray CPU generator (see ``trainkit.testing.strict_rng_devices``).

    The same seed gives the same stream on the same device type; streams differ between device types
    (CPU and CUDA use different algorithms), so a result is reproducible per device, not across devices.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "meta":
        generator: torch.Generator = TargetedGenerator()
        generator.target_device = device
    else:
        try:
            generator = torch.Generator(device=device)
        except RuntimeError as err:
            if device.type != "mps":
                raise
            import warnings

            warnings.warn(f"no MPS generator in this torch build ({err}); using a CPU generator: draw on the CPU "
                          "and move the tensor to the device", stacklevel=2)
            generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(int(seed))
    return generator


def set_tf32(enabled: bool) -> None:
    """TF32 matmuls/convolutions on Ampere+ GPUs: faster, ~1e-3 relative precision."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
