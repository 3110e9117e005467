"""`worldmodel train`: the training loop, top to bottom."""

from __future__ import annotations

import copy
import math
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from trainkit.checkpoint import (CheckpointManager, load_checkpoint, restore_training_state, save_checkpoint,
                                training_state)
from trainkit.cli import prepare_run_dir
from trainkit.runsafety import EvalStopped, check_run_target, worker_init
from trainkit.config import config_changes, config_to_dict, load_config, resolve_resume_config, save_config
from trainkit.device import autocast, make_grad_scaler, seed_everything
from trainkit.distributed import GracefulStop, barrier, cleanup, init_distributed, seed_rank_streams, wrap_ddp
from trainkit.data import ResumableSampler
from trainkit.errors import UserError
from trainkit.progress import progress
from trainkit.step import OptimizerStep
from trainkit.tracking import Tracker

from .config import RUN_DEFINING_KEYS, Config, effective_lrs, get, upgrade_saved_config
from .data import DrivingAugmentation, ProcessedDataset, WindowDataset, collate
from .evaluate import build_model, image_grid, precision_for, validate
from .losses import build_perceptual, compute_losses
from .metrics import psnr_per_image, ssim_per_image
from .model import WorldModel, parameter_counts, to_unit
from .synthetic import ensure_synthetic
from .videos import log_video, open_loop_video

MODULES = ("encoder", "dynamics", "decoder")


# ---------------------------------------------------------------- config on resume
# Settings that belong to one invocation, not to the run: a resumed run starts without them unless given again
# (a checkpoint written by a run stopped with stop_after_steps would otherwise stop again at once).
PER_INVOCATION = {"training.stop_after_steps": None, "training.resume": None}


def scale_module_lrs(config_path, overrides, cli_values: dict) -> dict:
    """``--lr X`` scales every module's LR by X / (the config's ``optimizer.lr``), keeping their ratios (the
    guide's configs set all three module LRs, so ``--lr`` alone would otherwise change no group). A module LR
    given with ``--set`` still wins (``--set`` is applied last)."""
    if "optimizer.lr" not in cli_values:
        return cli_values
    without = {k: v for k, v in cli_values.items() if k != "optimizer.lr"}
    o = load_config(Config, config_path, (), without).optimizer
    factor = float(cli_values["optimizer.lr"]) / o.lr
    for name in ("encoder_lr", "dynamics_lr", "decoder_lr"):
        if getattr(o, name) is not None:
            without[f"optimizer.{name}"] = getattr(o, name) * factor
    without["optimizer.lr"] = cli_values["optimizer.lr"]
    return without


def resolve_run_config(config_path, overrides, cli_values: dict, allow_config_change: bool = False, log=print):
    """The run's config. Without --resume: shipped defaults < file < flags < --set. With --resume, the
    checkpoint's config is the bottom layer instead (trainkit's ``resolve_resume_config``), and any
    run-defining key that the file/flags/--set would change is refused (naming the key) unless
    ``allow_config_change``. Returns (cfg, resume_path)."""
    cli_values = scale_module_lrs(config_path, overrides, dict(cli_values or {}))
    cfg = load_config(Config, config_path, overrides, cli_values)
    resume = cfg.training.resume
    if not resume:
        return cfg, None
    ckpts = CheckpointManager(Path(cfg.training.save_dir) / "checkpoints", enabled=False)
    path = ckpts.resolve_resume(resume)
    if path is None:
        raise UserError("no checkpoint to resume from", f"--resume {resume}",
                        f"a checkpoint file, or 'auto' with checkpoints in {ckpts.directory}")
    state = load_checkpoint(path)
    saved = state.get("config")
    if not isinstance(saved, dict) or "model" not in saved:
        raise UserError("not a worldmodel checkpoint", str(path), "a file written by `worldmodel train`")
    saved = upgrade_saved_config(copy.deepcopy(saved))
    for dotted, fresh in PER_INVOCATION.items():
        section, key = dotted.split(".")
        saved.setdefault(section, {})[key] = fresh
    resumed = resolve_resume_config(Config, saved, path=config_path, overrides=overrides, cli_values=cli_values,
                                    run_defining=RUN_DEFINING_KEYS, allow_changes=allow_config_change,
                                    override_flag="--allow-config-change", where=str(path))
    for key, old, new in config_changes(saved, config_to_dict(resumed)):
        if key not in PER_INVOCATION:
            log(f"resume: {key} {old!r} -> {new!r}")
    return resumed, path


