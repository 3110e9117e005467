"""torchrun with 2 gloo processes on CPU (one launch, ~15-30 s): both ranks step in lockstep, DDP keeps their
weights equal, each rank draws its own randomness and data shard, and only rank 0 writes the run folder."""
import json
from pathlib import Path

from trainkit.testing import run_torchrun

HERE = Path(__file__).parent


def test_torchrun_two_ranks_step_together_with_their_own_randomness(tiny_video, tmp_path):
    proc = run_torchrun(HERE / "ddp_driver.py", tiny_video, tmp_path)
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
