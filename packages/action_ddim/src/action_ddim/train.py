"""`action-ddim train`: the training loop, top to bottom."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from trainkit.checkpoint import (CheckpointManager, load_checkpoint, restore_training_state, save_checkpoint,
                                 training_state)
from trainkit.cli import prepare_run_dir, run_dir_has_run
from trainkit.runsafety import EvalStopped, check_run_target, worker_init
from trainkit.config import (config_changes, config_to_dict, flatten_config, load_config, resolve_resume_config,
                             save_config)
from trainkit.data import ResumableSampler
from trainkit.device import autocast, make_generator, make_grad_scaler, seed_everything
from trainkit.distributed import (GracefulStop, all_reduce_sum, barrier, cleanup, init_distributed, rank_seed,
                                  seed_rank_streams, wrap_ddp)
from trainkit.ema import EMA
from trainkit.errors import UserError
from trainkit.progress import progress
from trainkit.step import OptimizerStep
from trainkit.tracking import Tracker

from .config import Config
from .data import ActionDataset, Normalizer, ensure_default_dataset
from .diffusion import Diffusion
from .evaluate import (FLOOR_DRAWS, floor_split, format_progress, progress_fidelity, quick_fidelity, read_rate_hz,
                       validate, validation_loss)
from .model import ActionDenoiser, count_parameters
from .plots import plot_reconstructions, plot_samples, plot_samples_vs_real


def build_model(cfg: Config, seq_len: int) -> ActionDenoiser:
    m = cfg.model
    # Checked here, not in config.validate: each --set is validated on its own, so a cross-key rule
    # there would depend on the order of the flags.
    if m.position_features and not cfg.data.increment_scale:
        raise UserError("model.position_features=true with data.increment_scale=0", "model.position_features",
                        "velocity data (data.increment_scale > 0, e.g. 20); positions are the input already")
    return ActionDenoiser(seq_len=seq_len, d_model=m.d_model, num_layers=m.num_layers, nhead=m.nhead, dropout=m.dropout,
                         increment_features=m.increment_features, conv_kernel=m.conv_kernel,
                         position_features_scale=cfg.data.increment_scale if m.position_features else 0.0)


def build_diffusion(cfg: Config) -> Diffusion:
    d = cfg.diffusion
    return Diffusion(d.schedule, d.num_train_timesteps, d.prediction_type, force_schedule=d.force_schedule,
                     timestep_power=d.timestep_power, cosine_offset=d.cosine_offset, min_snr_gamma=d.min_snr_gamma)


# A warmup longer than the run would keep the LR rising for the whole run and never reach --lr (the
# guide's quick and GPU tests are 15 and 5 steps against 500 warmup steps), so short runs warm up for
# at most this fraction of their steps. Runs of 2500+ steps keep the default 500 unchanged.
WARMUP_MAX_FRACTION = 0.2


def effective_warmup(warmup_steps: int, total_steps: int) -> int:
    """``warmup_steps``, capped at ``WARMUP_MAX_FRACTION`` of the run (at least 1 step when warming up)."""
    if warmup_steps <= 0:
        return 0
    return min(warmup_steps, max(1, int(WARMUP_MAX_FRACTION * total_steps)))


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float):
    """Linear warmup to the peak, then cosine annealing to ``min_ratio`` of it at ``total_steps``."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress_ = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress_))
    return f


def resolve_data(cfg: Config, log) -> tuple[Path, Path]:
    d = cfg.data
    if d.data_dir is None and d.val_data_dir is None:
        return ensure_default_dataset(d.num_train, d.num_val, d.seq_len, d.data_seed, log=log)
    if d.data_dir is None or d.val_data_dir is None:
        missing = "--data_dir" if d.data_dir is None else "--val_data_dir"
        raise UserError(f"{missing} is missing", missing,
                        "give both --data_dir and --val_data_dir, or neither (to use the generated default dataset)")
    if Path(d.data_dir).resolve() == Path(d.val_data_dir).resolve():
        split = Path(d.data_dir)
        if (split / "train").is_dir() and (split / "val").is_dir():
            # one folder from `import-log --val_users/--val_sessions` (the issue's `--data_dir D --val_data_dir D`)
            log(f"data: {split} holds a split import: training on {split / 'train'}, validating on {split / 'val'}")
            return split / "train", split / "val"
        # Validating on the training sequences would score memorisation as fidelity (audit LOW).
        raise UserError("--val_data_dir is the training directory", f"--val_data_dir {d.val_data_dir}",
                        "held-out sequences in another directory (import-log --val_users/--val_sessions writes "
                        "D/train and D/val)")
    return Path(d.data_dir), Path(d.val_data_dir)


