"""Data-loading helpers: a sampler whose position goes into the checkpoint, for exact mid-epoch resume."""
from __future__ import annotations

import math
from typing import Iterable, Iterator, Sized

import torch
from torch.utils.data import Sampler

from .errors import UserError


class ResumableSampler(Sampler[int]):
    """A (Distributed)Sampler whose mid-epoch position is checkpointed, so a resumed run continues at the next micro-batch.

    Order: a permutation that depends only on ``(seed, epoch)`` (the same ``torch.randperm`` with a generator
    seeded ``seed + epoch`` that ``torch.utils.data.DistributedSampler`` uses, so orders match it), or
    ``0..N-1`` with ``shuffle=False``. It does not touch the global RNG.

    Shards (DDP): with ``R`` processes, rank ``r`` takes every R-th index of the epoch's order starting at ``r``.
    ``drop_last=False`` pads the order by repeating its first indices until it divides by ``R`` (a few samples
    are seen twice per epoch); ``drop_last=True`` drops the tail so it divides by ``R`` (a few are skipped).
    Every rank therefore gets the same number of samples, ``len(sampler)``, and steps in lockstep.
    ``num_replicas``/``rank`` default to the process group (1 / 0 without one).

    Position: ``consumed`` counts the samples of this rank's shard that the *loop* has taken in the current
    epoch. It is advanced by :meth:`track` as each batch is handed to the loop body, not when the sampler
    yields, because DataLoader workers prefetch several batches ahead of the loop. ``iter(sampler)`` starts at
    ``consumed``, so after :meth:`load_state_dict` the DataLoader's first batch is the one after the last
    batch the interrupted run trained on.

    Gradient accumulation: resume happens only on an accumulation boundary. A loop checks for a stop
    request (and saves mid-epoch) only when ``OptimizerStep`` reports ``out.boundary``; then no gradient is
    half-accumulated and ``consumed`` is a whole number of windows. (Storing a partial window would mean
    checkpointing every rank's local ``.grad`` tensors; it is not worth it for at most ``accum - 1``
    micro-batches of work.) An epoch-end checkpoint is exact when the epoch's micro-batch count divides by the
    accumulation count; otherwise a window spans two epochs and its first part's gradients are not in the
    checkpoint (``OptimizerStep.load_state_dict`` warns when it restores such an open window).

    Usage::

        sampler = ResumableSampler(len(train_set), shuffle=True, seed=cfg.seed)    # DDP-aware
        loader = DataLoader(train_set, batch_size=B, sampler=sampler, generator=sampler.generator, num_workers=4)
        if resuming:
            meta = restore_training_state(state, model=..., sampler=sampler)    # or sampler.load_state_dict(...)
        for epoch in range(start_epoch, cfg.num_epochs):
            sampler.set_epoch(epoch)           # keeps the restored position for the resumed epoch only
            for batch in sampler.track(loader):
                ...
                out = stepper.backward(loss)
                if out.boundary and stop.should_stop():
                    save(training_state(..., epoch=epoch, sampler=sampler))   # resume continues mid-epoch
                    return
            save(training_state(..., epoch=epoch + 1, sampler=sampler))

    Pass ``generator=sampler.generator`` to the DataLoader: otherwise the DataLoader draws its workers' base
    seed from the global torch RNG each time an epoch's iterator is created, and a resume that creates it
    mid-epoch shifts every later random draw (dropout, noise), so the run is no longer bit-identical.
    Random augmentation inside workers is exact across a resume only when derived from (seed, epoch, index),
    since a resumed epoch deals the remaining batches to the workers differently.

    The state (:meth:`state_dict`) is a dict of plain ints/bools (``weights_only``-safe); it is the same on
    every rank, so rank 0's copy in the checkpoint serves all of them.
    """

    def __init__(self, data: Sized | int, *, shuffle: bool = True, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None, drop_last: bool = False):
        from .distributed import rank as dist_rank
        from .distributed import world_size as dist_world_size

        self.dataset_len = int(data) if isinstance(data, int) else len(data)
        if self.dataset_len <= 0:
            raise UserError("the training set is empty", "data", "expected at least one sample")
        self.num_replicas = dist_world_size() if num_replicas is None else int(num_replicas)
        self.rank = dist_rank() if rank is None else int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} outside [0, {self.num_replicas})")
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        if self.drop_last and self.dataset_len < self.num_replicas:
            raise UserError(f"the training set has {self.dataset_len} samples, fewer than the {self.num_replicas} "
                            "processes", "data", "expected at least one sample per process")
        if self.drop_last:
            self.num_samples = self.dataset_len // self.num_replicas
        else:
            self.num_samples = math.ceil(self.dataset_len / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self.epoch = 0
        self.consumed = 0
        self._restored_epoch: int | None = None
        # Pass as DataLoader(generator=...): the DataLoader draws its workers' base seed from it (from the
        # global RNG otherwise, once per epoch, which shifts the global stream when a resume re-creates the
        # iterator mid-epoch). Reseeded from (seed, epoch) at every set_epoch.
        self.generator = torch.Generator()
        self._seed_generator()

    def _seed_generator(self) -> None:
        self.generator.manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)

    # ------------------------------------------------------------------ order
    def indices(self, epoch: int | None = None) -> list[int]:
        """This rank's full shard for ``epoch`` (default: the current one), from its start."""
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            order = list(range(self.dataset_len))
        if self.drop_last:
            order = order[: self.total_size]
        else:
            pad = self.total_size - len(order)
            while pad > 0:
                order += order[:pad]
                pad = self.total_size - len(order)
        return order[self.rank:self.total_size:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        # Snapshot now: the DataLoader calls iter() when its iterator is created, before any prefetching.
        return iter(self.indices()[self.consumed:])

    def __len__(self) -> int:
        """The whole epoch's shard length (a resumed epoch yields ``len(self) - consumed`` of them)."""
        return self.num_samples

    # ------------------------------------------------------------------ position
    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` at its beginning, except the epoch a restored state is in: that one keeps its position."""
        epoch = int(epoch)
        if self._restored_epoch is not None and epoch == self._restored_epoch:
            self._restored_epoch = None
        else:
            self._restored_epoch = None
            self.epoch = epoch
            self.consumed = 0
        self._seed_generator()

    def advance(self, num_samples: int) -> None:
        """Count ``num_samples`` more samples as taken by the loop (``track`` calls this for you)."""
        self.consumed = min(self.consumed + int(num_samples), self.num_samples)

    def track(self, loader: Iterable, batch_size: int | None = None) -> Iterator:
        """Iterate ``loader`` and count each batch as consumed as it is handed to the loop body.

        ``batch_size`` defaults to ``loader.batch_size`` (give it when the DataLoader uses a ``batch_sampler``).
        The count is advanced before the body runs, so a checkpoint saved inside the body, after the step,
        includes the batch just trained on.
        """
        size = batch_size if batch_size is not None else getattr(loader, "batch_size", None)
        if not size:
            raise ValueError("ResumableSampler.track needs the batch size: pass batch_size=")
        for batch in loader:
            self.advance(size)
            yield batch

    def consumed_batches(self, batch_size: int) -> int:
        """Micro-batches of ``batch_size`` taken so far this epoch (for progress bars: ``initial=``)."""
        return math.ceil(self.consumed / batch_size)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed, "shuffle": self.shuffle,
                "dataset_len": self.dataset_len, "num_replicas": self.num_replicas, "drop_last": self.drop_last,
                "num_samples": self.num_samples}

    def load_state_dict(self, state: dict, where: str = "checkpoint") -> None:
        """Restore epoch and position; the next ``set_epoch(epoch)`` for that epoch keeps the position.

        A mid-epoch position is only meaningful for the same data order: a different dataset size, seed,
        shuffle, drop_last or number of processes is a UserError naming the key. At an epoch boundary
        (nothing or everything of the epoch consumed) those may change (the next epoch starts fresh).
        """
        consumed = int(state.get("consumed", 0))
        epoch = int(state.get("epoch", 0))
        mid_epoch = 0 < consumed < int(state.get("num_samples", consumed + 1))
        if mid_epoch:
            mine = self.state_dict()
            for key in ("dataset_len", "num_replicas", "seed", "shuffle", "drop_last"):
                if key in state and state[key] != mine[key]:
                    raise UserError(f"cannot resume mid-epoch: the data order changed ({key} was {state[key]!r}, "
                                    f"now {mine[key]!r})", where,
                                    "resume with the same data, seed and number of processes, or from an "
                                    "epoch-end checkpoint")
        self.epoch = epoch
        self.consumed = min(consumed, self.num_samples)
        self._restored_epoch = epoch
        self._seed_generator()
