"""torchrun with 2 gloo processes on CPU (one launch): the guide's stage freeze and a zero-weighted loss term
under DDP, identical weights on both ranks after training, per-rank randomness and data shards, rank 0 writes."""
import json
from pathlib import Path

import torch

from trainkit.testing import run_torchrun

HERE = Path(__file__).parent


def test_torchrun_two_ranks_with_stages(synthetic_root, tmp_path):
    proc = run_torchrun(HERE / "ddp_driver.py", synthetic_root, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # 32 crops / 2 ranks / batch 4 = 4 micro-batches per epoch each, accumulation 2: 2 steps/epoch, 2 epochs
    assert r0["calls"] == r1["calls"] == 8 and r0["result_step"] == r1["result_step"] == 4
    assert not set(r0["items"][:16]) & set(r1["items"][:16])  # epoch 1: disjoint shards
    assert r0["rng"] != r1["rng"]  # per-rank random streams (input noise, dropout)
    for k in r0["initial"]:
        assert torch.equal(r0["initial"][k], r1["initial"][k]), k  # the same initialisation on both ranks
    changed = set()
    for k in r0["final"]:
        assert torch.equal(r0["final"][k], r1["final"][k]), k  # DDP kept the replicas identical
        if k in r0["param_names"] and not torch.equal(r0["final"][k], r0["initial"][k]):
            changed.add(k.split(".")[0])
    # trained: hand branch (both stages) and backbone (stage 2); the object branch has weight 0 and its
    # parameters stay put (no gradient, so AdamW skips them; its sigma-reparam power-iteration buffers do move)
    assert {"hand_decoder", "backbone", "refinement"} <= changed and not changed & {"object_decoder", "object_query"}
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pth", "epoch_0001.pth", "epoch_0002.pth",
                                                                        "latest.pth"]
    assert len(list(run.glob("events.*"))) == 1  # one TensorBoard writer: rank 0's
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/epoch" in r] == [2, 4]  # one row per epoch: rank 0 only
