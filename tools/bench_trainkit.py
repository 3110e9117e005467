"""Benchmark: a bare PyTorch loop vs the same loop built from trainkit helpers.

Same model, data, accumulation (2), clipping (1.0) and logging interval (every 10 steps); the two loops
run alternately in one process, several rounds, and the median steps/s of each is compared.

    uv run python tools/bench_trainkit.py [--steps 150] [--rounds 10] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import trainkit as tk


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 1))


def batches(n: int, accum: int):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(32, 64, generator=g), torch.randn(32, 1, generator=g)) for _ in range(n * accum)]


def bare_loop(data, steps: int, accum: int, log_dir: Path) -> float:
    from torch.utils.tensorboard import SummaryWriter

    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    writer = SummaryWriter(str(log_dir))
    start = time.perf_counter()
    for step in range(steps):
        for micro in range(accum):
            x, y = data[step * accum + micro]
            loss = nn.functional.mse_loss(model(x), y)
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0:
            writer.add_scalar("train/loss", loss.item(), step)
    elapsed = time.perf_counter() - start
    writer.close()
    return steps / elapsed


def trainkit_loop(data, steps: int, accum: int, log_dir: Path) -> float:
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stepper = tk.OptimizerStep(model, opt, scaler=tk.make_grad_scaler("cpu", "fp32"), accum_steps=accum, grad_clip=1.0)
    tracker = tk.Tracker(log_dir, enabled=True)
    start = time.perf_counter()
    step = 0
    for i, (x, y) in enumerate(data[: steps * accum]):
        with stepper.micro_batch(), tk.autocast("cpu", "fp32"):
            loss = nn.functional.mse_loss(model(x), y)
            out = stepper.backward(loss)
        if out.boundary:
            if step % 10 == 0:
                tracker.log_scalars({"train/loss": loss.item(), "train/grad_norm": out.grad_norm}, step)
            step += 1
    elapsed = time.perf_counter() - start
    tracker.close()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = batches(args.steps, args.accum)
    bare, kit = [], []
    with tempfile.TemporaryDirectory() as tmp:
        bare_loop(data, 20, args.accum, Path(tmp) / "warm_bare")  # warm-up (allocator, TB import)
        trainkit_loop(data, 20, args.accum, Path(tmp) / "warm_kit")
        for r in range(args.rounds):  # alternate (ABBA) so drift in machine load and order effects hit both equally
            first, second = (bare_loop, trainkit_loop) if r % 2 == 0 else (trainkit_loop, bare_loop)
            for loop in (first, second):
                rate = loop(data, args.steps, args.accum, Path(tmp) / f"{loop.__name__}{r}")
                (bare if loop is bare_loop else kit).append(rate)
    result = {
        "steps_per_round": args.steps, "rounds": args.rounds, "accum": args.accum, "threads": args.threads,
        "bare_steps_per_s": round(statistics.median(bare), 2),
        "trainkit_steps_per_s": round(statistics.median(kit), 2),
        "ratio_trainkit_over_bare": round(statistics.median(kit) / statistics.median(bare), 4),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
