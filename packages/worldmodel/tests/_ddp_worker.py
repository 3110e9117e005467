"""Run by ``torchrun --nproc_per_node 2`` in test_ddp: trains a tiny run with DDP (gloo, CPU) and writes what
each rank saw to ``<report>/rank<r>.json`` (outside the run directory, which only rank 0 may write)."""

import hashlib
import json
import sys

import torch
import torch.distributed as dist

import worldmodel.train as wt
from trainkit.config import load_config
from worldmodel.config import Config

report, overrides = sys.argv[1], sys.argv[2:]
seen = {}
_build = wt.build_optimizer


def spy(model, cfg):   # the model this rank trains (build_optimizer gets the unwrapped one)
    seen["model"] = model
    return _build(model, cfg)


wt.build_optimizer = spy
_track = wt.ResumableSampler.track


def track(self, loader, batch_size=None):  # the windows this rank trains on
    seen.setdefault("windows", []).extend(self.indices()[self.consumed:])
    return _track(self, loader, batch_size)


wt.ResumableSampler.track = track
cfg = load_config(Config, None, overrides)
wt.train(cfg, log=lambda *a, **k: None)
rank = int(__import__("os").environ["RANK"])
# after training each rank continues its own random stream (seed_rank_streams): draw from it
draw = torch.rand(4).tolist()
params = torch.cat([p.detach().flatten() for p in seen["model"].parameters()])
digest = hashlib.sha256(params.numpy().tobytes()).hexdigest()
with open(f"{report}/rank{rank}.json", "w") as f:
    json.dump({"rank": rank, "world_size": int(__import__("os").environ["WORLD_SIZE"]), "digest": digest,
               "draw": draw, "windows": seen["windows"]}, f)
if dist.is_initialized():
    dist.destroy_process_group()
