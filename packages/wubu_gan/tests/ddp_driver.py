"""Run under ``torchrun --nproc_per_node=2`` by test_distributed.py (not a test module itself).

One tiny epoch of ``wubu_gan.train.train`` on the video in argv[1], run dir argv[2]/run. Each rank writes
``rank{R}.json`` to argv[2]: a hash of its freshly built weights, a hash of its RNG state at its first
training forward (the posterior noise and dropout come from it), its first micro-batch's clip indices, and
a hash of its weights after training.
"""
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from wubu_gan import model as M
from wubu_gan import train as T

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_cfg  # noqa: E402

torch.set_num_threads(1)
video, out = Path(sys.argv[1]), Path(sys.argv[2])
rank = int(os.environ["RANK"])
record = {"rank": rank}
models = []


def digest(module) -> str:
    return hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in module.parameters())).hexdigest()


_init, _forward = M.WuBuGen.__init__, M.WuBuGen.forward


def init(self, *a, **kw):
    _init(self, *a, **kw)
    record["init_hash"] = digest(self)
    models.append(self)


def forward(self, frames, flow=None, sample=True):
    if self.training and "rng_hash" not in record:
        record["rng_hash"] = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()
        record["first_frames_hash"] = hashlib.sha1(frames.detach().numpy().tobytes()).hexdigest()
    return _forward(self, frames, flow, sample)


M.WuBuGen.__init__, M.WuBuGen.forward = init, forward
cfg = tiny_cfg(out, video, epochs=1, batch_size=4, q_controller_enabled=True, wubu_dropout=0.1,
               lambda_gan_adaptive=True)  # its autograd.grad on the wrapped generator must not upset DDP
summary = T.train(cfg, log=print)
record["final_hash"] = digest(models[0])
record["steps"] = summary["step"]
(out / f"rank{rank}.json").write_text(json.dumps(record))
