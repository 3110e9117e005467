"""`worldmodel find-lr`: an exponential LR range test that keeps the per-module LR ratios.

Why not torch-lr-finder (davidtvs/pytorch-lr-finder): it sets every param group to the same LR (collapsing
encoder 1e-5 vs dynamics 1e-4), does no gradient clipping, and expects ``model(inputs)`` / ``criterion(out,
labels)`` batches. Here the reference LR ``lr`` sweeps exponentially from ``min_lr`` to ``max_lr`` and each
group gets ``lr * (its configured LR / optimizer.lr)``; the step is the training step (same loss, clipping,
autocast). The loss is smoothed with an EMA (0.05, bias-corrected); the test stops when the smoothed loss
exceeds 5x its best or turns non-finite. Model and optimizer are restored afterwards. The suggestion is the
reference LR at the steepest descent of the smoothed loss over log10(lr), skipping the first 10% and last 5%.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch

from trainkit.device import autocast, make_grad_scaler, seed_everything
from trainkit.distributed import init_distributed

from .config import Config
from .data import ProcessedDataset, WindowDataset, collate
from .evaluate import build_model, precision_for
from .losses import build_perceptual, compute_losses
from .train import build_optimizer, make_stepper, resolve_data_root


def lr_range_test(optimizer: torch.optim.Optimizer, step_fn, *, ref_lr: float, min_lr: float, max_lr: float,
                  num_iter: int, smooth: float = 0.05, diverge: float = 5.0) -> dict:
    """Drive the reference LR from min_lr to max_lr; ``step_fn()`` runs one training step and returns the loss.
    Every group's LR stays ``ref * group_lr / ref_lr``. Returns lrs, losses, smoothed, group_lrs, stopped_early."""
    ratios = [g["lr"] / ref_lr for g in optimizer.param_groups]
    lrs, losses, smoothed, group_lrs = [], [], [], []
    avg, best, stopped = 0.0, math.inf, False
    for i in range(num_iter):
        lr = min_lr * (max_lr / min_lr) ** (i / (num_iter - 1))
        for g, r in zip(optimizer.param_groups, ratios):
            g["lr"] = lr * r
        group_lrs.append([g["lr"] for g in optimizer.param_groups])
        loss = float(step_fn())
        lrs.append(lr)
        losses.append(loss)
        if not math.isfinite(loss):
            stopped = True
            break
        avg = smooth * loss + (1 - smooth) * avg
        s = avg / (1 - (1 - smooth) ** (i + 1))
        smoothed.append(s)
        best = min(best, s)
        if s > diverge * best:
            stopped = True
            break
    return {"lrs": lrs, "losses": losses, "smoothed": smoothed, "group_lrs": group_lrs, "ratios": ratios,
            "stopped_early": stopped}


def suggest(lrs: list[float], smoothed: list[float], skip_start: float = 0.1, skip_end: float = 0.05) -> float | None:
    n = len(smoothed)
    a, b = int(n * skip_start), n - int(n * skip_end)
    if b - a < 3:
        return None
    x = np.log10(np.asarray(lrs[a:b]))
    g = np.gradient(np.asarray(smoothed[a:b]), x)
    return float(lrs[a + int(np.argmin(g))])


def plot(result: dict, suggested: float | None, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    n = len(result["smoothed"])
    ax.plot(result["lrs"][:n], result["losses"][:n], color="0.75", lw=1, label="loss")
    ax.plot(result["lrs"][:n], result["smoothed"], color="C0", lw=2, label="smoothed (EMA 0.05)")
    if suggested is not None:
        ax.axvline(suggested, color="C3", ls="--", label=f"suggested lr {suggested:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("reference learning rate (per-module ratios kept)")
    ax.set_ylabel("training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_lr_finder(cfg: Config, *, min_lr: float, max_lr: float, num_iter: int, plot_path: str, log=print) -> dict:
    t = cfg.training
    if t.threads:
        torch.set_num_threads(t.threads)
    device = init_distributed(t.device).device
    precision = precision_for(cfg, device)
    data = ProcessedDataset(resolve_data_root(cfg, log))
    windows = WindowDataset(data, "train", cfg.data.sequence_length, cfg.data.frame_skip, cfg.data.window_stride)
    seed_everything(t.seed)
    model = build_model(cfg, data.image_size, cfg.data.sequence_length).to(device)
    if t.use_gradient_checkpointing:
        model.enable_gradient_checkpointing()
    optimizer = build_optimizer(model, cfg)
    # the training step: the same AMP scaler (fp16 on CUDA), clipping and accumulation (one finder step is
    # one optimizer step over gradient_accumulation micro-batches, i.e. at the effective batch size)
    stepper = make_stepper(model, optimizer, make_grad_scaler(device, precision), cfg)
    perceptual = build_perceptual(cfg.loss.perceptual, data.image_size, log).to(device)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(optimizer.state_dict())
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(t.seed)).tolist()
    cursor = {"i": 0}

    def step_fn():
        losses = []
        for _ in range(t.gradient_accumulation):
            idx = [order[(cursor["i"] + k) % len(order)] for k in range(t.batch_size)]
            cursor["i"] += t.batch_size
            batch = collate([windows[i] for i in idx])
            frames, actions = batch["frames"].to(device), batch["actions"].to(device)
            with stepper.micro_batch():
                with autocast(device, precision):
                    loss = compute_losses(model(frames, actions), frames, cfg.loss, perceptual)["loss"]
                stepper.backward(loss)
            losses.append(loss.detach().float())
        return torch.stack(losses).mean()

    model.train()
    log(f"LR range test: {num_iter} steps, reference lr {min_lr:g} -> {max_lr:g}, module ratios "
        + ", ".join(f"{g['name']} {g['lr'] / cfg.optimizer.lr:g}" for g in optimizer.param_groups))
    result = lr_range_test(optimizer, step_fn, ref_lr=cfg.optimizer.lr, min_lr=min_lr, max_lr=max_lr,
                           num_iter=num_iter)
    model.load_state_dict(saved_model)
    optimizer.load_state_dict(saved_opt)
    s = suggest(result["lrs"], result["smoothed"])
    result["suggested_lr"] = s if s is not None else float("nan")
    ratios = {g["module"]: g["lr"] / cfg.optimizer.lr for g in optimizer.param_groups}
    result["suggested_module_lrs"] = {k: (s or float("nan")) * r for k, r in ratios.items()}
    result["plot"] = str(plot(result, s, plot_path))
    if result["stopped_early"]:
        log(f"stopped at lr {result['lrs'][-1]:.3g}: the loss diverged")
    return result
