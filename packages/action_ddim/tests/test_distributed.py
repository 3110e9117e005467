"""torchrun with 2 gloo processes (one launch, ~10-20 s): per-rank randomness and exact mid-epoch resume.

The launch runs ``ddp_driver.py``: an uninterrupted 4-epoch run, the same run stopped by a real SIGTERM to
rank 0 in the middle of epoch 2, and its resume with only ``--resume auto --save_dir``.
"""
import json
from pathlib import Path

import torch
import yaml

from trainkit.checkpoint import load_checkpoint
from trainkit.testing import run_torchrun

HERE = Path(__file__).parent


def _rows(run):
    drop = {"time", "val/time_s", "train/epoch_time_s"}
    return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_two_ranks_draw_differently_and_resume_mid_epoch_exactly(tiny_data, tmp_path):
    proc = run_torchrun(HERE / "ddp_driver.py", tiny_data, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    # 10 sequences / 2 ranks / batch 2 = 3 steps per epoch; SIGTERM during step 5, the 2nd of epoch 2.
    assert "stopping on SIGTERM after step 5 (4 of 5 sequences of epoch 2)" in proc.stdout, proc.stdout[-3000:]
    assert "resumed from" in proc.stdout and "4 sequences into epoch 2" in proc.stdout

    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["init_hash"] == r1["init_hash"]  # identical initial weights on both ranks (before DDP's broadcast)
    assert r0["timesteps"] != r1["timesteps"]  # but each rank draws its own timesteps (and noise, dropout)
    assert all(a != b for a, b in zip(r0["timesteps"], r1["timesteps"]))

    # Each rank's running sums of the interrupted epoch are its own (rank_extra), not rank 0's copied to both.
    mid = load_checkpoint(tmp_path / "mid_epoch.pt")
    partials = [entry["epoch_partial"] for entry in mid["rank_extra_per_rank"]]
    assert len(partials) == 2 and not torch.equal(partials[0]["loss_sum"], partials[1]["loss_sum"])

    straight, split = tmp_path / "straight", tmp_path / "split"
    a, b = (load_checkpoint(d / "checkpoints" / "latest.pt") for d in (straight, split))
    assert a["step"] == b["step"] == 12 and a["epoch"] == b["epoch"] == 4
    for key in ("model",):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), name
    for name, tensor in a["ema"]["module"].items():
        assert torch.equal(tensor, b["ema"]["module"][name]), name
    assert _rows(straight) == _rows(split)  # train/loss at step 10, every epoch loss and val/ metric
    ya, yb = (yaml.safe_load((d / "config.yaml").read_text()) for d in (straight, split))
    assert ya["data"] == yb["data"] and ya["model"] == yb["model"]  # the resume kept the run's config
    assert not (split / "rank1").exists() and len(list(split.glob("events.*"))) == 2  # rank 0 writes (2 runs)
