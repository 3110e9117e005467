"""`amt train`: the training loop, top to bottom."""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from trainkit.checkpoint import (CheckpointManager, load_checkpoint, restore_training_state, save_checkpoint,
                                 training_state)
from trainkit.cli import prepare_run_dir, run_dir_has_run
from trainkit.runsafety import EvalStopped, check_run_target, worker_init
from trainkit.config import config_to_dict, load_config, save_config
from trainkit.data import ResumableSampler
from trainkit.device import autocast, make_generator, make_grad_scaler, seed_everything
from trainkit.distributed import (GracefulStop, barrier, cleanup, init_distributed, rank_seed, seed_rank_streams,
                                  wrap_ddp)
from trainkit.ema import EMA
from trainkit.errors import UserError
from trainkit.progress import progress
from trainkit.step import OptimizerStep
from trainkit.tracking import Tracker

from .config import Config
from .evaluate import build_model, make_dataset, make_loader, mean_pose, metrics_from_predictions, predict, resolve_root
from .losses import LOSS_TERMS, compute_losses
from .metrics import collapse_monitor
from .model import AMTModel, count_parameters, parameter_table
from .plots import overlay_figure


class PthCheckpoints(CheckpointManager):
    """The guide's names: checkpoints/latest.pth, best.pth and epoch_NNNN.pth every save_freq epochs (all kept).

    ``save(..., periodic=False)`` writes only latest.pth (and best.pth when the metric improved), so epochs that
    are not a multiple of save_freq cost no extra file write."""
    LATEST = "latest.pth"
    BEST = "best.pth"

    def save(self, payload: dict, *, step: int, epoch: int | None = None, metrics: dict | None = None,
             periodic: bool = True):
        if periodic or not self.enabled:
            return super().save(payload, step=step, epoch=epoch, metrics=metrics)
        self.directory.mkdir(parents=True, exist_ok=True)
        value = None if not (self.best_metric and metrics) else metrics.get(self.best_metric)
        improved = value is not None and self.is_better(float(value))
        if improved:
            self.best_value = float(value)
        payload = dict(payload)
        payload["manager"] = {"best_value": self.best_value, "best_metric": self.best_metric}
        if self.run is not None:
            payload = self.run.stamp(payload)
        path = save_checkpoint(self.directory / self.LATEST, payload)
        if self.run is not None:
            self.run.note_checkpoint(step)
        # a rewound run restores an older best value: the run file keeps the true best, never replaced by worse
        if improved and (self.run is None or self.run.best_allows(self.best_value, self.best_mode)):
            save_checkpoint(self.directory / self.BEST, payload)
            if self.run is not None:
                self.run.record_best(self.best_value, metric=self.best_metric, mode=self.best_mode, step=step)
        return path


class WarmRestartSchedule:
    """LR multiplier per optimizer step: linear warmup, then cosine annealing with warm restarts (cycle i lasts
    T_0 * T_mult^i epochs). Cycles are cut so the run ends annealed: the last cycle ends at the last step (a
    remainder shorter than half a cycle is merged into the previous cycle). ``stage_scale`` multiplies it."""

    def __init__(self, steps_per_epoch: int, num_epochs: int, warmup_steps: int, T_0: float, T_mult: float,
                 min_ratio: float, kind: str = "cosine"):
        self.total = steps_per_epoch * num_epochs
        self.warmup, self.min_ratio, self.kind = warmup_steps, min_ratio, kind
        self.stage_scale = 1.0
        bounds, length, b = [0.0], T_0 * steps_per_epoch, 0.0
        while b + length < self.total - 1e-9:
            b += length
            bounds.append(b)
            length *= T_mult
        last_len = self.total - bounds[-1]
        if len(bounds) > 1 and last_len < 0.5 * (bounds[-1] - bounds[-2]) * T_mult:
            bounds.pop()
        self.bounds = bounds + [float(self.total)]

    def base(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        for a, b in zip(self.bounds[:-1], self.bounds[1:]):
            if step < b:
                frac = (step - max(a, self.warmup if a == 0 else a)) / max(b - max(a, self.warmup if a == 0 else a), 1)
                return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))
        return self.min_ratio

    def __call__(self, step: int) -> float:
        return self.base(step) * self.stage_scale


