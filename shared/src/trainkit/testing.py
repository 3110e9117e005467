"""Test helpers that catch GPU-only bugs on a CPU-only machine.

The classic one: ``torch.randn(shape, generator=torch.Generator(), device="cuda")`` (a CPU generator feeding
a CUDA draw) raises on a GPU, but on CPU the devices agree and on ``meta`` torch ignores the generator, so a
CPU test suite never sees it. Two techniques together catch this class of bug without a GPU:

1. Run the sampling/inference path on the ``meta`` device (shapes and control flow, no numbers) with every
   generator made by ``trainkit.device.make_generator(device, seed)``: on ``meta`` that returns a generator
   that *stands for* the meta device.
2. Inside :func:`strict_rng_devices`, every random factory checks that its generator belongs to the device
   of the tensor it fills, and raises :class:`RngDeviceMismatch` otherwise. A stray ``torch.Generator()``
   (CPU) filling a ``meta`` tensor is then exactly the bug that would crash on CUDA.

Example (a package test)::

    from trainkit.testing import strict_rng_devices

    def test_sampling_uses_device_generators():
        model = build_model(cfg).to("meta")
        with strict_rng_devices():
            sample(model, num=2, device=torch.device("meta"), seed=0)   # raises on a CPU generator

Where a path cannot run on ``meta`` (it reads values: ``.item()``, data-dependent indexing), run it on
CPU inside ``strict_rng_devices()``: that still catches a generator of another device type. What is
covered: ``torch.randn/rand/randint/randperm/normal/bernoulli/multinomial/poisson/randn_like/rand_like/
randint_like`` and the in-place ``Tensor.normal_/uniform_/bernoulli_/random_/exponential_/geometric_/
cauchy_/log_normal_`` (so ``torch.nn.init`` too), looked up through ``torch.`` at call time. Code that
bound a function earlier (``from torch import randn``) is not patched.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import torch

_FACTORIES = ("randn", "rand", "randint", "randperm")  # device from device= (or out=, or the default)
_LIKE = ("randn_like", "rand_like", "randint_like")  # device from device= or the input
_FROM_INPUT = ("normal", "bernoulli", "multinomial", "poisson")  # device from the tensor arguments
_INPLACE = ("normal_", "uniform_", "bernoulli_", "random_", "exponential_", "geometric_", "cauchy_", "log_normal_")


class RngDeviceMismatch(RuntimeError):
    """A random draw got a generator whose device type differs from the tensor it fills."""


def generator_device_type(generator: torch.Generator) -> str:
    """The device a generator stands for (``meta`` for ``make_generator("meta")``'s)."""
    target = getattr(generator, "target_device", None)
    return target.type if target is not None else generator.device.type


def _first_tensor_device(args, kwargs) -> torch.device | None:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def _output_device(name: str, args, kwargs) -> torch.device:
    out = kwargs.get("out")
    if isinstance(out, torch.Tensor):
        return out.device
    if kwargs.get("device") is not None:
        return torch.device(kwargs["device"])
    if name in _LIKE or name in _FROM_INPUT:
        found = _first_tensor_device(args, kwargs)
        if found is not None:
            return found
    return torch.get_default_device()


def _check(name: str, generator, device: torch.device) -> None:
    if generator is None:
        return
    gen_type = generator_device_type(generator)
    if gen_type != device.type:
        raise RngDeviceMismatch(
            f"{name}: a {gen_type} generator fills a tensor on {device}; on a GPU this raises. Make the "
            f"generator with trainkit.device.make_generator(device, seed) for the tensor's device")


def _wrap_function(name: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def checked(*args, **kwargs):
        _check(f"torch.{name}", kwargs.get("generator"), _output_device(name, args, kwargs))
        return fn(*args, **kwargs)

    return checked


def _wrap_method(name: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def checked(self, *args, **kwargs):
        _check(f"Tensor.{name}", kwargs.get("generator"), self.device)
        return fn(self, *args, **kwargs)

    return checked


@contextlib.contextmanager
def strict_rng_devices() -> Iterator[None]:
    """Within the block, a random draw whose generator's device type differs from its output's raises
    :class:`RngDeviceMismatch` (see the module docstring for what is covered and the ``meta`` technique)."""
    saved: list[tuple[object, str, object]] = []
    try:
        for name in _FACTORIES + _LIKE + _FROM_INPUT:
            fn = getattr(torch, name)
            saved.append((torch, name, fn))
            setattr(torch, name, _wrap_function(name, fn))
        for name in _INPLACE:
            fn = getattr(torch.Tensor, name)
            saved.append((torch.Tensor, name, fn))
            setattr(torch.Tensor, name, _wrap_method(name, fn))
        yield
    finally:
        for owner, name, fn in reversed(saved):
            setattr(owner, name, fn)


def run_torchrun(script, *args, nproc: int = 2, env: dict | None = None, timeout: float = 400):
    """Launch ``script`` under ``torchrun --standalone --nproc_per_node nproc`` on CPU (gloo) for a DDP test.

    One thread per process and the loopback interface (so it runs on a sandboxed CI machine), W&B off, unbuffered
    output; ``env`` adds or overrides variables. Returns the ``CompletedProcess`` with stdout and stderr merged
    in ``.stdout``, so a failing assert can show the ranks' last lines.
    """
    import os
    import subprocess
    import sys

    full_env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", WANDB_MODE="disabled",
                    PYTHONUNBUFFERED="1", **(env or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(script), *map(str, args)]
    return subprocess.run(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
