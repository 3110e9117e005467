import json
import os
import signal
from pathlib import Path

import torch

from trainkit.distributed import GracefulStop, all_reduce_mean, make_sampler
from trainkit.testing import run_torchrun

HERE = Path(__file__).parent


def torchrun(run_dir, *args):
    return run_torchrun(HERE / "toy_loop.py", "--run_dir", run_dir, *args, timeout=240)


def test_torchrun_two_ranks_sync_seeding_guard_and_sigterm_resume(tmp_path):
    """One straight 2-rank run, one stopped by SIGTERM to torchrun mid-epoch, its --resume auto: DDP agreement,
    the seeding rule, the cross-rank non-finite guard and exact mid-epoch resume, in three launches."""
    from test_checkpoint import assert_same_run, assert_stopped_mid_epoch

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # 64 samples / 2 ranks / batch 4 = 8 micro-batches per rank and epoch; accum 2 -> 4 steps per epoch.
    common = ["--epochs", "3", "--accum", "2", "--nan_loss_at_step", "2", "--nan_rank", "1"]
    proc = torchrun(straight, *common)
    assert proc.returncode == 0, proc.stdout
    r0 = json.loads((straight / "result_rank0.json").read_text())
    r1 = json.loads((straight / "result_rank1.json").read_text())
    assert r0["world_size"] == 2 and r0["step"] == 12
    assert r0["params"] == r1["params"]  # identical after accumulated, no_sync'd steps ...
    assert r0["num_skipped"] == r1["num_skipped"] == 1  # ... and after a NaN loss on rank 1 only (finite grads)
    assert r0["rank_mean"] == r1["rank_mean"] == 0.5  # all-reduce of {0, 1}
    # seed_rank_streams: identical init on both ranks (before DDP's broadcast), different streams afterwards.
    assert r0["init_params"] == r1["init_params"]
    assert r0["rank_seed"] != r1["rank_seed"]
    assert all(a != b for a, b in zip(r0["draws"], r1["draws"]))  # torch, numpy and python draws all differ
    assert not list(straight.glob("rank1*")) and len(list(straight.glob("events.*"))) == 1  # rank 0 writes

    proc = torchrun(resumed, *common, "--sigterm_at_step", "6")  # SIGTERM to torchrun, which forwards it
    assert "saved checkpoint at step 6" in proc.stdout, proc.stdout
    assert_stopped_mid_epoch(resumed, json.loads((resumed / "result_rank0.json").read_text()))
    proc = torchrun(resumed, *common, "--resume", "auto")
    assert proc.returncode == 0, proc.stdout
    assert_same_run(straight, resumed, ranks=(0, 1))


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
