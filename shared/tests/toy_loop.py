"""A small but complete training loop built from trainkit helpers: the reference for the packages' loops.

Shuffled DataLoader over a ResumableSampler, dropout, AdamW, LR schedule, gradient accumulation, clipping,
EMA, per-rank random streams, TensorBoard + metrics.jsonl, checkpoints, SIGTERM -> save mid-epoch ->
``--resume auto`` continues at the next micro-batch. Used by the tests (resume equality single-process and
under ``torchrun``, DDP agreement). Run directly or under ``torchrun``; every flag but ``--run_dir`` is optional.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainkit as tk

SEED = 1234


def make_data(n: int = 64, dim: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = (x @ torch.randn(dim, 1, generator=g)).squeeze(-1) + 0.1 * torch.randn(n, generator=g)
    return TensorDataset(x, y)


def make_model(dim: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))


def flat(model: nn.Module) -> list[float]:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).tolist()


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--run_dir", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--resume", default=None)
    p.add_argument("--accum", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--log_every", type=int, default=1)
    p.add_argument("--sigterm_at_step", type=int, default=None,
                   help="send SIGTERM after this optimizer step (to this process, or to torchrun under torchrun)")
    p.add_argument("--nan_loss_at_step", type=int, default=None,
                   help="add a NaN constant to the loss of rank --nan_rank at this step (finite gradients: the "
                        "other ranks only skip because the guard's flag is agreed across ranks)")
    p.add_argument("--nan_rank", type=int, default=0)
    p.add_argument("--wandb_project", default=None)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    info = tk.init_distributed("cpu")
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    # Same seed on every rank -> identical init; then per-rank streams for dropout (seed_rank_streams).
    tk.seed_everything(SEED)
    raw_model = make_model()
    init_params = flat(raw_model)
    model = tk.wrap_ddp(raw_model, info)
    rank_seed = tk.seed_rank_streams(SEED)
    with torch.random.fork_rng():  # record a few draws without consuming the training streams
        rng = tk.capture_rng_state()
        draws = torch.rand(4).tolist() + [float(__import__("numpy").random.rand()), __import__("random").random()]
        tk.restore_rng_state(rng)

    dataset = make_data()
    sampler = tk.ResumableSampler(dataset, shuffle=True, seed=SEED)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, generator=sampler.generator,
                        num_workers=args.num_workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1.0 + 0.05 * s))
    stepper = tk.OptimizerStep(model, optimizer, accum_steps=args.accum, grad_clip=1.0)
    ema = tk.EMA(model, decay=0.99)
    ckpts = tk.CheckpointManager(run_dir / "checkpoints", keep_last=2, filename="ckpt_step{step:06d}.pt",
                                 enabled=info.is_main)

    step, start_epoch = 0, 0
    epoch_loss_sum = torch.zeros(())  # stays a tensor: no host read per micro-batch
    resume_path = ckpts.resolve_resume(args.resume)
    if resume_path is not None:
        state = tk.load_checkpoint(resume_path)
        meta = tk.restore_training_state(state, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema,
                                         sampler=sampler, stepper=stepper, where=str(resume_path))
        step, start_epoch = meta["step"], meta["epoch"]
        epoch_loss_sum = meta["rank_extra"]["epoch_loss_sum"]  # this rank's own running sum
    tracker = tk.Tracker(run_dir, wandb_project=args.wandb_project, resume_step=step if resume_path else None)
    stop = tk.GracefulStop()

    def save(epoch: int) -> None:  # every rank calls it (RNG states are gathered); rank 0 writes
        payload = tk.training_state(model=model, optimizer=optimizer, scheduler=scheduler, ema=ema, step=step,
                                    epoch=epoch, config=vars(args), sampler=sampler, stepper=stepper,
                                    rank_extra={"epoch_loss_sum": epoch_loss_sum})
        ckpts.save(payload, step=step, epoch=epoch)

    stopped_by_signal = False
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)  # a resumed epoch keeps its restored position
        model.train()
        for x, y in sampler.track(loader):
            with stepper.micro_batch():
                loss = nn.functional.mse_loss(model(x).squeeze(-1), y)
                bad = args.nan_loss_at_step == step + 1 and info.rank == args.nan_rank
                out = stepper.backward(loss + float("nan") if bad else loss)
            epoch_loss_sum += loss.detach()
            if not out.boundary:
                continue
            if out.stepped:
                scheduler.step()
                ema.update(model)
            step += 1
            if step % args.log_every == 0:
                tracker.log_scalars(tk.all_reduce_mean({"train/loss": loss.item()})
                                    | {"train/lr": scheduler.get_last_lr()[0], "train/grad_norm": out.grad_norm}, step)
            if args.sigterm_at_step == step:
                if info.is_distributed:
                    if info.is_main:  # like a cluster scheduler: SIGTERM to torchrun, which forwards it
                        os.kill(os.getppid(), signal.SIGTERM)
                        deadline = time.time() + 20
                        while not stop.requested and time.time() < deadline:
                            time.sleep(0.05)
                else:
                    os.kill(os.getpid(), signal.SIGTERM)
            if stop.should_stop():  # only on a boundary: the resume rule for gradient accumulation
                stopped_by_signal = True
                break
        if stopped_by_signal:
            save(epoch)  # mid-epoch: the sampler's position says where to continue
            print(f"received {stop.signal_name}: saved checkpoint at step {step} "
                  f"(epoch {epoch}, {sampler.consumed}/{len(sampler)} samples), exiting", flush=True)
            break
        epoch_mean = tk.all_reduce_mean({"e": (epoch_loss_sum / len(loader)).item()})["e"]
        tracker.log_scalars({"train/epoch_loss": epoch_mean, "train/epoch": epoch + 1}, step)
        epoch_loss_sum = torch.zeros(())
        save(epoch + 1)

    result = {"rank": info.rank, "world_size": info.world_size, "step": step, "params": flat(model),
              "ema_params": flat(ema.module), "rank_mean": tk.all_reduce_mean({"r": float(info.rank)})["r"],
              "stopped": stopped_by_signal, "init_params": init_params, "rank_seed": rank_seed, "draws": draws,
              "num_skipped": stepper.num_skipped, "steps_per_epoch": len(loader) // args.accum}
    (run_dir / f"result_rank{info.rank}.json").write_text(json.dumps(result))
    tracker.close()
    stop.restore()
    tk.cleanup()
    return result


if __name__ == "__main__":
    main()
