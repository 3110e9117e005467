"""torch.distributed from torchrun's environment, plus the small helpers a DDP loop needs."""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist

from .device import resolve_device, seed_everything


@dataclass
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    is_distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA); otherwise a 1-process DistInfo."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_spec)
    if world_size <= 1:
        return DistInfo(0, 0, 1, device, False)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, local_rank, world_size, device, True)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    if is_distributed():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _reduce_device() -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(metrics: Mapping[str, float], *, mean: bool) -> dict[str, float]:
    if not is_distributed() or not metrics:
        return {k: float(v) for k, v in metrics.items()}
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    if mean:
        values /= dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, values.tolist())}


def all_reduce_mean(metrics: Mapping[str, float]) -> dict[str, float]:
    """Average each value over ranks (every rank must pass the same keys)."""
    return _all_reduce(metrics, mean=True)


def all_reduce_sum(metrics: Mapping[str, float]) -> dict[str, float]:
    """Sum each value over ranks (every rank must pass the same keys)."""
    return _all_reduce(metrics, mean=False)


def rank_seed(seed: int, rank_: int) -> int:
    """The per-rank seed that :func:`seed_rank_streams` uses: a hash of (seed, rank), below 2**63."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed) % 2**63, int(rank_)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_rank_streams(seed: int) -> int:
    """Reseed python/numpy/torch/CUDA with a per-rank seed derived from ``(seed, rank)``; returns that seed.

    The DDP seeding rule (model init identical on every rank, per-step randomness different per rank)::

        seed_everything(cfg.seed)               # 1. same seed everywhere ...
        model = build_model(cfg)                #    ... so every rank builds identical weights
        model = wrap_ddp(model, info)           #    (DDP also broadcasts rank 0's weights)
        seed_rank_streams(cfg.seed)             # 2. from here on: dropout, noise, timesteps, augmentation
                                                #    and DataLoader worker seeds differ per rank

    Anything that must be identical on every rank (validation subsets, fixed evaluation noise, the data
    shuffle) must use its own generator seeded from ``cfg.seed`` (e.g. ``make_generator(device, cfg.seed)``,
    :class:`trainkit.data.ResumableSampler`), never the global streams after this call. Single-process runs
    call it too (rank 0), so one code path serves both. The rank is the global rank of the initialised
    process group, else the ``RANK`` environment variable, else 0. Resuming restores each rank's own
    streams from the checkpoint (``training_state`` gathers them), so call this before restoring.
    """
    if is_distributed():
        r = dist.get_rank()
    else:
        r = int(os.environ.get("RANK", "0"))
    derived = rank_seed(seed, r)
    seed_everything(derived)
    return derived


def make_sampler(dataset, *, shuffle: bool, seed: int = 0, drop_last: bool = False):
    """A DistributedSampler under DDP (call ``set_epoch`` each epoch), else None (use the DataLoader's shuffle)."""
    if not is_distributed():
        return None
    from torch.utils.data import DistributedSampler

    return DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)


def wrap_ddp(model: torch.nn.Module, info: DistInfo, **kwargs) -> torch.nn.Module:
    if not info.is_distributed:
        return model
    if info.device.type == "cuda":
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index], **kwargs)
    return torch.nn.parallel.DistributedDataParallel(model, **kwargs)  # CPU: device_ids must stay None


def cleanup() -> None:
    _CPU_GROUP.clear()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


_CPU_GROUP: list = []


def _cpu_group():
    """A gloo process group for small CPU-side agreements (None: the default group already is gloo)."""
    if dist.get_backend() == "gloo":
        return None
    if not _CPU_GROUP:
        _CPU_GROUP.append(dist.new_group(backend="gloo"))  # collective: every rank reaches this together
    return _CPU_GROUP[0]


class GracefulStop:
    """SIGTERM/SIGINT set a flag; ``should_stop()`` at a step boundary agrees across ranks.

    torchrun forwards SIGTERM to every worker and kills them ~30 s later, so a loop that checks this
    every step has time to save a checkpoint. A second SIGINT falls through to the default handler.
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.requested = False
        self.signal_name: str | None = None
        self._previous = {}
        from .runsafety import clear_stop

        clear_stop()  # a new run starts unstopped (tests build many in one process)
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        from .runsafety import note_stop

        note_stop(self.signal_name)  # so validation/long loops can poll trainkit.runsafety.stop_requested()

    def should_stop(self) -> bool:
        """Whether any rank got a signal. Every rank must call it at the same points (e.g. each boundary).

        Under DDP the flag travels in a CPU tensor (over a gloo group when the default backend is NCCL), so
        the check never waits for the GPU: no device-to-host transfer.
        """
        flag = self.requested
        if is_distributed():
            t = torch.tensor([1.0 if flag else 0.0])
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_cpu_group())
            flag = bool(t.item() > 0)
            if flag and not self.requested:
                self.requested, self.signal_name = True, "peer rank"
        return flag

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, TypeError):
                pass
        self._previous = {}
