"""Run under ``torchrun --nproc_per_node=2`` by test_distributed.py (not a test module itself).

In one launch (one process group kept across the runs: re-creating it after destroy hangs), on the
mini dataset in argv[1]:
1. ``straight``: 4 epochs uninterrupted;
2. ``split``: the same command, with a real SIGTERM sent to rank 0 during step 5 (mid-epoch 2);
   rank 1 learns of it through GracefulStop's all-reduce, both save and return;
3. ``split`` again with only ``--resume auto --save_dir`` (everything else from the checkpoint).
Each rank writes ``rank{R}.json`` to argv[2]: its first training timesteps and a hash of its freshly
built (pre-DDP) weights, so the test can check per-rank streams and identical initialisation.
"""
import hashlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import torch

from action_ddim import train as T
from action_ddim.diffusion import Diffusion

torch.set_num_threads(1)
data, out = Path(sys.argv[1]), Path(sys.argv[2])
rank = int(os.environ["RANK"])
record = {"rank": rank, "timesteps": [], "init_hash": []}
kill_at = {"step": 0, "calls": 0}

_q_sample, _loss, _build = Diffusion.q_sample, Diffusion.loss, T.build_model


def q_sample(self, x0, t, noise):
    if torch.is_grad_enabled() and len(record["timesteps"]) < 3:  # training draws only (validation: no_grad)
        record["timesteps"].append(t.tolist())
    return _q_sample(self, x0, t, noise)


def loss(self, model, x0, generator=None):
    kill_at["calls"] += 1
    if rank == 0 and kill_at["calls"] == kill_at["step"]:
        os.kill(os.getpid(), signal.SIGTERM)
    return _loss(self, model, x0, generator)


def build_model(cfg, seq_len):
    model = _build(cfg, seq_len)
    h = hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    record["init_hash"].append(h)
    return model


Diffusion.q_sample, Diffusion.loss, T.build_model = q_sample, loss, build_model
cleanup, T.cleanup = T.cleanup, lambda: None  # keep the process group for the next run

flags = {"data.data_dir": str(data / "train"), "data.val_data_dir": str(data / "val"), "train.batch_size": 2,
         "train.num_epochs": 4, "model.d_model": 16, "model.nhead": 2, "model.num_layers": 1, "model.dropout": 0.1,
         "diffusion.num_inference_steps": 3, "train.num_gen_samples": 4, "train.plot_every": 100,
         "train.device": "cpu", "train.quiet": True, "train.warmup_steps": 2}
for name, extra, kill in (("straight", flags, 0), ("split", flags, 5), ("split", {}, 0)):
    kill_at.update(step=kill, calls=0)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # rank 0 has written the previous run's checkpoint
    values = dict(extra, **{"train.save_dir": str(out / name)})
    if not extra:
        values["train.resume"] = "auto"
        if rank == 0:  # keep the mid-epoch checkpoint for the test before the resumed run replaces latest.pt
            shutil.copy(out / name / "checkpoints" / "latest.pt", out / "mid_epoch.pt")
    cfg, resume = T.resolve_config(cli_values=values, log=lambda *a: None)
    T.train(cfg, log=print if rank == 0 else (lambda *a: None), resume=resume)
(out / f"rank{rank}.json").write_text(json.dumps(record))
cleanup()
