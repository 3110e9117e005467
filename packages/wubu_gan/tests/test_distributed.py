"""torchrun with 2 gloo processes on CPU (one launch, ~15-30 s): both ranks step in lockstep, DDP keeps their
weights equal, each rank draws its own randomness and data shard, and only rank 0 writes the run folder."""
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_torchrun_two_ranks_step_together_with_their_own_randomness(tiny_video, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_driver.py"), str(tiny_video), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["steps"] == r1["steps"] > 0
    assert r0["init_hash"] == r1["init_hash"]            # the same initial weights on both ranks
    assert r0["final_hash"] == r1["final_hash"]          # gradients all-reduced: still equal after training
    assert r0["final_hash"] != r0["init_hash"]           # and they did train
    assert r0["rng_hash"] != r1["rng_hash"]              # per-rank streams (posterior noise, dropout)
    assert r0["first_frames_hash"] != r1["first_frames_hash"]  # each rank its own shard
    run = tmp_path / "run"
    assert len(list(run.glob("events.*"))) == 1 and (run / "metrics.jsonl").is_file()
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".pt")  # rank 0 wrote the checkpoints
    assert "rank" not in " ".join(p.name for p in run.iterdir())
