"""A small but complete training loop built from trainkit helpers.

Used by the tests (resume equality, DDP, SIGTERM) and by tools/bench_trainkit.py. Run directly or under
``torchrun``; every flag is optional.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainkit as tk


def make_data(n: int = 64, dim: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = (x @ torch.randn(dim, 1, generator=g)).squeeze(-1) + 0.1 * torch.randn(n, generator=g)
    return TensorDataset(x, y)


def make_model(dim: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--run_dir", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--stop_after_epochs", type=int, default=None, help="simulate an interruption")
    p.add_argument("--resume", default=None)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds per step (SIGTERM tests)")
    p.add_argument("--log_every", type=int, default=1)
    p.add_argument("--wandb_project", default=None)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    info = tk.init_distributed("cpu")
    tk.seed_everything(1234)  # same seed on every rank: identical init (DDP broadcasts rank 0's anyway)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    dataset = make_data()
    sampler = tk.make_sampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler)
    raw_model = make_model()
    init_params = torch.cat([p.detach().reshape(-1) for p in raw_model.parameters()]).tolist()
    model = tk.wrap_ddp(raw_model, info)
    rank_seed = tk.seed_rank_streams(1234)  # per-step randomness (dropout) differs per rank from here on
    rng_before = tk.capture_rng_state()
    with torch.random.fork_rng():
        draws = torch.rand(4).tolist() + [float(__import__("numpy").random.rand()), __import__("random").random()]
    tk.restore_rng_state(rng_before)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    steps_per_epoch = math.ceil(len(loader) / args.accum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1.0 + 0.05 * s))
    stepper = tk.OptimizerStep(model, optimizer, accum_steps=args.accum, grad_clip=1.0)
    ema = tk.EMA(model, decay=0.99)
    ckpts = tk.CheckpointManager(run_dir / "checkpoints", keep_last=2, filename="ckpt_ep{epoch:04d}.pt",
                                 best_metric="loss", best_mode="min", enabled=info.is_main)

    step, start_epoch = 0, 0
    resume_path = ckpts.resolve_resume(args.resume)
    if resume_path is not None:
        state = tk.load_checkpoint(resume_path)
        meta = tk.restore_training_state(state, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema)
        stepper.load_state_dict(meta["extra"]["stepper"])
        ckpts.load_manager_state(state)
        step, start_epoch = meta["step"], meta["epoch"]
    tracker = tk.Tracker(run_dir, wandb_project=args.wandb_project, resume_step=step if resume_path else None)
    stop = tk.GracefulStop()

    def save(epoch: int, loss: float) -> None:
        payload = tk.training_state(model=model, optimizer=optimizer, scheduler=scheduler, ema=ema, step=step,
                                    epoch=epoch, config=vars(args), extra={"stepper": stepper.state_dict()})
        ckpts.save(payload, step=step, epoch=epoch, metrics={"loss": loss})

    last_epoch = args.epochs if args.stop_after_epochs is None else min(args.epochs, args.stop_after_epochs)
    stopped_by_signal = False
    for epoch in range(start_epoch, last_epoch):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        epoch_loss = 0.0
        for x, y in loader:
            with stepper.micro_batch():
                loss = nn.functional.mse_loss(model(x).squeeze(-1), y)
                out = stepper.backward(loss)
            epoch_loss += loss.item() / len(loader)
            if not out.boundary:
                continue
            if out.stepped:
                scheduler.step()
                ema.update(model)
            step += 1
            if step % args.log_every == 0:
                tracker.log_scalars(tk.all_reduce_mean({"train/loss": loss.item()}) | {"train/lr": scheduler.get_last_lr()[0]}, step)
            if args.sleep:
                time.sleep(args.sleep)
            if stop.should_stop():
                stopped_by_signal = True
                break
        if stopped_by_signal:
            save(epoch, epoch_loss)  # mid-epoch: resume repeats this epoch's remaining order from its start
            print(f"received {stop.signal_name}: saved checkpoint at step {step}, exiting", flush=True)
            break
        save(epoch + 1, epoch_loss)

    flat = torch.cat([p.detach().reshape(-1) for p in tk.unwrap_model(model).parameters()])
    result = {"rank": info.rank, "world_size": info.world_size, "step": step, "steps_per_epoch": steps_per_epoch,
              "params": flat.tolist(), "rank_mean": tk.all_reduce_mean({"r": float(info.rank)})["r"],
              "stopped": stopped_by_signal, "init_params": init_params, "rank_seed": rank_seed, "draws": draws}
    (run_dir / f"result_rank{info.rank}.json").write_text(json.dumps(result))
    tracker.close()
    tk.cleanup()
    return result


if __name__ == "__main__":
    main()