# Keys that define what a run is. On --resume the checkpoint's config is the run's config: flags not
# given come from it, and a flag changing one of these keys is refused unless --allow_config_change.
RUN_DEFINING = ("data", "model", "diffusion.schedule", "diffusion.num_train_timesteps", "diffusion.prediction_type",
                "diffusion.force_schedule", "diffusion.timestep_power", "diffusion.cosine_offset",
                "diffusion.min_snr_gamma",
                "train.batch_size", "train.num_epochs", "train.lr", "train.weight_decay",
                "train.betas", "train.warmup_steps", "train.min_lr_ratio", "train.grad_clip", "train.ema_decay",
                "train.ema_warmup", "train.seed")
MAY_CHANGE = ("data.num_workers",)
# Settings of one invocation, not of the run: a resume starts them afresh instead of inheriting them
# (an inherited stop_after_epoch would stop every later resume after one epoch).
PER_INVOCATION = {"train.resume": None, "train.stop_after_epoch": 0}
CHECKPOINT_NAME = "epoch{epoch:04d}.pt"
# The fidelity reference during training: at most this many validation sequences outside the floor's.
GEN_REFERENCE_MAX = 2048
# What ranks checkpoints for best.pt: val/loss on the fixed per-epoch validation subset, at every validated epoch.
SELECTION_METRIC = "val/selection_loss"


def find_resume(save_dir: str | Path, resume: str) -> tuple[dict, Path]:
    """The checkpoint ``--resume`` names (a path, or ``auto``: the newest usable one in ``save_dir``), loaded."""
    ckpts = CheckpointManager(Path(save_dir) / "checkpoints", filename=CHECKPOINT_NAME, enabled=False)
    path = ckpts.resolve_resume(resume)
    if path is None:
        raise UserError("no checkpoint to resume from", f"--resume {resume}",
                        f"a checkpoint file, or 'auto' with checkpoints in {ckpts.directory}")
    state = load_checkpoint(path, map_location="cpu")
    if not isinstance(state.get("config"), dict) or "extra" not in state:
        raise UserError("not an action-ddim training checkpoint", str(path), "a file written by `action-ddim train`")
    return state, path


def resumed_config(state: dict, path: Path, *, config_path=None, overrides=(), cli_values=None,
                   allow_config_change: bool = False, log=print) -> Config:
    """The checkpoint's config with what this invocation gave on top (run-defining changes refused)."""
    saved = copy.deepcopy(state["config"])
    for dotted, fresh in PER_INVOCATION.items():
        section, key = dotted.split(".")
        saved.setdefault(section, {})[key] = fresh
    cfg = resolve_resume_config(Config, saved, path=config_path, overrides=overrides, cli_values=cli_values,
                                run_defining=RUN_DEFINING, may_change=MAY_CHANGE, allow_changes=allow_config_change,
                                override_flag="--allow_config_change", where=str(path))
    for key, old, new in config_changes(saved, config_to_dict(cfg)):
        if key not in PER_INVOCATION:
            log(f"resume: {key} {old!r} -> {new!r}")
    return cfg


