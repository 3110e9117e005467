"""Benchmark the worldmodel training step, in one run with same-run baselines and ratios.

- training throughput (frames/s) with AMP off vs on (bf16 autocast on CPU, fp16 on CUDA), and with gradient
  checkpointing off vs on, plus memory: activation bytes saved for backward (measured with autograd's
  saved-tensor hooks, CPU and CUDA) and, on CUDA, peak allocated memory;
- the processed loader's frames/s (memory-mapped uint8 -> float windows) vs what a training step consumes
  (goal: loader >= 5x);
- trainkit overhead: a step through trainkit's OptimizerStep (accumulation bookkeeping, clipping, non-finite
  guard) vs a bare backward/clip/step/zero_grad loop.

    uv run python tools/bench_worldmodel.py [--config synthetic_cpu] [--steps 3] [--repeats 3] [--device cpu] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from trainkit.config import load_config
from trainkit.device import autocast, make_grad_scaler, resolve_device
from trainkit.step import OptimizerStep

from worldmodel.config import Config, resolve_config_path
from worldmodel.data import ProcessedDataset, WindowDataset, collate
from worldmodel.evaluate import build_model
from worldmodel.losses import SsimGradLoss, compute_losses
from worldmodel.synthetic import ensure_synthetic
from worldmodel.train import build_optimizer


def saved_activation_bytes(fn) -> int:
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainBench:
    """One training configuration, built once; ``time(steps)`` times ``steps`` more optimizer steps.

    Configurations are timed interleaved (A B C D, then B C D A, ...) over several rounds, so a cold first
    run or a neighbour's burst on a shared machine does not bias one configuration; the report gives the
    median and the spread over rounds.
    """

    def __init__(self, cfg, data, device, precision, checkpointing, use_trainkit=True):
        torch.manual_seed(0)
        self.device, self.use_trainkit = device, use_trainkit
        self.model = model = build_model(cfg, data.image_size, cfg.data.sequence_length).to(device)
        if checkpointing:
            model.enable_gradient_checkpointing()
        self.opt = build_optimizer(model, cfg)
        # fp16 on CUDA steps through a real GradScaler, as training does (an unscaled fp16 step can underflow,
        # be skipped by the non-finite guard and time faster than a real one)
        self.scaler = make_grad_scaler(device, precision)
        self.stepper = OptimizerStep(model, self.opt, scaler=self.scaler, grad_clip=cfg.training.max_grad_norm or None)
        self.max_grad_norm = cfg.training.max_grad_norm
        windows = WindowDataset(data, "train", cfg.data.sequence_length, cfg.data.frame_skip, 1)
        bs = cfg.training.batch_size
        batch = collate([windows[i] for i in range(bs)])
        self.frames, self.actions = batch["frames"].to(device), batch["actions"].to(device)
        self.frames_per_step = bs * cfg.data.sequence_length
        self.cfg, self.precision, self.perceptual = cfg, precision, SsimGradLoss()
        self.step()  # warm-up
        self.saved_activation_MB = saved_activation_bytes(self.loss) / 2**20
        self.rounds: list[tuple[float, float]] = []  # (wall s/step, CPU s/step)
        self.peak_MB = None

    def loss(self):
        with autocast(self.device, self.precision):
            return compute_losses(self.model(self.frames, self.actions), self.frames, self.cfg.loss,
                                  self.perceptual)["loss"]

    def step(self):
        if self.use_trainkit:
            with self.stepper.micro_batch():
                self.stepper.backward(self.loss())
        else:
            self.scaler.scale(self.loss()).backward()
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.opt.zero_grad(set_to_none=True)

    def time(self, steps: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        sync(self.device)
        self.rounds.append(((time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps))
        if self.device.type == "cuda":
            self.peak_MB = max(self.peak_MB or 0.0, torch.cuda.max_memory_allocated(self.device) / 2**20)

    def summary(self) -> dict:
        wall = statistics.median(r[0] for r in self.rounds)
        cpu = [r[1] for r in self.rounds]
        out = {"frames_per_s": self.frames_per_step / wall, "s_per_step": wall,
               "cpu_s_per_step": statistics.median(cpu), "cpu_s_per_step_min": min(cpu),
               "cpu_s_per_step_max": max(cpu), "rounds": len(self.rounds),
               "saved_activation_MB": self.saved_activation_MB}
        if self.peak_MB is not None:
            out["peak_MB"] = self.peak_MB
        return out


def bench_loader(cfg, data, batches):
    windows = WindowDataset(data, "train", cfg.data.sequence_length, cfg.data.frame_skip, 1)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(windows), generator=g).tolist()
    bs = cfg.training.batch_size
    t0 = time.perf_counter()
    c0 = time.process_time()
    n = 0
    for b in range(batches):
        idx = [order[(b * bs + k) % len(order)] for k in range(bs)]
        batch = collate([windows[i] for i in idx])
        n += batch["frames"].shape[0] * batch["frames"].shape[1]
    return {"frames_per_s": n / (time.perf_counter() - t0), "frames_per_cpu_s": n / (time.process_time() - c0)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="synthetic_cpu")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per configuration per round")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; configurations are interleaved, order rotated")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(Config, resolve_config_path(args.config), args.overrides)
    device = resolve_device(args.device)
    d = cfg.data
    root = d.data_root or ensure_synthetic(d.synthetic_scenes, d.synthetic_frames, d.image_size, d.synthetic_seed,
                                          d.val_fraction, log=lambda *a: None, version=d.synthetic_version)
    data = ProcessedDataset(root)
    half = "fp16" if device.type == "cuda" else "bf16"
    res = {"config": args.config, "device": str(device), "threads": args.threads,
           "batch": f"{cfg.training.batch_size} x {d.sequence_length} frames at {data.image_size[0]}x{data.image_size[1]}"}
    benches = {"fp32": TrainBench(cfg, data, device, "fp32", False),
               f"amp_{half}": TrainBench(cfg, data, device, half, False),
               "fp32_checkpointing": TrainBench(cfg, data, device, "fp32", True),
               "fp32_bare_loop": TrainBench(cfg, data, device, "fp32", False, use_trainkit=False)}
    names = list(benches)
    for r in range(args.repeats):  # rotated order each round: no configuration is always first
        for name in names[r % len(names):] + names[:r % len(names)]:
            benches[name].time(args.steps)
    for name, b in benches.items():
        res[name] = b.summary()
    res["loader"] = bench_loader(cfg, data, 20)
    base = res["fp32"]
    # Ratios from CPU time per step (process_time): on a shared machine wall time mostly measures the
    # neighbours; on an idle machine or a GPU use the wall-clock ratios (printed too).
    cpu = {k: res[k]["cpu_s_per_step"] for k in ("fp32", f"amp_{half}", "fp32_checkpointing", "fp32_bare_loop")}
    wall = {k: res[k]["s_per_step"] for k in cpu}
    frames_per_step = cfg.training.batch_size * d.sequence_length
    def spread(num: str, den: str) -> list[float]:
        """min and max over rounds of the per-round CPU-time ratio num/den."""
        per_round = [benches[num].rounds[i][1] / benches[den].rounds[i][1] for i in range(args.repeats)]
        return [min(per_round), max(per_round)]

    res["ratio_spread_cpu_time"] = {"amp_speedup": spread("fp32", f"amp_{half}"),
                                    "checkpointing_speed": spread("fp32", "fp32_checkpointing"),
                                    "trainkit_overhead": spread("fp32", "fp32_bare_loop")}
    res["ratios"] = {
        "amp_speedup_cpu_time": cpu["fp32"] / cpu[f"amp_{half}"],
        "amp_speedup_wall": wall["fp32"] / wall[f"amp_{half}"],
        "checkpointing_speed_cpu_time": cpu["fp32"] / cpu["fp32_checkpointing"],
        "checkpointing_speed_wall": wall["fp32"] / wall["fp32_checkpointing"],
        "checkpointing_saved_activation_memory": res["fp32_checkpointing"]["saved_activation_MB"]
        / base["saved_activation_MB"],
        "amp_saved_activation_memory": res[f"amp_{half}"]["saved_activation_MB"] / base["saved_activation_MB"],
        "loader_vs_training_consumption_cpu_time": res["loader"]["frames_per_cpu_s"] / (frames_per_step / cpu["fp32"]),
        "loader_vs_training_consumption_wall": res["loader"]["frames_per_s"] / base["frames_per_s"],
        "trainkit_overhead_cpu_time": cpu["fp32"] / cpu["fp32_bare_loop"],
        "trainkit_overhead_wall": wall["fp32"] / wall["fp32_bare_loop"],
    }
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print(f"worldmodel bench: {res['config']} on {res['device']} ({args.threads} thread(s)), batch {res['batch']}, "
          f"{args.repeats} interleaved rounds of {args.steps} steps (medians)")
    for k in ("fp32", f"amp_{half}", "fp32_checkpointing", "fp32_bare_loop"):
        r = res[k]
        print(f"  {k:<20} {r['frames_per_s']:>8.1f} frames/s  {r['s_per_step']:.3f} s/step "
              f"(cpu {r['cpu_s_per_step']:.3f})  saved activations {r['saved_activation_MB']:.1f} MB"
              + (f"  peak {r['peak_MB']:.0f} MB" if "peak_MB" in r else ""))
    print(f"  loader               {res['loader']['frames_per_s']:>8.1f} frames/s")
    for k, v in res["ratios"].items():
        print(f"  ratio {k:<38} {v:.2f}x")
    for k, (lo, hi) in res["ratio_spread_cpu_time"].items():
        print(f"  spread over {args.repeats} rounds, {k:<22} {lo:.2f}x .. {hi:.2f}x (CPU time)")


if __name__ == "__main__":
    main()
