"""Benchmarks for `amt`, each against a baseline measured in the same run (ratios).

1. PA-MPJPE: batched torch (fp64) vs a per-sample SciPy loop (the toolkit's align_w_scale).
2. Training throughput (samples/s) of the CPU recipe: fp32 vs bf16 autocast; gradient checkpointing off vs on
   (time, and activation memory saved for backward, measured with saved-tensor hooks; on CUDA also peak memory).
3. Data loading vs training consumption (samples/s each, on the same batches).
4. trainkit overhead: OptimizerStep + EMA step vs a bare backward/clip/step.

    uv run python tools/bench_amt.py [--steps 6] [--data_root DIR] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from scipy.linalg import orthogonal_procrustes

from amt.config import Config, resolve_config_path
from amt.evaluate import build_model, make_dataset, resolve_root
from amt.losses import compute_losses
from amt.metrics import joint_errors, procrustes_align
from trainkit.config import load_config
from trainkit.ema import EMA
from trainkit.step import OptimizerStep


def scipy_pa_mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    errs = []
    for p, g in zip(pred, gt):
        t1, t2 = g.mean(0), p.mean(0)
        g0, p0 = g - t1, p - t2
        s1, s2 = np.linalg.norm(g0), np.linalg.norm(p0)
        R, s = orthogonal_procrustes(g0 / s1, p0 / s2)
        aligned = (p0 / s2) @ R.T * s * s1 + t1
        errs.append(np.linalg.norm(aligned - g, axis=1).mean())
    return float(np.mean(errs))


def bench_pa(n: int = 4000, repeats: int = 3) -> dict:
    """CPU time (process time, best of ``repeats``: the machine may be shared) of PA-MPJPE over ``n`` samples."""
    rng = np.random.default_rng(0)
    gt = rng.normal(0, 40, (n, 21, 3))
    pred = gt + rng.normal(0, 10, gt.shape)
    pt, gtt = torch.tensor(pred), torch.tensor(gt)
    procrustes_align(pt[:10], gtt[:10])  # warm-up

    def cpu_time(fn):
        best, out = float("inf"), None
        for _ in range(repeats):
            t0 = time.process_time()
            out = fn()
            best = min(best, time.process_time() - t0)
        return best, out

    t_scipy, ref = cpu_time(lambda: scipy_pa_mpjpe(pred, gt))
    t_torch, ours = cpu_time(lambda: float(joint_errors(procrustes_align(pt, gtt), gtt).mean()))
    return {"n": n, "scipy_s": t_scipy, "torch_s": t_torch, "speedup": t_scipy / t_torch,
            "abs_diff_mm": abs(ours - ref)}


def saved_bytes(fn) -> int:
    """Bytes of tensors autograd saves for backward during ``fn()`` (what checkpointing trades for compute)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], out


