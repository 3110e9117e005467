"""The LRU feature cache: eviction, counters, content keys, thread safety, identical results."""
import threading

import numpy as np
import torch

torch.set_num_threads(1)  # the shared 2-core machine: tiny ops are much slower with thread contention

from dsn.cache import LRUCache, VideoWork, content_hash
from dsn.reward import reward_matrices


def test_lru_eviction_and_counters():
    c = LRUCache(2)
    calls = []

    def make(k):
        return lambda: calls.append(k) or k * 10

    assert c.get_or_compute(1, make(1)) == 10
    assert c.get_or_compute(2, make(2)) == 20
    assert c.get_or_compute(1, make(1)) == 10  # hit; 1 becomes most recent
    assert c.get_or_compute(3, make(3)) == 30  # evicts 2, the least recently used
    assert 2 not in c and 1 in c and 3 in c
    assert calls == [1, 2, 3]
    assert c.stats() == {"cache/hit_rate": 0.25, "cache/hits": 1.0, "cache/size": 2.0}


def test_content_hash_is_about_content():
    a = np.random.default_rng(0).random((5, 3)).astype(np.float32)
    assert content_hash(a) == content_hash(a.copy()) == content_hash(torch.from_numpy(a.copy()))
    b = a.copy()
    b[2, 1] += 1e-6
    assert content_hash(a) != content_hash(b)
    assert content_hash(a) != content_hash(a.astype(np.float64))
    assert content_hash(a) != content_hash(a.reshape(3, 5))


def test_cached_work_identical_to_direct():
    x = torch.randn(30, 8)
    direct = VideoWork(None)
    cached = VideoWork(LRUCache(10))
    d = content_hash(x)
    for _ in range(2):
        for u, v in zip(direct.reward_matrices(d, x, 20, True), cached.reward_matrices(d, x, 20, True)):
            assert torch.equal(u, v)
        for (ux, um), (vx, vm) in zip(direct.pyramid(d, x, 3), cached.pyramid(d, x, 3)):
            assert torch.equal(ux, vx) and torch.equal(um, vm)
    assert cached.cache.hits == 2 and cached.cache.misses == 2
    torch.testing.assert_close(cached.reward_matrices(d, x, 20, True)[0], reward_matrices(x)[0], rtol=0, atol=0)


def test_concurrent_access_is_safe():
    c = LRUCache(16)
    errors = []
    per_thread = 400

    def worker(seed):
        rng = np.random.default_rng(seed)
        for _ in range(per_thread):
            k = int(rng.integers(0, 40))
            try:
                v = c.get_or_compute(k, lambda k=k: np.full(64, k))
                if not (v == k).all():
                    errors.append((k, v[0]))
            except Exception as err:  # pragma: no cover - a failure path
                errors.append(err)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert c.hits + c.misses == 8 * per_thread
    assert len(c) <= 16
