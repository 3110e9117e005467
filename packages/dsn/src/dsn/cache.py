"""A thread-safe LRU for the parameter-free per-video work, keyed on content hashes.

What is cached (none of it depends on model parameters, so results are identical with or without it):
the reward's two ``T x T`` matrices (normalisation + cut-off 1 - cos, and pairwise distances) and the
multi-scale pooled inputs of the advanced model. Keys start with a hash of the feature bytes, so two
videos with identical content (or the same video in every epoch) share entries.
Cached tensors are shared: callers must treat them as read-only.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

import numpy as np
import torch

from .model import pool_pyramid
from .reward import reward_matrices


def content_hash(array: torch.Tensor | np.ndarray) -> str:
    """blake2b of dtype, shape and bytes."""
    a = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    a = np.ascontiguousarray(a)
    h = hashlib.blake2b(digest_size=16)
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


class LRUCache:
    """Least-recently-used map with a size cap, hit/miss counters and one lock around everything."""

    def __init__(self, max_size: int = 1000):
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.max_size = max_size
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
        # Compute outside the lock so one slow entry does not block other threads; if two threads race
        # on the same key, the first stored value wins and both return it.
        value = compute()
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            self._data[key] = value
            while len(self._data) > self.max_size:
                self._data.popitem(last=False)
            return value

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    @property
    def hit_rate(self) -> float:
        with self._lock:
            total = self.hits + self.misses
            return self.hits / total if total else 0.0

    def stats(self) -> dict[str, float]:
        with self._lock:
            total = self.hits + self.misses
            return {
                "cache/hit_rate": self.hits / total if total else 0.0,
                "cache/hits": float(self.hits),
                "cache/size": float(len(self._data)),
            }

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0


class VideoWork:
    """Per-video precomputation, through an LRUCache when one is given, computed directly otherwise."""

    def __init__(self, cache: LRUCache | None = None):
        self.cache = cache

    def _get(self, key: tuple, compute: Callable[[], Any]) -> Any:
        return compute() if self.cache is None else self.cache.get_or_compute(key, compute)

    def reward_matrices(self, digest: str, features: torch.Tensor, temporal_cutoff: int, squared: bool):
        return self._get(("reward", digest, temporal_cutoff, squared),
                         lambda: reward_matrices(features, temporal_cutoff, squared))

    def pyramid(self, digest: str, features: torch.Tensor, num_scales: int):
        """Pooled inputs for one unbatched video ``[T, D]`` -> list of ``([T_k, D], [T_k])``."""

        def compute():
            levels = pool_pyramid(features.unsqueeze(0), None, num_scales)
            return [(xs[0], ms[0]) for xs, ms in levels]

        return self._get(("pyramid", digest, num_scales), compute)

    def stats(self) -> dict[str, float]:
        return self.cache.stats() if self.cache is not None else {}