def train_steps(model, batch, cfg, steps: int, precision: str, use_trainkit: bool = True) -> float:
    """Seconds per optimizer step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    stepper = OptimizerStep(model, opt, grad_clip=1.0) if use_trainkit else None
    ema = EMA(model, decay=0.99) if use_trainkit else None
    w = dict(vars(cfg.loss_weights))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        model.train()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(batch["image"], batch["K"])
        loss, _ = compute_losses(out, batch, w, 0.5)
        if use_trainkit:
            with stepper.micro_batch():
                res = stepper.backward(loss)
            if res.stepped:
                ema.update(model)
        else:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        if i > 0:  # first step warms up allocators
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--data_root", default=None)
    ap.add_argument("--config", default="configs/cpu.yaml")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = load_config(Config, resolve_config_path(args.config), (), {"data.root": args.data_root} if args.data_root else None)
    out = {"pa_mpjpe": bench_pa()}

    root = resolve_root(cfg, log=lambda m: None)
    ds = make_dataset(cfg, root, cfg.data.train_split, augment=cfg.data.augment)
    B = cfg.training.batch_size
    loader = torch.utils.data.DataLoader(ds, batch_size=B, shuffle=True, num_workers=0)
    it = iter(loader)
    t0 = time.perf_counter()
    batches = [next(it) for _ in range(3)]
    load_s = (time.perf_counter() - t0) / 3
    batch = batches[0]

    torch.manual_seed(0)
    model = build_model(cfg)
    t_fp32 = train_steps(model, batch, cfg, args.steps, "fp32")
    t_bf16 = train_steps(model, batch, cfg, args.steps, "bf16")
    t_bare = train_steps(model, batch, cfg, args.steps, "fp32", use_trainkit=False)
    out["throughput"] = {"batch": B, "fp32_samples_s": B / t_fp32, "bf16_samples_s": B / t_bf16,
                         "bf16_over_fp32": t_fp32 / t_bf16}
    out["trainkit_overhead"] = {"trainkit_step_s": t_fp32, "bare_step_s": t_bare, "ratio": t_fp32 / t_bare}
    out["data"] = {"load_samples_s": B / load_s, "train_samples_s": B / t_fp32,
                   "loader_over_training": (B / load_s) / (B / t_fp32)}

    # gradient checkpointing on a DINOv2-architecture backbone (the tiny test config: 48-dim, 3 blocks, 98 px; CPU memory is measured as bytes saved for backward, not peak), where it applies to blocks
    ck = {}
    vit_cfg = load_config(Config, None, ["model.backbone=dinov2_tiny", "data.image_size=98", "model.hidden_dim=128",
                                         "model.num_heads=4", "model.num_decoder_layers=4", "model.freeze_layers=0"])
    img = torch.nn.functional.interpolate(batch["image"], size=98, mode="bilinear", align_corners=False)
    vb = dict(batch, image=img, K=batch["K"] * torch.tensor([[98 / 96], [98 / 96], [1.0]]))
    for on in (False, True):
        torch.manual_seed(0)
        m = build_model(vit_cfg)
        m.set_gradient_checkpointing(on, 1.0)
        m.train()
        nbytes, o = saved_bytes(lambda: m(vb["image"], vb["K"]))
        del o
        t = train_steps(m, vb, vit_cfg, max(2, args.steps // 2), "fp32")
        ck["on" if on else "off"] = {"samples_s": B / t, "saved_activation_MB": nbytes / 2**20}
    ck["memory_ratio_on_over_off"] = ck["on"]["saved_activation_MB"] / ck["off"]["saved_activation_MB"]
    ck["time_ratio_on_over_off"] = ck["off"]["samples_s"] / ck["on"]["samples_s"]
    out["gradient_checkpointing"] = ck
    if args.json:
        print(json.dumps(out, indent=2))
        return
    p = out["pa_mpjpe"]
    print(f"PA-MPJPE, {p['n']} samples: torch batched {p['torch_s'] * 1e3:.1f} ms vs SciPy loop {p['scipy_s'] * 1e3:.0f} ms "
          f"-> {p['speedup']:.0f}x (|diff| {p['abs_diff_mm']:.1e} mm)")
    t = out["throughput"]
    print(f"training (batch {t['batch']}, {cfg.data.image_size}px, {cfg.model.backbone}): fp32 {t['fp32_samples_s']:.1f} "
          f"samples/s, bf16 {t['bf16_samples_s']:.1f} samples/s -> bf16/fp32 {t['bf16_over_fp32']:.2f}x")
    d = out["data"]
    print(f"data loader {d['load_samples_s']:.1f} samples/s vs training {d['train_samples_s']:.1f} samples/s "
          f"-> loader/training {d['loader_over_training']:.2f}x")
    k = out["trainkit_overhead"]
    print(f"trainkit OptimizerStep+EMA step {k['trainkit_step_s'] * 1e3:.0f} ms vs bare {k['bare_step_s'] * 1e3:.0f} ms "
          f"-> {k['ratio']:.3f}x")
    print(f"gradient checkpointing (DINOv2-arch ViT, all blocks): saved activations {ck['off']['saved_activation_MB']:.1f} "
          f"-> {ck['on']['saved_activation_MB']:.1f} MB ({ck['memory_ratio_on_over_off']:.2f}x), step time "
          f"{ck['time_ratio_on_over_off']:.2f}x")


if __name__ == "__main__":
    main()