def param_groups(model: AMTModel, cfg: Config) -> list[dict]:
    """AdamW groups per component with the guide's multi-rate multipliers; no weight decay on biases, norms,
    sigma-reparam gains and the learned queries."""
    mr, t = cfg.training.multi_rate, cfg.training
    backbone_mult = mr.pretrained if model.backbone.pretrained else mr.new_encoders
    mult = {"backbone": backbone_mult, "hand_encoder": mr.new_encoders, "object_encoder": mr.new_encoders,
            "hand_decoder": mr.decoders, "object_decoder": mr.decoders, "refinement": mr.decoders}
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        comp = model.component_of(name)
        decay = p.ndim >= 2 and "queries" not in name and "query" not in name
        groups.setdefault((comp, decay), []).append(p)
    return [{"params": ps, "lr": t.learning_rate * mult[c], "weight_decay": t.weight_decay if d else 0.0,
             "name": f"{c}{'' if d else '_nodecay'}"} for (c, d), ps in groups.items()]


def stage_at(cfg: Config, epoch: int):
    """The stage an epoch belongs to (None without a stage schedule)."""
    e = 0
    for st in cfg.stages:
        e += st.epochs
        if epoch < e:
            return st
    return None


def apply_stage(model: AMTModel, cfg: Config, epoch: int, schedule: WarmRestartSchedule) -> tuple[dict, str]:
    """Freeze/unfreeze, LR scale and loss weights of the epoch's stage; returns (loss weights, stage name)."""
    weights = dict(vars(cfg.loss_weights))
    st = stage_at(cfg, epoch)
    if st is None:
        model.unfreeze_all()
        schedule.stage_scale = 1.0
        return weights, "main"
    if st.freeze_all_except is None:
        model.unfreeze_all()
    else:
        model.freeze_all_except(list(st.freeze_all_except))
    schedule.stage_scale = st.lr_scale
    weights.update(st.loss_weights)
    return weights, st.name


# Keys that define what a run is: changing them on --resume is refused unless --allow_config_change.
RUN_DEFINING = ("experiment_name", "data", "model", "loss_weights", "stages", "training.batch_size",
                "training.learning_rate", "training.num_epochs", "training.weight_decay", "training.accumulation_steps",
                "training.multi_rate", "training.scheduler", "training.T_0", "training.T_mult", "training.min_lr",
                "training.warmup_epochs", "training.seed", "training.ema_decay", "training.diversity_target_ratio",
                "training.input_noise", "training.grad_clip",
                "training.use_amp", "training.use_bf16")  # precision: config.yaml must say what every epoch ran in (L1)


def persisted(cfg: Config) -> Config:
    """The config as saved in config.yaml and checkpoints: without the invocation-only settings (where to
    resume from, stop after an epoch), so a resumed run neither stops again nor claims a stale resume path."""
    return dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, resume=None, stop_after_epoch=None))


def sync_lr_schedule(optimizer, scheduler, schedule: WarmRestartSchedule, base: list[tuple[float, float]]) -> None:
    """Make the live LRs follow *this run's* schedule and config.

    ``LambdaLR.load_state_dict`` restores the callable schedule object saved in the checkpoint and
    ``optimizer.load_state_dict`` the old groups' ``initial_lr``/``weight_decay``; with
    ``--allow_config_change`` (a longer run, another LR) both would silently keep the old run's values. So the
    schedule, base LRs and weight decay are set from the current config, and every group's LR from the
    schedule at the current step (called at each epoch start too, so a stage's LR scale applies from its
    first step, the same in an uninterrupted and a resumed run)."""
    scheduler.lr_lambdas = [schedule] * len(optimizer.param_groups)
    scheduler.base_lrs = [lr for lr, _ in base]
    for g, (lr, wd) in zip(optimizer.param_groups, base):
        g["initial_lr"], g["weight_decay"] = lr, wd
        g["lr"] = lr * schedule(scheduler.last_epoch)


