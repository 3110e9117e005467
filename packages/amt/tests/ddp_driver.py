"""Run under ``torchrun --nproc_per_node=2`` (gloo, CPU) by test_distributed.py; not a test module itself.

One tiny run on the synthetic data in argv[1] with the guide's stage-1 freeze (backbone and object branch
frozen in epoch 1) and a zero-weighted loss term (object_position: that branch gets no gradient), the two
cases that used to crash DDP. Each rank writes ``rank{R}.pt`` to argv[2]: how many training losses it
computed, a hash of its RNG state at the first one (per-rank streams), the crops' dataset indices it
trained on, and its final weights.
"""
import hashlib
import os
import sys
from pathlib import Path

import torch

import amt.train as T

torch.set_num_threads(1)
data, out = Path(sys.argv[1]), Path(sys.argv[2])
rec = {"calls": 0, "rng": None, "items": [], "model": None}
_build, _losses = T.build_model, T.compute_losses


def build_model(cfg, log=None):
    rec["model"] = _build(cfg, log=log)
    rec["initial"] = {k: v.detach().clone() for k, v in rec["model"].state_dict().items()}
    return rec["model"]


def compute_losses(out_, batch, *a, **k):
    if torch.is_grad_enabled():
        rec["calls"] += 1
        rec["items"] += batch["tk_index"].tolist()
        if rec["rng"] is None:
            rec["rng"] = hashlib.sha1(torch.random.get_rng_state().numpy().tobytes()).hexdigest()
    return _losses(out_, batch, *a, **k)


T.build_model, T.compute_losses = build_model, compute_losses
sets = ["model.backbone=cnn", f"data.root={data}", f"output_dir={out / 'run'}", "data.image_size=48",
        "model.cnn_width=8", "model.hidden_dim=16", "model.num_heads=2", "model.num_decoder_layers=1",
        "model.num_refinement_steps=1", "training.batch_size=4", "training.num_epochs=2",
        "training.accumulation_steps=2", "training.T_0=1", "training.log_freq=1", "data.max_train_samples=32",
        "data.max_val_samples=8", "training.quiet=true", "training.input_noise=0.01", "training.device=cpu",
        "loss_weights.object_position=0", "training.save_freq=1",
        "stages=[{name: hand, epochs: 1, freeze_all_except: [hand_encoder, hand_decoder, refinement]}, {name: joint, epochs: 1}]"]
cfg = T.config_for_run(None, sets)
result = T.train(cfg, log=print)
rank = int(os.environ["RANK"])  # train() has destroyed the process group by now
torch.save({"calls": rec["calls"], "rng": rec["rng"], "items": rec["items"], "result_step": result["step"],
            "final": {k: v.detach().clone() for k, v in rec["model"].state_dict().items()}, "initial": rec["initial"],
            "param_names": [n for n, _ in rec["model"].named_parameters()]},
           out / f"rank{rank}.pt")