def resolve_config(config_path=None, overrides=(), cli_values=None, allow_config_change: bool = False,
                   log=print) -> tuple[Config, tuple[dict, Path] | None]:
    """The run's config and, when resuming, the loaded checkpoint.

    A new run: defaults < ``--config`` < flags < ``--set``. A resumed run: the checkpoint's config <
    ``--config`` < flags < ``--set``, where only what this invocation gave is applied.
    """
    cfg = load_config(Config, config_path, overrides, cli_values)
    if not cfg.train.resume:
        return cfg, None
    state, path = find_resume(cfg.train.save_dir, cfg.train.resume)
    cfg = resumed_config(state, path, config_path=config_path, overrides=overrides, cli_values=cli_values,
                         allow_config_change=allow_config_change, log=log)
    return cfg, (state, path)


def train(cfg: Config, log=print, *, resume: tuple[dict, Path] | None = None, allow_rewind: bool = False) -> dict:
    """Train; returns the last validation metrics (``val/...`` keys).

    ``resume``: the loaded checkpoint and its path from :func:`resolve_config` (the CLI's way). Called
    with only ``cfg.train.resume`` set, every key of ``cfg`` must agree with the checkpoint's run-defining keys.
    """
    t = cfg.train
    if resume is None and t.resume:
        resume = find_resume(t.save_dir, t.resume)
        cfg = resumed_config(resume[0], resume[1], cli_values=flatten_config(config_to_dict(cfg)), log=log)
        t = cfg.train
    # An occupied (or file) --save_dir is refused before any work or output (default-dataset generation,
    # warmup notes, model build), so the refusal is the one line the user sees. Nothing is written here.
    if Path(t.save_dir).is_file() or (not t.resume and run_dir_has_run(Path(t.save_dir))):
        prepare_run_dir(t.save_dir, resume=t.resume)  # raises its one-line UserError
    # A resume must belong to the folder's run (run id) and not rewind it unless --allow_rewind; nothing is
    # written to the folder before the checkpoint has loaded (identity.commit() below).
    identity = check_run_target(t.save_dir, state=resume[0] if resume else None,
                                resume_path=resume[1] if resume else None, allow_rewind=allow_rewind)
    if t.threads:
        torch.set_num_threads(t.threads)
    info = init_distributed(t.device)
    device = info.device
    say = log if info.is_main else (lambda *a, **k: None)

    # ---- data ----
    train_dir, val_dir = resolve_data(cfg, say)
    normalizer = Normalizer(increment_scale=cfg.data.increment_scale)
    train_set = ActionDataset(train_dir, cfg.data.seq_len, flag="--data_dir", normalizer=normalizer)
    val_set = ActionDataset(val_dir, cfg.data.seq_len, flag="--val_data_dir", normalizer=normalizer)
    if val_set.seq_len != train_set.seq_len:
        raise UserError(f"validation seq_len {val_set.seq_len} != training seq_len {train_set.seq_len}",
                        f"--val_data_dir {val_dir}", "sequences of the same length as the training data")
    seq_len = train_set.seq_len
    # A fixed, seeded subset keeps per-epoch validation comparable across epochs and resumes.
    val_order = torch.randperm(len(val_set), generator=make_generator("cpu", 0)).tolist()
    val_subset = val_order[: t.val_subset] if t.val_subset else val_order
    # The real-vs-real floor of every generation distance comes from validation data held out the way
    # the reference is (whole users or sessions when there are several: audit M4); the samples are
    # compared with the rest. The training set would give a floor of a different kind (other users for
    # a user split, the very sequences trained on otherwise). Only a validation set too small to split
    # falls back to it, and says so.
    ref_pool, held_idx, floor_note = floor_split(val_set, t.num_gen_samples)
    if held_idx:
        floor_real = val_set.raw_batch(held_idx)
        gen_ref = val_set.raw_batch(ref_pool[:: max(1, len(ref_pool) // GEN_REFERENCE_MAX)][:GEN_REFERENCE_MAX])
    else:
        floor_order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(1)).tolist()
        floor_real = train_set.raw_batch(sorted(floor_order[: FLOOR_DRAWS * t.num_gen_samples]))
        gen_ref = None
        floor_note = (f"floor from the training set: the validation set ({len(val_set)}) is too small to hold "
                      f"{t.num_gen_samples} sequences out")
        if len(floor_real) < t.num_gen_samples:
            floor_note = "no floor (too little data); fidelity numbers on so few sequences mean little"
    rate_hz = read_rate_hz(val_dir)
    # The shuffle depends on (seed, epoch) only and its mid-epoch position goes into the checkpoint, so a
    # run stopped mid-epoch resumes at the next micro-batch. Shards per rank under torchrun.
    sampler = ResumableSampler(len(train_set), shuffle=True, seed=t.seed, drop_last=False)
    # Its own generator: every DataLoader iterator draws a base seed (for worker seeding), from the global
    # RNG by default, which would shift the training stream when a resumed epoch starts a new iterator.
    loader = DataLoader(train_set, batch_size=t.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                        worker_init_fn=worker_init(),  # workers ignore SIGTERM: the main process saves and exits
                        drop_last=False, persistent_workers=cfg.data.num_workers > 0,
                        generator=make_generator("cpu", rank_seed(t.seed, info.rank)))
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * t.num_epochs

    # ---- model, optimiser, schedule ----
    seed_everything(t.seed)  # the same seed on every rank: identical initial weights
    diffusion = build_diffusion(cfg)
    raw_model = build_model(cfg, seq_len).to(device)
    ema = EMA(raw_model, decay=t.ema_decay, warmup=t.ema_warmup)
    model = wrap_ddp(raw_model, info)
    # From here on each rank draws its own timesteps, noise and dropout masks (same streams as before
    # this call on no rank); a resume then restores each rank's streams from the checkpoint.
    seed_rank_streams(t.seed)
    optimizer = torch.optim.AdamW(raw_model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    warmup = effective_warmup(t.warmup_steps, total_steps)
    if warmup < t.warmup_steps:
        say(f"warmup {warmup} steps: warmup_steps={t.warmup_steps} capped at {WARMUP_MAX_FRACTION:.0%} "
            f"of this {total_steps}-step run")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total_steps, t.min_lr_ratio))
    scaler = make_grad_scaler(device, t.precision)
    stepper = OptimizerStep(model, optimizer, scaler=scaler, grad_clip=t.grad_clip)

    # ---- run directory, resume ----
    if resume is None and info.is_main:
        prepare_run_dir(t.save_dir, resume=None)
        identity.commit()
    run_dir = Path(t.save_dir)
    barrier()
    ckpts = CheckpointManager(run_dir / "checkpoints", keep_last=t.keep_last, filename=CHECKPOINT_NAME,
                              best_metric=SELECTION_METRIC, best_mode="min", enabled=info.is_main)
    ckpts.run = identity
    step, start_epoch, partial = 0, 0, None
    if resume is not None:
        state, resume_path = resume
        rest = restore_training_state(state, model=raw_model, optimizer=optimizer, scheduler=scheduler,
                                      scaler=scaler, ema=ema, sampler=sampler, stepper=stepper, where=str(resume_path))
        extra = rest.get("extra") or {}
        if "stepper" not in state and "stepper" in extra:  # checkpoints written before trainkit stored it
            stepper.load_state_dict(extra["stepper"])
        # Each rank's own running sums of the interrupted epoch (rank_extra; extra keeps rank 0's copy only).
        partial = (rest.get("rank_extra") or {}).get("epoch_partial")
        ckpts.load_manager_state(state)
        old_subset = (state["config"].get("train") or {}).get("val_subset")
        if old_subset is not None and old_subset != t.val_subset and ckpts.best_value is not None:
            # best.pt was ranked on another validation subset; its value is not comparable (audit M3).
            say(f"resume: val_subset {old_subset} -> {t.val_subset}: best.pt ranking restarts "
                f"(the old best value {ckpts.best_value:.6g} was measured on another subset)")
            ckpts.best_value = None
            identity.forget_best(f"val_subset {old_subset} -> {t.val_subset}")   # run.json's best is per subset too
        if info.is_main:
            identity.commit()   # loaded: the folder may change now (a confirmed rewind is archived first)
        step, start_epoch = int(rest["step"]), int(rest["epoch"])
        if start_epoch > t.num_epochs:  # before config.yaml is rewritten: it would claim fewer epochs than trained
            raise UserError(f"num_epochs={t.num_epochs} but the checkpoint has already trained {start_epoch} epochs",
                            "--num_epochs", f"num_epochs >= {start_epoch} (the run cannot be shortened after the fact)")
        where = f"step {step}, {sampler.consumed} sequences into epoch {start_epoch + 1}" if partial else f"step {step}"
        say(f"resumed from {resume_path} at epoch {start_epoch}, {where}")
        if start_epoch >= t.num_epochs and partial is None:  # nothing left to train: say so, touch nothing
            say(f"the run already finished its {t.num_epochs} epochs; nothing to do "
                "(train longer with --num_epochs N --allow_config_change)")
            cleanup()
            return {}
    if info.is_main:
        save_config(cfg, run_dir)  # the resolved config: on resume the checkpoint's, plus allowed changes
    tracker = Tracker(run_dir, config=config_to_dict(cfg), wandb_project=t.wandb_project,
                      resume_step=step if resume is not None else None)
    say(f"fidelity {floor_note}")
    say(f"run {run_dir} | {len(train_set)} train / {len(val_set)} val sequences of {seq_len} steps | "
        f"{count_parameters(raw_model):,} parameters | device {device} | {steps_per_epoch} steps/epoch")

    def save(epoch: int, metrics: dict | None, partial: dict | None = None) -> None:
        extra = {"normalizer": normalizer.to_dict(), "seq_len": seq_len}
        payload = training_state(model=raw_model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema,
                                 step=step, epoch=epoch, config=config_to_dict(cfg), extra=extra, sampler=sampler,
                                 stepper=stepper,
                                 rank_extra=None if partial is None else {"epoch_partial": partial})
        if partial is None:
            path = ckpts.save(payload, step=step, epoch=epoch, metrics=metrics)
        elif info.is_main:
            # Mid-epoch: only latest.pt, so epochNNNN.pt always means "the end of epoch NNNN".
            payload["manager"] = {"best_value": ckpts.best_value, "best_metric": ckpts.best_metric}
            path = save_checkpoint(ckpts.directory / ckpts.LATEST, identity.stamp(payload))
            identity.note_checkpoint(step)
        else:
            path = None
        if path is not None:
            say(f"saved {path}")

    # ---- loop ----
    stop = GracefulStop()
    metrics: dict = {}
    last_epoch = start_epoch
    try:
        for epoch in range(start_epoch, t.num_epochs):
            model.train()
            sampler.set_epoch(epoch)  # the epoch a checkpoint stopped in keeps its position
            t0 = time.time()
            loss_sum, n_batches = torch.zeros((), device=device), 0
            if partial is not None and epoch == start_epoch:  # what the stopped run had summed this epoch
                loss_sum, n_batches = partial["loss_sum"].to(device), int(partial["n_batches"])
            stopping = False
            bar = progress(sampler.track(loader), total=steps_per_epoch, initial=sampler.consumed_batches(t.batch_size),
                           desc=f"epoch {epoch + 1}/{t.num_epochs}", quiet=t.quiet)
            for x0 in bar:
                x0 = x0.to(device, non_blocking=True)
                with stepper.micro_batch():
                    with autocast(device, t.precision):
                        loss = diffusion.loss(model, x0)
                    out = stepper.backward(loss)
                if out.stepped:
                    scheduler.step()
                    ema.update(raw_model)
                step += 1
                loss_sum += loss.detach()
                n_batches += 1
                if step % 10 == 0:
                    tracker.log_scalars({"train/loss": loss.detach(), "train/lr": optimizer.param_groups[0]["lr"],
                                         "train/grad_norm": out.grad_norm}, step)
                if out.boundary and stop.should_stop():
                    stopping = True
                    break
            train_time = time.time() - t0
            last_epoch = epoch + 1
            if stopping:
                # Mid-epoch: the sampler's position and this epoch's running loss go into the checkpoint,
                # so a resume continues with the next micro-batch.
                save(epoch, None, partial={"loss_sum": loss_sum.detach().cpu(), "n_batches": n_batches})
                say(f"stopping on {stop.signal_name} after step {step} ({sampler.consumed} of {len(sampler)} "
                    f"sequences of epoch {epoch + 1}); continue with --resume auto")
                break
            epoch_loss = (loss_sum / max(n_batches, 1)).item()
            scalars = {"train/epoch_loss": epoch_loss, "train/epoch": last_epoch, "train/epoch_time_s": train_time,
                       "train/ema_decay": ema.current_decay}
            is_last = last_epoch == t.num_epochs
            if info.is_main and (last_epoch % t.val_every == 0 or is_last):
                v0 = time.time()
                idx = val_order if (is_last and t.val_full_at_end) else val_subset
                try:
                    val_metrics = validate(ema.module, diffusion, val_set, idx, cfg, device, heldout=floor_real,
                                           gen_reference=gen_ref, rate_hz=rate_hz)
                    # best.pt is ranked on one fixed subset at every validated epoch (the last epoch validates on
                    # the whole set, whose val/loss is not comparable with the subset's).
                    selection = (val_metrics["val/loss"] if idx is val_subset else
                                 validation_loss(ema.module, diffusion, val_set, val_subset, device))
                except EvalStopped:
                    # SIGTERM during validation (one process only: trainkit.runsafety.eval_should_stop): the
                    # finished epoch is saved without this partial validation, which is neither logged nor ranked.
                    save(last_epoch, None)
                    say(f"stopping on {stop.signal_name} during validation after epoch {last_epoch} (step {step}; "
                        "its validation is skipped); continue with --resume auto")
                    break
                metrics = val_metrics
                scalars.update(metrics)
                scalars[SELECTION_METRIC] = selection
                scalars["val/time_s"] = time.time() - v0
                scalars["val/num_sequences"] = len(idx)
            # The epoch line's honest part: the guide's reconstruction metrics are met by an untrained model
            # (README "Validation metrics"), so every fidelity_every epochs the line also shows how far samples
            # are from real data: C2ST and two W1 ratios against the real-vs-real floor.
            prog, n_prog = {}, 0
            if info.is_main and t.fidelity_every and (last_epoch % t.fidelity_every == 0 or is_last):
                if "val/gen/c2st_accuracy" in scalars:
                    prog, n_prog = progress_fidelity(scalars), t.num_gen_samples
                elif t.fidelity_samples:
                    reference = gen_ref if gen_ref is not None else val_set.raw_batch(val_subset)
                    prog = quick_fidelity(ema.module, diffusion, val_set, cfg, device, t.fidelity_samples, reference,
                                          floor_real, rate_hz)
                    n_prog = t.fidelity_samples
                scalars.update(prog)
            tracker.log_scalars(scalars, step)
            if info.is_main and (last_epoch % t.plot_every == 0 or is_last):
                make_plots(tracker, ema.module, diffusion, val_set, val_subset, cfg, device, step, last_epoch)
            say(f"epoch {last_epoch}/{t.num_epochs} step {step} loss {epoch_loss:.4f} ({train_time:.1f}s)"
                + (f" | val/mse {metrics['val/mse']:.5f} coord_mse {metrics['val/coord_mse']:.5f} "
                   f"press_acc {metrics['val/press_accuracy']:.4f} snr {metrics['val/mean_snr_db']:.2f}dB"
                   if "val/mse" in scalars else "")
                + (format_progress(prog, n_prog) if prog else ""))
            pause = bool(t.stop_after_epoch) and last_epoch >= t.stop_after_epoch and not is_last
            # Save on schedule, and also at any validated epoch that beats best.pt, so best.pt is the best of
            # every validated epoch, not only of the saved ones (rank 0 validates; every rank must agree to save).
            improved = all_reduce_sum({"improved": float(SELECTION_METRIC in scalars
                                                         and ckpts.is_better(scalars[SELECTION_METRIC]))})
            if last_epoch % t.save_every == 0 or is_last or pause or improved["improved"] > 0:
                save(last_epoch, {k: v for k, v in scalars.items() if k.startswith("val/")})
            if pause:
                say(f"stopping after epoch {last_epoch} (train.stop_after_epoch); continue with --resume auto")
                break
        # Rank 0 may still be validating or writing the last checkpoint: a rank that tears its process group
        # down first can abort (gloo: "terminate called without an active exception") and torchrun then kills
        # rank 0 mid-save. Only on the normal way out: after an exception a barrier could wait forever.
        barrier()
    finally:
        tracker.close()
        stop.restore()
        cleanup()
    return metrics


def make_plots(tracker, model, diffusion, val_set, val_subset, cfg: Config, device, step: int, epoch: int) -> None:
    x0 = torch.stack([val_set[i] for i in val_subset[:4]]).to(device)
    noised, rec, samples, t_star = plot_tensors(model, diffusion, x0, cfg)
    d, norm = cfg.diffusion, val_set.normalizer
    fig = plot_reconstructions(norm.decode_continuous(x0).cpu().numpy(), norm.decode_continuous(noised).cpu().numpy(),
                               norm.decode_continuous(rec).cpu().numpy(), t_star, d.num_inference_steps)
    tracker.log_figure(f"val/reconstructions_epoch_{epoch}", fig, step)
    fig = plot_samples(norm.decode(samples).cpu().numpy(), title=f"unconditional samples, epoch {epoch}")
    tracker.log_figure(f"val/samples_epoch_{epoch}", fig, step)
    real = val_set.raw_batch(val_subset[:8])
    fig = plot_samples_vs_real(norm.decode(samples).cpu().numpy(), real, rate_hz=read_rate_hz(val_set.directory),
                               title=f"epoch {epoch}: generated (left) | real validation sequences (right)")
    tracker.log_figure(f"val/samples_vs_real_epoch_{epoch}", fig, step)


@torch.no_grad()
def plot_tensors(model, diffusion: Diffusion, x0: torch.Tensor, cfg: Config):
    """What the plots show, computed on ``x0``'s device: (noised at t*, reconstruction, 8 samples, t*)."""
    d, device = cfg.diffusion, x0.device
    t_star = min(diffusion.T - 1, int(round(d.plot_t_fraction * diffusion.T)) - 1)
    noise = torch.randn(x0.shape, generator=make_generator(device, 1234), device=device, dtype=x0.dtype)
    noised = diffusion.q_sample(x0, torch.full((len(x0),), t_star, device=device), noise)
    _, rec = diffusion.reconstruct(model, x0, d.num_inference_steps, spacing=d.spacing, clip=d.clip_reconstruction)
    samples = diffusion.sample(model, (8, x0.shape[1], x0.shape[2]), d.num_inference_steps, eta=d.eta,
                               spacing=d.spacing, clip=d.clip_sample, generator=make_generator(device, 4321),
                               device=device)
    return noised, rec, samples, t_star


def load_for_inference(path: str | Path, device, config_path: str | None = None, overrides=()
                       ) -> tuple[torch.nn.Module, Diffusion, Normalizer, Config, int]:
    """EMA model (falls back to raw weights), diffusion, normaliser, config and seq_len from a checkpoint.

    ``config_path`` / ``overrides`` (``--config`` / ``--set``) are applied on top of the checkpoint's
    config, e.g. ``--set diffusion.spacing=trailing``.
    """
    state = load_checkpoint(path, map_location=device)
    if "config" not in state or "extra" not in state:
        raise UserError("not an action-ddim checkpoint", str(path), "a file written by `action-ddim train`")
    cfg = load_config(Config, config_path, overrides, base=state["config"])
    seq_len = int(state["extra"]["seq_len"])
    model = build_model(cfg, seq_len).to(device)
    weights = state["ema"]["module"] if "ema" in state else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError("checkpoint weights do not match its config", str(path), " ".join(str(e).split())[:200])
    model.eval()
    return model, build_diffusion(cfg), Normalizer.from_dict(state["extra"]["normalizer"]), cfg, seq_len


__all__ = ["train", "resolve_config", "load_for_inference", "build_model", "build_diffusion", "lr_lambda"]