def config_for_run(config_path: str | None, overrides=(), cli_values: dict | None = None,
                   allow_config_change: bool = False) -> Config:
    """The run's config. Fresh: defaults < YAML < flags < --set. On --resume: the checkpoint's config with only
    what the user gave on top; run-defining changes are refused (one line naming the key) unless allowed."""
    from trainkit.config import resolve_resume_config

    from .config import check_stage_epochs

    cfg = load_config(Config, config_path, overrides, cli_values)
    if cfg.data.root and not Path(cfg.data.root).is_absolute():  # stored absolute: evaluate/resume from anywhere
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(Path(cfg.data.root).expanduser().resolve())))
    resume = cfg.training.resume
    if not resume:
        check_stage_epochs(cfg)
        return cfg
    path = Path(resume) if resume != "auto" else PthCheckpoints(cfg.run_dir / "checkpoints").resolve_resume("auto")
    if path is None:
        raise UserError("no checkpoint to resume from", f"--resume auto ({cfg.run_dir / 'checkpoints'})",
                        "a run directory with checkpoints/latest.pth")
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict) or "amt" not in (state.get("extra") or {}):
        raise UserError("not an amt checkpoint", str(path), "a latest.pth / best.pth written by `amt train`")
    values = dict(cli_values or {})
    values["training.resume"] = str(path)
    if path.parent.name == "checkpoints":
        run_dir = path.parent.parent  # the run the checkpoint belongs to: the resumed run writes there
        given = values.get("output_dir")
        if given is not None and Path(given).resolve() != run_dir.resolve():
            raise UserError(f"--output_dir {given} differs from the run being resumed ({run_dir})", "--output_dir",
                            "no --output_dir on --resume (the run continues in its own folder), or that folder")
        values["output_dir"] = str(run_dir)
    cfg = resolve_resume_config(Config, state["config"], path=config_path, overrides=overrides, cli_values=values,
                                run_defining=RUN_DEFINING, may_change=("data.num_workers",),
                                allow_changes=allow_config_change, where=str(path))
    check_stage_epochs(cfg)
    return cfg