# ---------------------------------------------------------------- optimizer and schedule
def param_groups(model: WorldModel, cfg: Config) -> list[dict]:
    """One AdamW group per module (its own LR) and per decay class (no decay on biases/norms/pos)."""
    lrs = effective_lrs(cfg.optimizer)
    groups = []
    for name in MODULES:
        decay, no_decay = [], []
        for pname, p in getattr(model, name).named_parameters():
            (no_decay if p.ndim <= 1 or pname.endswith("pos") else decay).append(p)
        for params, wd, suffix in ((decay, cfg.optimizer.weight_decay, ""), (no_decay, 0.0, "_no_decay")):
            if params:
                groups.append({"params": params, "lr": lrs[name], "weight_decay": wd, "name": name + suffix,
                               "module": name})
    return groups


def build_optimizer(model: WorldModel, cfg: Config) -> torch.optim.AdamW:
    o = cfg.optimizer
    return torch.optim.AdamW(param_groups(model, cfg), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def effective_warmup(warmup_steps: int, total_steps: int) -> int:
    """The configured warmup, unless it is more than half of the run: then 10% of the run (a 1000-step warmup
    in a 300-step run would never reach the peak LR). Runs long enough for their warmup keep it as configured."""
    if not warmup_steps:
        return 0
    return max(1, total_steps // 10) if warmup_steps > total_steps / 2 else warmup_steps


def lr_factor(warmup: int, total_steps: int, min_ratio: float, kind: str):
    """Linear warmup to 1, then cosine to ``min_ratio`` (= min_lr / lr) at ``total_steps``. The same factor
    multiplies every group's LR, so per-module ratios hold at every step."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def make_stepper(model, optimizer, scaler, cfg: Config) -> OptimizerStep:
    """The optimizer step of training (and of the LR finder): accumulation, clipping, the AMP scaler."""
    t = cfg.training
    return OptimizerStep(model, optimizer, scaler=scaler, accum_steps=t.gradient_accumulation,
                         grad_clip=t.max_grad_norm or None)


# ---------------------------------------------------------------- data
def resolve_data_root(cfg: Config, log, is_main: bool = True) -> Path:
    d = cfg.data
    if d.data_root is not None:
        return Path(d.data_root)
    root = None
    if is_main:
        root = ensure_synthetic(d.synthetic_scenes, d.synthetic_frames, d.image_size, d.synthetic_seed,
                                d.val_fraction, log=log, version=d.synthetic_version)
    barrier()
    return root or ensure_synthetic(d.synthetic_scenes, d.synthetic_frames, d.image_size, d.synthetic_seed,
                                    d.val_fraction, log=log, version=d.synthetic_version)


def curriculum_subset(order_by_difficulty: np.ndarray | None, epoch: int, cfg: Config) -> np.ndarray | None:
    """Phase p (epochs p*E .. (p+1)*E-1) trains on the easiest (p+1)/P of the windows; then all of them."""
    c = cfg.data.curriculum
    if not c.enabled or order_by_difficulty is None:
        return None
    phase = epoch // c.epochs_per_phase
    if phase >= c.num_phases:
        return None
    n = len(order_by_difficulty)
    return order_by_difficulty[: max(1, math.ceil(n * (phase + 1) / c.num_phases))]


def memory_line(device: torch.device) -> str:
    if device.type == "cuda":
        used = torch.cuda.max_memory_allocated(device) / 2**30
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        return f"GPU: {used:.1f}GB / {total:.0f}GB"
    return f"CPU RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f}GB"


# ---------------------------------------------------------------- the loop
def train(cfg: Config, resume_path: Path | None = None, log=print, allow_rewind: bool = False) -> dict:
    """Train; returns the last validation metrics. ``resume_path`` comes from resolve_run_config."""
    t, lg = cfg.training, cfg.logging
    if t.threads:
        torch.set_num_threads(t.threads)
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if t.backend == "nccl" and multi_process and (t.device == "cpu" or not torch.cuda.is_available()):
        raise UserError("training.backend is nccl but there is no CUDA device", "training.backend",
                        "gloo on CPU (--set training.backend=gloo), or CUDA devices for nccl")
    if t.backend and multi_process and not dist.is_initialized():
        dist.init_process_group(backend=t.backend)
    info = init_distributed(t.device)
    if t.distributed and not info.is_distributed:
        raise UserError("training.distributed is true but this is a single process", "training.distributed",
                        "launch with torchrun --nproc_per_node=N (or set training.distributed: false)")
    if t.use_dp and (info.device.type != "cuda" or torch.cuda.device_count() < 2 or info.is_distributed):
        raise UserError(f"--use-dp needs several CUDA devices in one process (found {torch.cuda.device_count()})",
                        "--use-dp", "a machine with >= 2 GPUs, or torchrun for DDP (recommended), or drop --use-dp")
    device = info.device
    say = log if info.is_main else (lambda *a, **k: None)
    precision = precision_for(cfg, device)

    # ---- data (opened and checked before the run directory is touched) ----
    data = ProcessedDataset(resolve_data_root(cfg, say, info.is_main))
    d = cfg.data
    train_set = WindowDataset(data, "train", d.sequence_length, d.frame_skip, d.window_stride)
    val_set = WindowDataset(data, "val", d.sequence_length, d.frame_skip, 1)
    WindowDataset(data, "val", cfg.eval.context_frames + cfg.eval.horizon, d.frame_skip, 1)  # fail early if too long
    # an existing run is refused (never overwritten without --resume); a resume must belong to the folder's
    # run (run id) and not rewind it unless --allow-rewind. On resume nothing is written before the
    # checkpoint has loaded into the model/optimizer/scheduler (run identity committed after that).
    resume_state = load_checkpoint(resume_path, map_location=device) if resume_path is not None else None
    if resume_state is None and info.is_main:
        prepare_run_dir(t.save_dir, resume=None)
    identity = check_run_target(t.save_dir, state=resume_state, resume_path=resume_path,
                                allow_rewind=allow_rewind, rewind_flag="--allow-rewind", dir_flag="--save-dir")
    if resume_state is None and info.is_main:
        identity.commit()
    run_dir = Path(t.save_dir)
    barrier()

    order = np.argsort(train_set.difficulty(), kind="stable") if d.curriculum.enabled else None

    def epoch_items(e: int) -> np.ndarray:
        """The windows epoch ``e`` trains on (all of them, or the curriculum phase's easiest ones)."""
        subset = curriculum_subset(order, e, cfg)
        return np.arange(len(train_set)) if subset is None else subset

    def epoch_sampler(e: int) -> ResumableSampler:
        # order from (seed, epoch) only, sharded per rank, mid-epoch position checkpointed (trainkit)
        return ResumableSampler(len(epoch_items(e)), shuffle=True, seed=t.seed, rank=info.rank,
                                num_replicas=info.world_size)

    plan = [math.ceil(len(epoch_sampler(e)) / t.batch_size) for e in range(t.num_epochs)]
    total_steps = sum(plan) // t.gradient_accumulation
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)
    if total_steps < 1:
        raise UserError(f"the run has no optimizer step ({sum(plan)} batches / accumulation "
                        f"{t.gradient_accumulation})", "training.num_epochs",
                        "more epochs or data, or a smaller batch_size / gradient_accumulation")
    warmup = effective_warmup(cfg.scheduler.warmup_steps, total_steps)
    if warmup != cfg.scheduler.warmup_steps:
        say(f"warmup {warmup} steps: scheduler.warmup_steps={cfg.scheduler.warmup_steps} is more than half of this "
            f"{total_steps}-step run")

    aug = d.augmentation
    augment = DrivingAugmentation(aug.brightness, aug.contrast, aug.crop_scale) if aug.enabled else None

    # ---- model, optimizer, schedule ----
    seed_everything(t.seed)
    max_len = max(d.sequence_length, cfg.eval.context_frames + 1)
    raw_model = build_model(cfg, data.image_size, max_len).to(device)
    if t.use_gradient_checkpointing:
        raw_model.enable_gradient_checkpointing()
    model = wrap_ddp(raw_model, info)
    if t.use_dp:
        model = torch.nn.DataParallel(raw_model)
    seed_rank_streams(t.seed)   # dropout differs per rank from here; the init above is identical
    optimizer = build_optimizer(raw_model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(warmup, total_steps, cfg.scheduler.min_lr / cfg.optimizer.lr, cfg.scheduler.type))
    scaler = make_grad_scaler(device, precision)
    stepper = make_stepper(model, optimizer, scaler, cfg)
    perceptual = build_perceptual(cfg.loss.perceptual, data.image_size, say).to(device)

    # ---- run directory, resume ----
    ckpts = CheckpointManager(run_dir / "checkpoints", keep_last=t.keep_last, best_metric="val/psnr",
                              best_mode="max", enabled=info.is_main)
    ckpts.run = identity
    step, epoch, best, resumed_sums = 0, 0, None, {}
    sampler = epoch_sampler(0)
    if resume_path is not None:
        state = resume_state
        epoch = int(state.get("epoch", 0))
        sampler = epoch_sampler(epoch)   # the stopped epoch's item count (curriculum phases differ)
        rest = restore_training_state(state, model=raw_model, optimizer=optimizer, scheduler=scheduler,
                                      scaler=scaler, sampler=sampler, stepper=stepper, where=str(resume_path))
        extra = rest.get("extra") or {}
        resumed_sums = rest.get("rank_extra") or {}
        # The checkpoint restored its own base LRs and weight decay; a change accepted with
        # --allow-config-change (e.g. --lr) must take effect, not only be written into config.yaml (audit M2).
        for i, (group, fresh) in enumerate(zip(optimizer.param_groups, param_groups(raw_model, cfg))):
            if scheduler.base_lrs[i] != fresh["lr"] or group["weight_decay"] != fresh["weight_decay"]:
                scheduler.base_lrs[i] = group["initial_lr"] = fresh["lr"]
                group["weight_decay"] = fresh["weight_decay"]
                group["lr"] = fresh["lr"] * scheduler.lr_lambdas[i](scheduler.last_epoch)
        ckpts.load_manager_state(state)
        best_file = ckpts.directory / ckpts.BEST      # may hold a newer best than latest.pt (eval-only save)
        if best_file.is_file():
            value = (load_checkpoint(best_file).get("manager") or {}).get("best_value")
            if value is not None and ckpts.is_better(float(value)):
                ckpts.best_value = float(value)
        step = int(rest["step"])
        best = extra.get("best")
        if info.is_main:
            identity.commit()   # loaded: now the folder may change (a confirmed rewind is archived first)
        say(f"resumed from {resume_path} at step {step} (epoch {epoch + 1}, {sampler.consumed} of "
            f"{len(sampler)} windows done)")
    # config.yaml says what the run uses: the processed data's frame size and source, not the config's guess
    cfg.data.image_size = list(data.image_size)
    if data.index.get("source") in ("synthetic", "nuscenes", "carla"):
        cfg.data.dataset = data.index["source"]
    if info.is_main:
        save_config(cfg, run_dir)
    tracker = Tracker(run_dir, config=config_to_dict(cfg),
                      wandb_project=lg.wandb_project if lg.use_wandb else None, run_name=lg.wandb_name,
                      resume_step=step if resume_path is not None else None)
    counts = parameter_counts(raw_model)
    say(f"run {run_dir} | data {data.root} ({data.index['source']}, {data.image_size[0]}x{data.image_size[1]}) | "
        f"{len(train_set)} train / {len(val_set)} val windows of {d.sequence_length} frames | "
        f"{counts['total']:,} parameters (encoder {counts['encoder']:,}, dynamics {counts['dynamics']:,}, "
        f"decoder {counts['decoder']:,}) | device {device}, precision {precision} | {total_steps} optimizer steps, "
        f"warmup {warmup} | perceptual loss: {perceptual.name}")
    tracker.log_text("run/perceptual_loss", perceptual.name, step)

    def save(metrics: dict | None, periodic: bool = True) -> None:
        """``periodic``: the step's checkpoint + latest.pt (+ best.pt if val/psnr improved). Otherwise (an
        evaluation that is not a save step) only best.pt, and only when val/psnr improved, so save_interval
        alone sets how often periodic files are written. Called on every rank (RNG states are gathered)."""
        payload = training_state(model=raw_model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, step=step,
                                 epoch=epoch, config=config_to_dict(cfg), sampler=sampler, stepper=stepper,
                                 # this rank's running sums of the current log interval: a resume logs the
                                 # same train/* averages as an uninterrupted run
                                 rank_extra={"sums": {k: v.detach().cpu() for k, v in sums.items()},
                                             "n_sum": n_sum},
                                 extra={"best": best, "image_size": list(data.image_size), "max_len": max_len,
                                        "perceptual": perceptual.name,
                                        "action_normalisation": data.index["action_normalisation"],
                                        "action_names": list(data.index["action_names"]),
                                        "effective_warmup": warmup})
        path = None
        if periodic:
            path = ckpts.save(payload, step=step, metrics=metrics)
        elif info.is_main and metrics and ckpts.is_better(float(metrics["val/psnr"])):
            ckpts.best_value = float(metrics["val/psnr"])
            if identity.best_allows(ckpts.best_value, "max"):   # a rewound run never replaces a better best
                payload["manager"] = {"best_value": ckpts.best_value, "best_metric": ckpts.best_metric}
                path = ckpts.directory / ckpts.BEST
                ckpts.directory.mkdir(parents=True, exist_ok=True)
                save_checkpoint(path, identity.stamp(payload))
                identity.record_best(ckpts.best_value, metric="val/psnr", mode="max", step=step)
        if path is not None:
            say(f"saved {path}")

    # gradients/* histograms are read just before the optimizer step (the stepper zeroes them after)
    grad_snapshot: dict = {}
    want_grads = {"on": False}

    def capture_grads(opt, args, kwargs):
        if want_grads["on"]:
            for name in MODULES:
                gs = [p.grad.detach().flatten().float() for p in getattr(raw_model, name).parameters()
                      if p.grad is not None]
                if gs:
                    grad_snapshot[name] = torch.cat(gs).cpu()
    optimizer.register_step_pre_hook(capture_grads)

    # ---- loop ----
    stop = GracefulStop()
    metrics: dict = {}
    sums: dict[str, torch.Tensor] = {k: v.to(device) for k, v in resumed_sums.get("sums", {}).items()}
    n_sum, t_log = int(resumed_sums.get("n_sum", 0)), time.time()
    done = step >= total_steps
    try:
        while not done and epoch < t.num_epochs:
            if len(sampler) != len(epoch_sampler(epoch)) or sampler.epoch != epoch:
                sampler = epoch_sampler(epoch)
            sampler.set_epoch(epoch)            # the epoch a checkpoint stopped in keeps its position
            loader = DataLoader(Subset(train_set, epoch_items(epoch).tolist()), batch_size=t.batch_size,
                                sampler=sampler, generator=sampler.generator, num_workers=d.num_workers,
                                worker_init_fn=worker_init(),   # workers ignore SIGTERM: the main process saves
                                pin_memory=d.pin_memory and device.type == "cuda", collate_fn=collate)
            bar = progress(sampler.track(loader), total=len(loader), initial=sampler.consumed_batches(t.batch_size),
                           desc=f"Epoch {epoch + 1}/{t.num_epochs}", quiet=t.quiet)
            model.train()
            for batch in bar:
                frames = batch["frames"]
                if augment is not None:
                    # draws from (seed, rank, epoch, position): reproducible, exact on resume, own per rank
                    g = torch.Generator().manual_seed(hash((t.seed, info.rank, epoch, sampler.consumed)) % 2**63)
                    frames = augment(frames, g)
                frames = frames.to(device, non_blocking=True)
                actions = batch["actions"].to(device, non_blocking=True)
                want_grads["on"] = (lg.histogram_every > 0 and stepper.is_boundary
                                    and (step + 1) % (lg.log_interval * lg.histogram_every) == 0)
                with stepper.micro_batch():
                    with autocast(device, precision):
                        out = model(frames, actions)
                        terms = compute_losses(out, frames, cfg.loss, perceptual)
                    outcome = stepper.backward(terms["loss"])
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v.detach()
                n_sum += 1
                if not outcome.boundary:
                    continue
                scheduler.step()
                step += 1
                if step % lg.log_interval == 0 or step == total_steps:
                    with torch.no_grad():
                        local = {f"train/{k}": v.float() / n_sum for k, v in sorted(sums.items())}
                        pred = to_unit(out["predicted"].float()).flatten(0, 1)
                        nxt = frames[:, 1:].flatten(0, 1)
                        rec = to_unit(out["reconstructed"].float()).flatten(0, 1)
                        local["train/psnr"] = psnr_per_image(pred, nxt).mean()
                        local["train/ssim"] = ssim_per_image(pred, nxt).mean()
                        local["train/recon_psnr"] = psnr_per_image(rec, frames.flatten(0, 1)).mean()
                        vec = torch.stack(list(local.values()))
                        if info.is_distributed:   # every rank's shard, not rank 0's alone (one all-reduce per log)
                            dist.all_reduce(vec)
                            vec /= info.world_size
                    scalars = dict(zip(local, vec.tolist()))
                    gn = outcome.grad_norm
                    scalars["train/grad_norm"] = float(gn) if gn is not None else float("nan")
                    # `lr` is a real group's LR (dynamics: the module the world model is about); lr/* all of them
                    scalars["lr"] = next(g["lr"] for g in optimizer.param_groups if g["name"] == "dynamics")
                    for g in optimizer.param_groups:
                        if not g["name"].endswith("_no_decay"):
                            scalars[f"lr/{g['module']}"] = g["lr"]
                    scalars["train/epoch"] = epoch + sampler.consumed / len(sampler)
                    sec_per_batch = (time.time() - t_log) / n_sum
                    tracker.log_scalars(scalars, step)
                    if grad_snapshot:
                        for name in MODULES:
                            tracker.log_histogram(f"weights/{name}", torch.cat(
                                [p.detach().flatten().float() for p in getattr(raw_model, name).parameters()]).cpu(),
                                step)
                            if name in grad_snapshot:
                                tracker.log_histogram(f"gradients/{name}", grad_snapshot[name], step)
                        grad_snapshot.clear()
                    say(f"Epoch {epoch + 1}/{t.num_epochs} Step {step}/{total_steps}\n"
                        f"  train/loss: {scalars['train/loss']:.3f}\n  train/psnr: {scalars['train/psnr']:.1f} dB\n"
                        f"  train/ssim: {scalars['train/ssim']:.2f}\n  {memory_line(device)}\n"
                        f"  Time: {sec_per_batch:.2f}s/batch\n  Learning rate: {scalars['lr']:.2e}")
                    sums, n_sum, t_log = {}, 0, time.time()
                is_eval = step % lg.eval_interval == 0 or step == total_steps
                if is_eval:
                    metrics = {}
                    if info.is_main:
                        try:
                            metrics = validate(raw_model, val_set, cfg, perceptual, device, precision)
                        except EvalStopped:
                            # SIGTERM during validation (one process only: trainkit eval_should_stop): save this
                            # step without the partial validation (not logged, not ranked for best) and stop
                            say(f"stopping on {stop.signal_name} during validation: saving step {step}; "
                                "continue with --resume auto")
                            save(None)
                            done = True
                            break
                        if best is None or metrics["val/psnr"] > best["value"]:
                            best = {"value": metrics["val/psnr"], "step": step, "epoch": epoch + 1}
                        tracker.log_scalars(metrics, step)
                        log_images(tracker, raw_model, out, frames, val_set, lg.num_samples, device, precision, step)
                        say(f"  val/loss: {metrics['val/loss']:.3f}\n  val/psnr: {metrics['val/psnr']:.1f} dB "
                            f"(copy-last-frame {metrics['val/copy_last_psnr']:.1f} dB)\n"
                            f"  val/ssim: {metrics['val/ssim']:.2f}\n"
                            f"  val/rollout_psnr@{cfg.eval.horizon}: {metrics[f'val/rollout_psnr@{cfg.eval.horizon}']:.1f}"
                            f" dB (copy-last-frame {metrics[f'val/copy_last_psnr@{cfg.eval.horizon}']:.1f} dB)\n"
                            f"  Best val: {best['value']:.1f} dB (epoch {best['epoch']}, step {best['step']})")
                    barrier()
                if step % lg.save_interval == 0 or step == total_steps:
                    save(metrics if is_eval else None)
                elif is_eval:
                    save(metrics, periodic=False)
                if step >= total_steps:
                    done = True
                    break
                if t.stop_after_steps is not None and step >= t.stop_after_steps:
                    if step % lg.save_interval:   # also at an eval step: best.pt alone is not resumable (M1)
                        save(None)
                    say(f"stopping after step {step} (training.stop_after_steps); continue with --resume auto")
                    done = True
                    break
                if stop.should_stop():
                    say(f"stopping on {stop.signal_name}: saving step {step}; continue with --resume auto")
                    save(None)
                    done = True
                    break
            if hasattr(bar, "close"):
                bar.close()
            if not done:
                epoch += 1
        barrier()  # every rank leaves together: rank 0 may still be saving (see action_ddim's train)
    finally:
        tracker.close()
        stop.restore()
        cleanup()
    return metrics


def log_images(tracker: Tracker, model: WorldModel, out: dict, frames: torch.Tensor, val_set: WindowDataset,
               num_samples: int, device, precision: str, step: int) -> None:
    """train/reconstruction (GT over reconstruction), train/prediction (GT next frames over 1-step predictions)
    from the last training batch; val/samples (GT / reconstructed / predicted) for fixed validation windows;
    val/open_loop: a video of open-loop rollouts of those windows."""
    k = min(2, frames.shape[0])
    rows = []
    for i in range(k):
        rows += [frames[i], to_unit(out["reconstructed"][i].float())]
    tracker.log_image("train/reconstruction", image_grid(rows), step)
    rows = []
    for i in range(k):
        rows += [frames[i, 1:], to_unit(out["predicted"][i].float())]
    tracker.log_image("train/prediction", image_grid(rows), step)
    idx = np.linspace(0, len(val_set) - 1, min(num_samples, len(val_set))).round().astype(int).tolist()
    batch = collate([val_set[i] for i in idx])
    model.eval()
    with torch.no_grad(), autocast(device, precision):
        vo = model(batch["frames"].to(device), batch["actions"].to(device), rollout_latents=False)
    model.train()
    rows = []
    blank = torch.zeros_like(batch["frames"][0, :1])
    for i in range(len(idx)):
        rows += [batch["frames"][i], to_unit(vo["reconstructed"][i].float()).cpu(),
                 torch.cat([blank, to_unit(vo["predicted"][i].float()).cpu()])]
    tracker.log_image("val/samples", image_grid(rows), step)
    # open-loop prediction video (ground truth | rollout from 1 context frame | copy-last) of up to 4 of the
    # same windows: TensorBoard video summary + wandb.Video (videos.py)
    n = min(4, len(idx))
    model.eval()
    with torch.no_grad(), autocast(device, precision):
        video = open_loop_video(model, batch["frames"][:n].to(device), batch["actions"][:n].to(device), context=1)
    model.train()
    log_video(tracker, "val/open_loop", video, step)


__all__ = ["train", "resolve_run_config", "build_optimizer", "param_groups", "lr_factor", "effective_warmup"]
