"""Benchmark: a bare PyTorch loop vs the same loop built from trainkit helpers (and optionally an older trainkit).

Same model, data, accumulation (2), clipping (1.0) and logging interval (every 10 steps). The loops run
interleaved in one process (rotating order each round, so drifting machine load hits all of them alike),
several rounds; the medians are compared. Prints, per trainkit version and per clock (process CPU time,
which a machine shared with other jobs inflates far less than wall time, and wall time): steps/s, the
ratio trainkit/bare, the fixed overhead in µs per optimizer step (1/rate - 1/bare_rate), and the host reads (``.item()``,
``bool()``, ``float()``, ``.tolist()``, ``.cpu()``...) per optimizer step and per non-boundary micro-batch
made outside torch.optim (counted on a separate, untimed run).

    uv run python tools/bench_trainkit.py [--steps 150] [--rounds 10] [--threads 1] [--before 060687f] [--model tiny]

``--before REF`` also benchmarks trainkit as it was at git commit REF (extracted with ``git archive``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import trainkit

ROOT = Path(__file__).resolve().parents[1]


WIDTH = {"mlp": 256, "tiny": 8}  # "tiny": the step is mostly fixed cost, so the overhead in µs stands out
MODEL = ["mlp"]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    w = WIDTH[MODEL[0]]
    return nn.Sequential(nn.Linear(64, w), nn.GELU(), nn.Linear(w, w), nn.GELU(), nn.Linear(w, 1))


def batches(n: int, accum: int):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(32, 64, generator=g), torch.randn(32, 1, generator=g)) for _ in range(n * accum)]


def bare_loop(data, steps: int, accum: int, log_dir: Path, tk=None) -> float:
    from torch.utils.tensorboard import SummaryWriter

    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    writer = SummaryWriter(str(log_dir))
    start, cpu_start = time.perf_counter(), time.process_time()
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
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    writer.close()
    return steps / elapsed, steps / cpu


def trainkit_loop(data, steps: int, accum: int, log_dir: Path, tk=trainkit, on_micro=None) -> float:
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stepper = tk.OptimizerStep(model, opt, scaler=tk.make_grad_scaler("cpu", "fp32"), accum_steps=accum, grad_clip=1.0)
    tracker = tk.Tracker(log_dir, enabled=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    step = 0
    for x, y in data[: steps * accum]:
        with stepper.micro_batch(), tk.autocast("cpu", "fp32"):
            loss = nn.functional.mse_loss(model(x), y)
            out = stepper.backward(loss)
        logged = out.boundary and step % 10 == 0
        if out.boundary:
            if logged:  # the tensors are read here only (the older trainkit returned a float norm)
                tracker.log_scalars({"train/loss": loss.detach(), "train/grad_norm": out.grad_norm}, step)
            step += 1
        if on_micro is not None:
            on_micro(out.boundary, logged)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    tracker.close()
    return steps / elapsed, steps / cpu


def count_host_reads(tk, data, accum: int, log_dir: Path) -> dict:
    """Host reads per optimizer step (non-logging steps) and per non-boundary micro-batch, outside torch.optim."""
    names = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")
    originals = {n: getattr(torch.Tensor, n) for n in names}
    counter = [0]

    def wrap(fn):
        def counted(self, *a, **k):
            caller = sys._getframe(1).f_code.co_filename
            if "torch/optim" not in caller:  # AdamW reads its CPU step counter; that is not a device sync
                counter[0] += 1
            return fn(self, *a, **k)

        return counted

    per_step, per_micro = [], []

    def on_micro(boundary: bool, logging: bool):
        if boundary and not logging:
            per_step.append(counter[0])
        elif not boundary:
            per_micro.append(counter[0])
        counter[0] = 0

    for n, fn in originals.items():
        setattr(torch.Tensor, n, wrap(fn))
    try:
        trainkit_loop(data, min(30, len(data) // accum), accum, log_dir, tk=tk, on_micro=on_micro)
    finally:
        for n, fn in originals.items():
            setattr(torch.Tensor, n, fn)
    return {"host_reads_per_optimizer_step": statistics.mean(per_step),
            "host_reads_per_micro_batch": statistics.mean(per_micro)}


def load_trainkit_at(ref: str, into: Path):
    """Import trainkit as it was at git ``ref`` under the name ``trainkit_<ref>``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = into / "src.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), ref, "shared/src/trainkit"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    name = f"trainkit_{ref}"
    spec = importlib.util.spec_from_file_location(name, into / "shared/src/trainkit/__init__.py",
                                                  submodule_search_locations=[str(into / "shared/src/trainkit")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--before", default=None, help="also time trainkit at this git commit")
    parser.add_argument("--model", choices=sorted(WIDTH), default="mlp",
                        help="mlp: the issue's benchmark (~1.1 ms/step idle); tiny: resolves the fixed overhead")
    args = parser.parse_args()
    MODEL[0] = args.model
    torch.set_num_threads(args.threads)
    data = batches(args.steps, args.accum)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        variants = {"bare": (bare_loop, None), "trainkit": (trainkit_loop, trainkit)}
        if args.before:
            variants[f"trainkit@{args.before}"] = (trainkit_loop, load_trainkit_at(args.before, tmp / "before"))
        rates = {name: [] for name in variants}
        for name, (loop, tk) in variants.items():  # warm-up (allocator, TensorBoard import)
            loop(data, min(20, args.steps), args.accum, tmp / f"warm_{name}", tk=tk)
        order = list(variants)
        for r in range(args.rounds):  # rotate the order every round (ABBA-like for two variants)
            shift = r % len(order)
            round_order = order[shift:] + order[:shift]
            if (r // len(order)) % 2:
                round_order.reverse()
            for name in round_order:
                loop, tk = variants[name]
                rates[name].append(loop(data, args.steps, args.accum, tmp / f"{name}{r}", tk=tk))
        result = {"model": args.model, "steps_per_round": args.steps, "rounds": args.rounds, "accum": args.accum, "threads": args.threads}
        for clock, i in (("cpu", 1), ("wall", 0)):
            bare = statistics.median(r[i] for r in rates["bare"])
            block = {"bare_steps_per_s": round(bare, 2), "bare_us_per_step": round(1e6 / bare, 1)}
            for name in variants:
                if name == "bare":
                    continue
                kit = statistics.median(r[i] for r in rates[name])
                # Per-round ratios show the spread that the machine's load put on the medians.
                pairs = sorted(k[i] / b[i] for k, b in zip(rates[name], rates["bare"]))
                block[name] = {
                    "steps_per_s": round(kit, 2),
                    "ratio_over_bare": round(kit / bare, 4),
                    "overhead_us_per_step": round(1e6 / kit - 1e6 / bare, 1),
                    "per_round_ratio_min_median_max": [round(pairs[0], 3), round(statistics.median(pairs), 3),
                                                       round(pairs[-1], 3)],
                }
            result[f"{clock}_clock"] = block
        for name, (loop, tk) in variants.items():
            if name != "bare":
                result[f"{name}_host_reads"] = count_host_reads(tk, data, args.accum, tmp / f"count_{name}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