def train(cfg: Config, log=print, allow_rewind: bool = False) -> dict:
    """Train with a config from :func:`config_for_run`; returns the last validation metrics and the run dir."""
    t = cfg.training
    if t.threads:
        torch.set_num_threads(t.threads)
    info = init_distributed(t.device)
    device = info.device
    say = log if info.is_main else (lambda *a, **k: None)
    run_dir = cfg.run_dir
    resume_path = Path(t.resume) if t.resume else None
    if resume_path is not None and resume_path.parent.name == "checkpoints":
        run_dir = resume_path.parent.parent
    resume_state = load_checkpoint(resume_path) if resume_path is not None else None
    if not t.resume and run_dir_has_run(run_dir):  # before any data is read or generated
        if not (run_dir / "checkpoints" / PthCheckpoints.LATEST).is_file():
            raise UserError("run directory holds a run that never saved a checkpoint", str(run_dir),
                            "delete that folder to start again there, or choose a new --output_dir")
        raise UserError("run directory already holds a run", str(run_dir),
                        "pass --resume auto to continue it, or choose a new --output_dir")
    # a resume must belong to the folder's run (run id; audit H2) and not rewind it unless --allow_rewind;
    # nothing is written to the folder before the checkpoint has loaded (identity.commit() below)
    identity = check_run_target(run_dir, state=resume_state, resume_path=resume_path, allow_rewind=allow_rewind,
                                dir_flag="--output_dir")

    # ---- data (checked before the run directory is created: a bad root leaves nothing behind) ----
    if info.is_main:  # rank 0 generates the synthetic default on first use; the others wait, then read it
        root = resolve_root(cfg, say)
    barrier()
    if not info.is_main:
        root = resolve_root(cfg, say)
    d = cfg.data
    train_set = make_dataset(cfg, root, d.train_split, augment=d.augment, limit=d.max_train_samples, log=say)
    val_set = make_dataset(cfg, root, d.val_split, limit=d.max_val_samples, log=say)
    base_train = train_set.dataset if hasattr(train_set, "dataset") else train_set
    if info.is_main and resume_state is None:
        prepare_run_dir(run_dir, resume=t.resume)
        identity.commit()
    barrier()
    # keep_last=0: every save_freq-th epoch file is kept, as the guide's save_freq promises.
    ckpts = PthCheckpoints(run_dir / "checkpoints", keep_last=0, filename="epoch_{epoch:04d}.pth",
                           best_metric="val/mpjpe", best_mode="min", enabled=info.is_main)
    ckpts.run = identity
    # The shuffle depends on (seed, epoch) only and the sampler's mid-epoch position is checkpointed, so a run
    # stopped mid-epoch resumes at the next batch; under torchrun each rank takes its own shard. Augmentation is
    # a pure function of (seed, epoch, item), so the resumed batches are the very same crops.
    sampler = ResumableSampler(len(train_set), shuffle=True, seed=t.seed, drop_last=False)
    # Its own generator: each DataLoader iterator draws a base seed, from the global RNG by default, which would
    # shift the training stream when a resumed epoch starts a new iterator.
    loader = DataLoader(train_set, batch_size=t.batch_size, sampler=sampler, num_workers=d.num_workers, drop_last=True,
                        worker_init_fn=worker_init(),  # workers ignore SIGTERM: the main process saves and exits
                        persistent_workers=False, generator=make_generator("cpu", rank_seed(t.seed, info.rank)))
    if len(loader) == 0:
        raise UserError(f"training split has {len(train_set)} frames, fewer than one batch", "training.batch_size",
                        f"a batch size <= {len(train_set) // max(info.world_size, 1)}")
    val_loader = make_loader(val_set, t.batch_size, d.num_workers)
    steps_per_epoch = len(loader) // t.accumulation_steps  # optimizer steps
    if steps_per_epoch == 0:
        raise UserError(f"{len(loader)} batches per epoch < accumulation_steps={t.accumulation_steps}",
                        "training.accumulation_steps", f"at most {len(loader)} for this data and batch size")
    usable_batches = steps_per_epoch * t.accumulation_steps
    total_steps = steps_per_epoch * t.num_epochs

    # ---- model, optimiser, schedule ----
    seed_everything(t.seed)
    raw_model = build_model(cfg, log=say).to(device)
    raw_model.set_gradient_checkpointing(cfg.optimizations.memory.gradient_checkpointing,
                                         cfg.optimizations.memory.checkpoint_ratio)
    ema = EMA(raw_model, decay=t.ema_decay, warmup=True)
    # DDP registers the parameters that require grad when it is built: unfreeze everything a stage may train
    # first (apply_stage freezes per epoch). Stages that freeze components, and loss terms weighted 0 (the
    # object branch then gets no gradient), leave parameters unused in a step: find_unused_parameters marks
    # them ready instead of failing; parameters frozen on every rank keep grad None (AdamW skips them).
    raw_model.unfreeze_all()
    ddp_model = wrap_ddp(raw_model, info, find_unused_parameters=True) if info.is_distributed else raw_model
    seed_rank_streams(t.seed)  # same init above; per-rank dropout/noise from here (resume restores)
    model = ddp_model
    if cfg.optimizations.use_compile:
        model = torch.compile(ddp_model, mode=cfg.optimizations.compile_mode)
    groups = param_groups(raw_model, cfg)
    base_hparams = [(g["lr"], g["weight_decay"]) for g in groups]
    optimizer = torch.optim.AdamW(groups, lr=t.learning_rate)
    warmup = min(round(t.warmup_epochs * steps_per_epoch), total_steps // 10)
    def make_schedule() -> WarmRestartSchedule:
        return WarmRestartSchedule(steps_per_epoch, t.num_epochs, warmup, t.T_0, t.T_mult,
                                   min(t.min_lr / t.learning_rate, 1.0), t.scheduler)

    schedule = make_schedule()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = make_grad_scaler(device, cfg.precision)
    # The uncompiled (DDP) module: the stepper needs its no_sync() for accumulation windows.
    stepper = OptimizerStep(ddp_model, optimizer, scaler=scaler, accum_steps=t.accumulation_steps,
                            grad_clip=t.grad_clip)

    step, start_epoch, micro, partial = 0, 0, 0, None
    baseline = None
    if resume_state is not None:
        rest = restore_training_state(resume_state, model=raw_model, optimizer=optimizer, scheduler=scheduler,
                                      scaler=scaler, ema=ema, sampler=sampler, stepper=stepper, where=str(resume_path))
        extra = rest.get("extra") or {}
        if "stepper" not in resume_state and "stepper" in extra:  # checkpoints written before trainkit stored it
            stepper.load_state_dict(extra["stepper"])
        ckpts.load_manager_state(resume_state)
        if info.is_main:
            identity.commit()   # loaded: the folder may change now (a confirmed rewind is archived first)
        step, start_epoch, micro = int(rest["step"]), int(rest["epoch"]), int(extra.get("micro", 0))
        # this rank's running sums of an epoch interrupted mid-way (rank_extra: each rank gets its own back)
        partial = (rest.get("rank_extra") or {}).get("epoch_partial")
        baseline = {k: extra["amt"][k] for k in ("mean_rel", "mean_root", "canonical_hand") if k in extra["amt"]}
        where = (f"{sampler.consumed} crops into epoch {start_epoch + 1}" if partial is not None
                 else f"epoch {start_epoch}")
        if start_epoch > t.num_epochs or (start_epoch == t.num_epochs and partial is None):
            raise UserError(f"the run has already trained {start_epoch} epochs and num_epochs is {t.num_epochs}",
                            "--resume", "a larger training.num_epochs with --allow_config_change to train longer")
        say(f"resumed from {resume_path} at {where}, step {step}")
        # LambdaLR.load_state_dict wrote the saved schedule's attributes into ``schedule``: build this run's anew.
        schedule = make_schedule()
    sync_lr_schedule(optimizer, scheduler, schedule, base_hparams)
    if baseline is None:
        baseline = mean_pose(train_set)
    if info.is_main:
        save_config(persisted(cfg), run_dir)
    tracker = Tracker(run_dir, config=config_to_dict(persisted(cfg)),
                      wandb_project=t.wandb_project if t.use_wandb else None,
                      run_name=cfg.experiment_name, resume_step=step if resume_state is not None else None)
    ptab = parameter_table(raw_model)
    say(f"run {run_dir} | data {root} | {len(train_set)} train / {len(val_set)} val crops ({d.train_split}/"
        f"{d.val_split}) | {count_parameters(raw_model):,} parameters | backbone {cfg.model.backbone} "
        f"({'pretrained' if raw_model.backbone.pretrained else 'random init'}) | device {device} | precision "
        f"{cfg.precision} | {steps_per_epoch} optimizer steps/epoch")

    def save(epoch: int, metrics: dict | None, partial: dict | None = None) -> None:
        """End of an epoch (``epoch`` = epochs done), or mid-epoch on a stop request (``partial`` = this rank's
        running sums; ``epoch`` = the epoch in progress, whose position the sampler state holds)."""
        extra = {"amt": {**baseline, "data_root": str(root), "backbone_pretrained": bool(raw_model.backbone.pretrained)},
                 "micro": micro, "last_val_step": last_val_step}
        payload = training_state(model=raw_model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema,
                                 step=step, epoch=epoch, config=config_to_dict(persisted(cfg)), extra=extra,
                                 sampler=sampler, stepper=stepper,
                                 rank_extra=None if partial is None else {"epoch_partial": partial})
        if partial is None:
            ckpts.save(payload, step=step, epoch=epoch, metrics=metrics, periodic=epoch % t.save_freq == 0)
        elif info.is_main:  # mid-epoch: latest.pth only, so epoch_NNNN.pth always means "the end of epoch NNNN"
            payload["manager"] = {"best_value": ckpts.best_value, "best_metric": ckpts.best_metric}
            save_checkpoint(ckpts.directory / ckpts.LATEST, identity.stamp(payload))
            identity.note_checkpoint(step)

    def validate(epoch: int) -> dict:
        ema.module.refresh_sigma()  # the averaged weights' own spectral norms (also what best.pth then holds)
        p = predict(ema.module, val_loader, device, cfg.precision, keep_images=8)
        m = metrics_from_predictions(p, t.collapse_std_threshold, t.collapse_ratio_threshold)
        scalars = {f"val/{k}": v for k, v in m.items() if isinstance(v, float)}
        if info.is_main and epoch % t.image_freq == 0:
            fig = overlay_figure([x.numpy() for x in p["images"]], [x.numpy() for x in p["gt_uv_crop"]],
                                 [x.numpy() for x in p["pred_uv_crop"]])
            tracker.log_figure("val/skeleton_overlay", fig, step)
        return scalars

    # ---- loop ----
    stop = GracefulStop()
    warned_no_surface = False
    metrics: dict = {}
    last_val_step = int(((resume_state or {}).get("extra") or {}).get("last_val_step", step))
    try:
        for epoch in range(start_epoch, t.num_epochs):
            weights, stage_name = apply_stage(raw_model, cfg, epoch, schedule)
            sync_lr_schedule(optimizer, scheduler, schedule, base_hparams)  # the stage's LR scale from its 1st step
            model.train()
            sampler.set_epoch(epoch)  # the epoch a checkpoint stopped in keeps its position
            base_train.set_epoch(epoch)
            t0 = time.time()
            sums = {k: torch.zeros((), device=device) for k in ["loss", *LOSS_TERMS]}
            n = 0
            if partial is not None and epoch == start_epoch:  # what the stopped run had summed in this epoch
                sums = {k: v.to(device) for k, v in partial["sums"].items()}
                n = int(partial["n"])
            done = sampler.consumed_batches(t.batch_size)
            stopping = False
            bar = progress(sampler.track(loader), total=usable_batches, initial=done,
                           desc=f"epoch {epoch + 1}/{t.num_epochs} [{stage_name}]", quiet=t.quiet)
            for batch in bar:
                if done >= usable_batches:
                    break  # a partial accumulation window would step with a different scale: skip it
                done += 1
                b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                x = b["image"]
                if t.input_noise > 0:
                    x = x + t.input_noise * torch.randn_like(x)
                with stepper.micro_batch():
                    with autocast(device, cfg.precision):
                        out = model(x, b["K"])
                    loss, terms = compute_losses(out, b, weights, t.diversity_target_ratio)
                    res = stepper.backward(loss)
                if weights.get("physics_penetration", 0) > 0 and not warned_no_surface and not bool((b["obj_radius"] > 0).any()):
                    warned_no_surface = True  # checked until the first warning: one host read per batch until then
                    say("WARNING: loss_weights.physics_penetration > 0 but these samples have no object surface "
                        "(real DexYCB labels carry no sphere_radius; object meshes are not used): the term is 0")
                micro += 1
                if res.boundary:
                    step_lrs = [g["lr"] for g in optimizer.param_groups]  # what this optimizer step used
                    # the schedule follows optimizer steps, a non-finite skip included, so it stays aligned
                    # with ``step`` and the run still ends annealed
                    scheduler.step()
                    step += 1
                if res.stepped:
                    ema.update(raw_model)
                sums["loss"] += loss.detach()  # tensors: no host sync per micro-batch
                for k, v in terms.items():
                    sums[k] += v
                n += 1
                if res.boundary and step % t.log_freq == 0:
                    final = (out["refined"][-1] if out["refined"] else out["joints_rel"]).detach().float()
                    stats, warning = collapse_monitor(final, b["joints_rel"], t.collapse_std_threshold,
                                                      t.collapse_ratio_threshold)
                    scalars = {"train/loss": float(loss.detach()), **{f"train/{k}": float(v) for k, v in terms.items()},
                               "train/grad_norm": float(res.grad_norm) if res.grad_norm is not None else 0.0,
                               **{f"train/{k}": v for k, v in stats.items()}}
                    for g, lr in zip(optimizer.param_groups, step_lrs):
                        scalars[f"train/lr_{g['name']}"] = lr
                    tracker.log_scalars(scalars, step)
                    if warning:
                        say(f"WARNING step {step}: {warning}")
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
                if info.is_main and res.boundary and step - last_val_step >= t.val_freq:
                    previous_val_step, last_val_step = last_val_step, step
                    try:
                        metrics = validate(epoch + 1)
                        tracker.log_scalars(metrics, step)
                    except EvalStopped:
                        # SIGTERM during validation (one process only: trainkit eval_should_stop): the partial
                        # validation is dropped and redone after the resume; the stop check below saves
                        last_val_step = previous_val_step
                    model.train()
                if res.boundary and stop.should_stop():  # on an accumulation boundary: no half-summed gradient
                    stopping = True
                    break
            if stopping:
                save(epoch, None, partial={"sums": {k: v.detach().cpu() for k, v in sums.items()}, "n": n})
                say(f"stopping on {stop.signal_name} after step {step} ({sampler.consumed} of {len(sampler)} crops "
                    f"of epoch {epoch + 1}); continue with --resume {run_dir / 'checkpoints' / 'latest.pth'}")
                break
            epoch_time = time.time() - t0
            ep = epoch + 1
            scalars = {f"train/epoch_{k}": float(v) / max(n, 1) for k, v in sums.items()}
            scalars.update({"train/epoch": ep, "train/epoch_time_s": epoch_time, "train/ema_decay": ema.current_decay})
            is_last = ep == t.num_epochs
            if info.is_main:
                try:
                    metrics = validate(ep)
                except EvalStopped:  # as above: the finished epoch is saved without its partial validation
                    save(ep, None)
                    say(f"stopping on {stop.signal_name} during validation after epoch {ep} (step {step}; its "
                        f"validation is skipped); continue with --resume {run_dir / 'checkpoints' / 'latest.pth'}")
                    break
                last_val_step = step
                scalars.update(metrics)
            tracker.log_scalars(scalars, step)
            say(f"epoch {ep}/{t.num_epochs} [{stage_name}] step {step} loss {scalars['train/epoch_loss']:.4f} "
                f"({epoch_time:.0f}s) | val mpjpe {metrics.get('val/mpjpe', float('nan')):.2f} mm, pa "
                f"{metrics.get('val/pa_mpjpe', float('nan')):.2f} mm, pck@5px {metrics.get('val/pck_5px', float('nan')):.3f},"
                f" spread {metrics.get('val/std_ratio', float('nan')):.2f}x GT")
            if info.is_main and metrics.get("val/collapse_warning"):
                say(f"WARNING epoch {ep}: validation predictions spread {metrics.get('val/std_ratio', 0):.2f}x the "
                    f"ground truth's (< {t.collapse_ratio_threshold}): mode collapse")
            save(ep, metrics)
            if t.stop_after_epoch and ep >= t.stop_after_epoch and not is_last:
                say(f"stopping after epoch {ep} (training.stop_after_epoch); continue with --resume "
                    f"{run_dir / 'checkpoints' / 'latest.pth'}")
                break
        barrier()  # every rank leaves together: rank 0 may still be saving (see action_ddim's train)
    finally:
        tracker.close()
        stop.restore()
        cleanup()
    return {"run_dir": str(run_dir), "metrics": metrics, "parameters": ptab, "step": step}


__all__ = ["train", "config_for_run", "WarmRestartSchedule", "param_groups", "apply_stage"]
