"""Benchmark action_ddim on this machine: training and 50-step DDIM sampling throughput for the guide's
three model sizes, and the overhead of trainkit's loop pieces against a bare PyTorch loop (same run).

    uv run python tools/bench_action_ddim.py [--threads 1] [--repeats 5] [--json]

Prints a table (or one JSON object with --json). Sequences are 64 steps of [x, y, press].
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from action_ddim.augmentation import generate_sequences
from action_ddim.data import Normalizer
from action_ddim.diffusion import Diffusion
from action_ddim.model import ActionDenoiser, count_parameters
from action_ddim.train import lr_lambda
from trainkit.device import autocast
from trainkit.ema import EMA
from trainkit.step import OptimizerStep

# The guide's three command lines: (name, d_model, num_layers, nhead, batch_size).
SIZES = [("quick-cpu", 32, 2, 2, 2), ("gpu-test", 128, 4, 4, 16), ("full", 64, 3, 4, 64)]
SEQ_LEN = 64


def _data(n: int) -> torch.Tensor:
    return Normalizer().encode(torch.from_numpy(generate_sequences(n, seed=0)))


def _timed(fn, reps: int) -> float:
    """Median seconds of ``fn`` over ``reps`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_size(name, d_model, layers, heads, batch, repeats, train_steps):
    torch.manual_seed(0)
    model = ActionDenoiser(SEQ_LEN, 3, d_model, layers, heads)
    diffusion = Diffusion("cosine", 1000, "v")
    x = _data(max(batch, 64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_block():
        for i in range(train_steps):
            xb = x[(i * batch) % len(x):][:batch]
            loss = diffusion.loss(model, xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

    t_train = _timed(train_block, repeats) / train_steps
    model.eval()
    xs = x[:64]

    def sample():
        diffusion.sample(model, xs.shape, 50, x_T=torch.randn(xs.shape))

    t_sample = _timed(sample, max(1, repeats // 2))
    return {"size": name, "d_model": d_model, "num_layers": layers, "nhead": heads, "batch_size": batch,
            "params": count_parameters(model), "train_step_ms": 1000 * t_train,
            "train_seq_per_s": batch / t_train, "ddim50_batch": 64, "ddim50_s": t_sample,
            "ddim50_seq_per_s": 64 / t_sample}


def bench_loop_overhead(repeats: int, steps: int):
    """Same model/data/steps: bare PyTorch loop vs the trainkit pieces train.py uses (interleaved A/B)."""
    x = _data(64 * 8)
    diffusion = Diffusion("cosine", 1000, "v")

    def make():
        torch.manual_seed(0)
        model = ActionDenoiser(SEQ_LEN, 3, 64, 3, 4)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(100, 10_000, 0.0))
        return model, opt, sched

    def bare():
        model, opt, sched = make()
        ema = [p.detach().clone() for p in model.parameters()]
        for i in range(steps):
            xb = x[(i * 64) % len(x):][:64]
            loss = diffusion.loss(model, xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                d = min(0.9995, 1 - (1 + i + 1) ** -0.75)
                for e, p in zip(ema, model.parameters()):
                    e.lerp_(p, 1 - d)

    def trainkit_loop():
        model, opt, sched = make()
        ema = EMA(model, decay=0.9995)
        stepper = OptimizerStep(model, opt, grad_clip=1.0)
        device = torch.device("cpu")
        for i in range(steps):
            xb = x[(i * 64) % len(x):][:64]
            with stepper.micro_batch():
                with autocast(device, "fp32"):
                    loss = diffusion.loss(model, xb)
                out = stepper.backward(loss)
            if out.stepped:
                sched.step()
                ema.update(model)

    bare(), trainkit_loop()  # warm-up
    a, b = [], []
    for _ in range(repeats):
        for fn, acc in ((bare, a), (trainkit_loop, b)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return {"steps": steps, "bare_s": statistics.median(a), "trainkit_s": statistics.median(b),
            "ratio_trainkit_over_bare": statistics.median(b) / statistics.median(a)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadier on a shared box)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train_steps", type=int, default=10, help="steps per timed training block")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "machine": {"cpu_count": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                    "python": platform.python_version(), "loadavg_start": os.getloadavg()[0]},
        "sizes": [bench_size(*s, args.repeats, args.train_steps) for s in SIZES],
        "loop_overhead": bench_loop_overhead(args.repeats, 30),
    }
    result["machine"]["loadavg_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {result['machine']['loadavg_start']:.2f}"
          f" -> {result['machine']['loadavg_end']:.2f}")
    print(f"{'size':<10} {'d/L/h':<9} {'batch':>5} {'params':>9} {'train ms/step':>14} {'train seq/s':>12} "
          f"{'DDIM-50 seq/s':>14}")
    for r in result["sizes"]:
        print(f"{r['size']:<10} {r['d_model']}/{r['num_layers']}/{r['nhead']:<5} {r['batch_size']:>5} "
              f"{r['params']:>9,} {r['train_step_ms']:>14.1f} {r['train_seq_per_s']:>12.0f} "
              f"{r['ddim50_seq_per_s']:>14.1f}")
    lo = result["loop_overhead"]
    print(f"loop overhead (d64/L3/h4, batch 64, {lo['steps']} steps): bare {lo['bare_s']:.2f}s, "
          f"trainkit {lo['trainkit_s']:.2f}s, ratio {lo['ratio_trainkit_over_bare']:.3f}")


if __name__ == "__main__":
    main()
