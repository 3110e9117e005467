"""`wubu-gan train`: the VAE-GAN loop, top to bottom.

Per micro-batch: G encodes and generates; D scores real and fake targets (the SAME frame slice, the original
took "real" from the context frames); G's loss goes through D with D's weights frozen. Both gradients come
from the same forward, so stepping G's stepper and then D's equals the original "D backward, G backward,
D step, G step". A non-finite loss in either network poisons both windows, so trainkit's guard skips the
whole step for G and D and no optimizer or Q-controller state is touched.
"""
from __future__ import annotations

import contextlib
import math
import re
import time
from pathlib import Path

import geoopt
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from trainkit.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint, unwrap_model
from trainkit.cli import prepare_run_dir
from trainkit.config import config_to_dict, save_config
from trainkit.runsafety import EvalStopped, check_run_target, check_state_shapes, worker_init
from trainkit.device import autocast, make_generator, make_grad_scaler, seed_everything
from trainkit.config import resolve_resume_config as resolve_saved_config
from trainkit.data import ResumableSampler
from trainkit.distributed import (GracefulStop, all_reduce_mean, barrier, cleanup, init_distributed, seed_rank_streams,
                                  wrap_ddp)
from trainkit.ema import EMA
from trainkit.errors import UserError
from trainkit.progress import progress
from trainkit.step import OptimizerStep
from trainkit.tracking import Tracker

from .anomaly import NonFiniteWatch, backward_anomaly_error, non_finite_loss_error
from .config import TrainConfig
from .data import build_datasets
from .evaluate import fixed_noise, frames_to_grid, move, validate
from .metrics import lpips_model
from .model import WuBuGen, build_discriminator, count_parameters, decide_flow, disc_input
from .qcontrol import QController, exploration_decay
from .videolog import log_video, val_rollout_videos

CKPT_PREFIX = "wubugaad_hybridgen_ckpt_v01_"
FORMAT_VERSION = 1
HIGHER_IS_BETTER = {"avg_val_psnr": True, "avg_val_ssim": True, "avg_val_lpips": False, "avg_val_recon_mse": False}


# ------------------------------------------------------------------------------------------ optimizers
def _clip_each(params, max_norm: float) -> None:
    """The original's per-tensor clip (risgd_max_grad_norm), applied inside the optimizer step."""
    if max_norm and max_norm > 0:
        for p in params:
            if p.grad is not None:
                torch.nn.utils.clip_grad_norm_([p], max_norm)


class _PerTensorClip:
    """Optimizer mixin: clip each parameter's gradient to ``per_tensor_clip`` before the Riemannian step."""

    def __init__(self, params, per_tensor_clip: float = 0.0, **kw):
        super().__init__(params, **kw)
        self.per_tensor_clip = per_tensor_clip

    def step(self, closure=None):
        _clip_each([p for g in self.param_groups for p in g["params"]], self.per_tensor_clip)
        return super().step(closure)


class ClippedRiemannianAdam(_PerTensorClip, geoopt.optim.RiemannianAdam):
    pass


class ClippedRiemannianSGD(_PerTensorClip, geoopt.optim.RiemannianSGD):
    pass


def make_optimizer(module: torch.nn.Module, lr: float, cfg: TrainConfig):
    """Riemannian optimizer: ball-valued ManifoldParameters get Riemannian updates, the rest Euclidean ones."""
    params = [p for p in module.parameters() if p.requires_grad]
    if cfg.optimizer == "riemannian_sgd":  # the original's RiemannianEnhancedSGD settings
        return ClippedRiemannianSGD(params, per_tensor_clip=cfg.risgd_max_grad_norm, lr=lr, momentum=0.9,
                                    weight_decay=0.01)
    return ClippedRiemannianAdam(params, per_tensor_clip=cfg.risgd_max_grad_norm, lr=lr, betas=(0.9, 0.999))


def load_optimizer(optimizer, state: dict) -> None:
    """load_state_dict, then give geoopt back its integer step counts: torch turns them into float32 tensors,
    and geoopt's bias correction with a float32 step differs in the last bits from the uninterrupted run."""
    optimizer.load_state_dict(state)
    for st in optimizer.state.values():
        if isinstance(st.get("step"), torch.Tensor):
            st["step"] = int(st["step"].item())


def apply_scales(optimizer, base_lr: float, scales: dict) -> None:
    """lr = clip(base * lr_scale, 1e-8, 1); SGD momentum = clip(0.9 * momentum_scale, 0, 0.999).

    Adam's beta1 is never rewritten: its bias correction (1 - beta1^t) assumes one beta1 for the whole run, and the
    original's per-step rewrite made the first moment inconsistent. For Adam the momentum action is a no-op."""
    lr = min(1.0, max(1e-8, base_lr * scales.get("lrscale", 1.0)))
    mom = min(0.999, max(0.0, 0.9 * scales.get("momentumscale", 1.0)))
    for g in optimizer.param_groups:
        g["lr"] = lr
        if "betas" not in g and "momentum" in g:
            g["momentum"] = mom


def current_momentum(optimizer) -> float:
    g = optimizer.param_groups[0]
    return float(g["betas"][0] if "betas" in g else g.get("momentum", 0.0))


# ------------------------------------------------------------------------------------------ losses
def kl_free_bits(mu: torch.Tensor, logvar: torch.Tensor, free_bits: float) -> torch.Tensor:
    """The KL term with free bits (Kingma et al. 2016): each latent dimension's batch-mean KL counts as at least
    ``free_bits`` nats, so no gradient pushes a dimension below that floor and the posterior cannot collapse onto
    the prior (after phase 2a the plain KL sat at ~1 nat per clip). Logged losses keep the plain KL."""
    per_dim = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean(0)
    return per_dim.clamp_min(free_bits).sum()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)), summed over latent dims, averaged over the batch (logvar is clamped by the encoder)."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()


def augment_clips(frames: torch.Tensor, flow: torch.Tensor | None, flip: bool, color: bool, generator: torch.Generator):
    """Training augmentation (ours; --augment_flip, --augment_color). frames (B, T, C, H, W), flow (B, T-1, 2, H, W)
    with channel 0 = x. flip: each clip is mirrored left-right and, independently, up-down with probability 1/2;
    its flow is mirrored with it and the flipped axis's component changes sign. color: each clip's RGB channels
    are permuted at random (one of six orders), flow unchanged. A synthetic video has one set of textures and
    colours; the held-out videos have others."""
    b, dev = frames.shape[0], frames.device
    if flip:
        for dim, comp in ((-1, 0), (-2, 1)):
            pick = (torch.rand(b, generator=generator, device=dev) < 0.5).view(b, 1, 1, 1, 1)
            frames = torch.where(pick, frames.flip(dim), frames)
            if flow is not None:
                mirrored = flow.flip(dim).clone()
                mirrored[:, :, comp] *= -1
                flow = torch.where(pick, mirrored, flow)
    if color:
        order = torch.argsort(torch.rand(b, frames.shape[2], generator=generator, device=dev), dim=1)
        frames = torch.gather(frames, 2, order.view(b, 1, -1, 1, 1).expand_as(frames))
    return frames, flow


def adaptive_gan_weight(loss_recon: torch.Tensor, loss_adv: torch.Tensor, last_weight: torch.Tensor,
                        scaler=None, previous: float = 1.0, lambda_gan: float = 1.0) -> float:
    """--lambda_gan_adaptive (VQGAN's adaptive weight, Esser et al. 2021): ||d recon/d w|| / ||d adv/d w|| at the
    generator's last layer w, so lambda_gan sets the adversarial gradient's size relative to reconstruction's.
    Why: with a fixed weight the only stable state we found was D at chance (G fooled it, D_total 0.69), and a
    D that moved off chance came with a collapsing run; bounding the adversarial gradient lets D learn while
    reconstruction keeps its share (README, Quality).
    fp16: both terms are differentiated at the scale the main backward carries them (the GradScaler's scale, and
    for the adversarial term lambda_gan x the previous ratio, divided out again), so an overflow here means an
    overflow in the main backward too: the ratio keeps its `previous` value and GradScaler backs off as usual,
    instead of a NaN weight skipping G's and D's step, or a frozen ratio the scaler never notices. The ratio
    itself does not depend on the scale. Each rank uses its own ratio; DDP averages the gradients."""
    scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
    # About what the main backward multiplies the adversarial term by; only needed with a loss scale (fp32/bf16
    # cannot overflow here, and then the ratio is computed exactly as without it).
    carried = max(lambda_gan * previous, 1e-6) if scale != 1.0 else 1.0
    g_rec, = torch.autograd.grad(loss_recon * scale, last_weight, retain_graph=True)
    g_adv, = torch.autograd.grad(loss_adv * (scale * carried), last_weight, retain_graph=True)
    n_rec, n_adv = g_rec.float().norm(), g_adv.float().norm()
    if not bool(torch.isfinite(n_rec) & torch.isfinite(n_adv)) or float(n_adv) == 0.0:  # overflow / underflow
        return previous
    return float((n_rec / (n_adv / carried + 1e-4 * scale)).clamp(0.0, 1e4))


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits.float(), target))


# ------------------------------------------------------------------------------------------ checkpoints
def ckpt_path(directory: Path, tag: str) -> Path:
    return Path(directory) / f"{CKPT_PREFIX}{tag}.pt"


def run_dir_refusal(ckpt_dir: Path) -> UserError | None:
    """Why a new run may not start in ``ckpt_dir`` (None: it may)."""
    if any(ckpt_dir.glob(f"{CKPT_PREFIX}*.pt")):
        return UserError("checkpoint directory already holds a run", f"--checkpoint_dir {ckpt_dir}",
                         "pass --resume auto to continue it, or choose a new --checkpoint_dir")
    if (ckpt_dir / "metrics.jsonl").exists():  # a start that crashed before its first checkpoint
        return UserError("checkpoint directory holds an earlier run that saved no checkpoint",
                         f"--checkpoint_dir {ckpt_dir}", f"delete {ckpt_dir} (nothing to resume there), or choose "
                         "a new --checkpoint_dir")
    return None


def newest_checkpoint(directory: Path, log=print) -> Path | None:
    """The newest checkpoint in ``directory`` that loads; a corrupt or truncated newer file is skipped and named
    (a crash while writing must not make ``--resume auto`` fail or pick nothing)."""
    files = sorted((p for p in Path(directory).glob(f"{CKPT_PREFIX}*.pt") if p.is_file()),
                   key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for path in files:
        try:
            load_checkpoint(path)
            return path
        except UserError as err:
            log(f"warning: skipping unusable checkpoint {path} ({err.what})")
    return None


def plain_state(sd):
    """Tensors of a geoopt state dict as plain torch.Tensor (weights_only-loadable), recursively."""
    if isinstance(sd, torch.Tensor):
        return sd.detach().as_subclass(torch.Tensor) if type(sd) is not torch.Tensor else sd
    if isinstance(sd, dict):
        return {k: plain_state(v) for k, v in sd.items()}
    if isinstance(sd, (list, tuple)):
        return type(sd)(plain_state(v) for v in sd)
    return sd


def load_compatible(module: torch.nn.Module, saved: dict) -> list[str]:
    """Load the tensors whose name and shape match; return the names left at their fresh initialisation."""
    own = module.state_dict()
    keep = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(keep, strict=False)
    return sorted(k for k in own if k not in keep)


def dropped_from(module: torch.nn.Module, saved: dict) -> list[str]:
    """Checkpoint tensors this module has no place for (e.g. affine norms that FiLM replaces in phase 3)."""
    own = module.state_dict()
    return sorted(k for k in saved if k not in own)


def run_dir_from(config_path, overrides) -> str:
    """checkpoint_dir as a run would resolve it without the flag: the last --set, else the YAML file, else the default."""
    import yaml

    from trainkit.config import parse_override

    for item in reversed(list(overrides)):
        key, value = parse_override(item)
        if key == "checkpoint_dir":
            return str(value)
    if config_path is not None:
        data = yaml.safe_load(Path(config_path).read_text()) or {}
        if data.get("checkpoint_dir"):
            return str(data["checkpoint_dir"])
    return TrainConfig.checkpoint_dir


def resolve_resume_config(cli_values: dict, config_path, overrides, resume: str, checkpoint_dir: str | None):
    """On --resume the checkpoint's config is the run's config (trainkit's rule): what this invocation gives goes
    on top, and a flag that changes what the run is (RUN_DEFINING) is refused with one line naming the key."""
    from .config import RUN_DEFINING

    directory = Path(checkpoint_dir or run_dir_from(config_path, overrides))
    path = newest_checkpoint(directory) if resume == "auto" else Path(resume)
    if path is None:
        raise UserError("no checkpoint to resume from", f"--resume {resume}",
                        f"checkpoints named {CKPT_PREFIX}*.pt in {directory}")
    state = load_checkpoint(path)
    if "config" not in state or "gen" not in state:
        raise UserError("not a wubu-gan checkpoint", str(path), "a file written by `wubu-gan train`")
    saved = {"gen_output": "residual", "disc_output": "global", **state["config"], "resume": str(path), "load_checkpoint": None}  # older runs
    return resolve_saved_config(TrainConfig, saved, path=config_path, overrides=overrides,
                                cli_values={**cli_values, "resume": str(path), "load_checkpoint": None},
                                run_defining=RUN_DEFINING, where=str(path),
                                override_flag="a new phase (--load_checkpoint) instead of --resume")


# ------------------------------------------------------------------------------------------ the loop
def anomaly_backward(step_g, loss_g, step_d, loss_d, step: int):
    """Both backwards under --detect_anomaly; autograd's NaN report becomes a one-line error."""
    for which, stepper, loss in (("G", step_g, loss_g), ("D", step_d, loss_d)):
        try:
            out = stepper.backward(loss)
        except RuntimeError as err:
            mapped = backward_anomaly_error(err, which, step)
            if mapped is None:
                raise
            raise mapped from err
        if which == "G":
            out_g = out
    return out_g, out


def train(cfg: TrainConfig, log=print, explicit_keys: frozenset = frozenset(), allow_rewind: bool = False) -> dict:
    """Train; returns a summary (last validation metrics, checkpoint paths)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = init_distributed(cfg.device)
    device = info.device
    say = log if info.is_main else (lambda *a, **k: None)
    if not cfg.gen_context_skip and "gen_output" in explicit_keys:  # parsed and ignored otherwise
        raise UserError(f"--gen_output {cfg.gen_output} has no effect with --no-gen_context_skip", "--gen_output",
                        "--gen_context_skip (the output mode belongs to the context path), or no --gen_output")
    precision = cfg.effective_precision(device.type)
    Tin = cfg.num_input_frames

    # ---- flow decided before any layer is sized
    flow_kind, why = decide_flow(cfg, cfg.image_h, cfg.image_w)
    if cfg.use_wubu_motion_branch:
        say(f"motion branch: {'RAFT' if flow_kind == 'raft' else 'weights-free ' + flow_kind + ' flow (scikit-image)'}"
            f" ({why})")
    flow_method = flow_kind if flow_kind not in ("none", "raft") else None

    # ---- data (the split is seeded by cfg.seed only: the same on every rank)
    train_set, val_set = build_datasets(cfg, log=say, flow_method=flow_method, generate_demo=not cfg.resume)
    # Saved absolute, so evaluate/sample/resume from another folder read this run's data (never a new demo video).
    cfg.video_data_path = str(Path(cfg.video_data_path).resolve())
    if cfg.validation_video_path:
        cfg.validation_video_path = str(Path(cfg.validation_video_path).resolve())
    if cfg.batch_size % info.world_size:
        raise UserError(f"batch_size={cfg.batch_size} is not divisible by {info.world_size} processes", "--batch_size",
                        "a global batch size that is a multiple of the number of processes")
    per_rank = cfg.batch_size // info.world_size
    # trainkit's sampler: a (seed, epoch) order sharded over ranks whose mid-epoch position is checkpointed. Its
    # generator seeds the DataLoader's workers, so a resume does not shift the global RNG stream.
    sampler = ResumableSampler(len(train_set), shuffle=True, seed=cfg.seed, num_replicas=info.world_size,
                               rank=info.rank, drop_last=False)
    loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler, num_workers=cfg.num_workers, drop_last=True,
                        worker_init_fn=worker_init(),  # workers ignore SIGTERM: the main process saves and exits
                        persistent_workers=False, generator=sampler.generator)
    # An epoch is a whole number of accumulation windows (the trailing micro-batches are left for the next
    # epoch's shuffle), so an epoch-end checkpoint, validation and best.pt never fall inside a window.
    steps_per_epoch = len(sampler) // per_rank // cfg.grad_accum_steps * cfg.grad_accum_steps
    if steps_per_epoch == 0:
        raise UserError(f"{len(train_set)} training clips give no full batch of {per_rank}", "--batch_size",
                        "a smaller batch size or more video")

    # ---- models and optimizers (identical init on every rank)
    seed_everything(cfg.seed)
    G_raw = WuBuGen(cfg, flow_kind).to(device)
    D_raw = build_discriminator(cfg).to(device)
    anomaly_watch = NonFiniteWatch({"G": G_raw, "D": D_raw}) if cfg.detect_anomaly else None
    G = wrap_ddp(G_raw, info)
    D = wrap_ddp(D_raw, info)
    seed_rank_streams(cfg.seed)  # from here on (posterior noise, dropout) every rank draws its own randomness
    opt_g = make_optimizer(G_raw, cfg.learning_rate_gen, cfg)
    opt_d = make_optimizer(D_raw, cfg.learning_rate_disc, cfg)
    scaler_g, scaler_d = make_grad_scaler(device, precision), make_grad_scaler(device, precision)
    step_g = OptimizerStep(G, opt_g, scaler=scaler_g, accum_steps=cfg.grad_accum_steps,
                           grad_clip=cfg.global_max_grad_norm or None, detect_anomaly=cfg.detect_anomaly)
    step_d = OptimizerStep(D, opt_d, scaler=scaler_d, accum_steps=cfg.grad_accum_steps,
                           grad_clip=cfg.global_max_grad_norm or None, detect_anomaly=cfg.detect_anomaly)
    q_gen = QController("gen", seed=cfg.seed) if cfg.q_controller_enabled else None
    q_disc = QController("disc", seed=cfg.seed + 1) if cfg.q_controller_enabled else None
    q_lkl = QController("lkl", seed=cfg.seed + 2) if (cfg.q_controller_enabled and cfg.lambda_kl_update_interval > 0) else None
    lambda_kl = cfg.lambda_kl
    primary = cfg.val_primary_metric
    lp_net, lp_reason = lpips_model(device, (cfg.image_h, cfg.image_w)) if cfg.use_lpips_for_verification else (None, "LPIPS not requested")
    if cfg.use_lpips_for_verification and lp_net is None:
        say(f"note: val/avg_val_lpips will be null: {lp_reason}")
    if primary == "avg_val_lpips" and lp_net is None:
        say("note: --val_primary_metric avg_val_lpips needs LPIPS; ranking the best checkpoint by avg_val_psnr")
        primary = "avg_val_psnr"

    # ---- run directory, resume or new phase
    ckpt_dir = Path(cfg.checkpoint_dir)
    # Every rank decides (it only reads the file system) before rank 0 writes anything, so a refused folder
    # stops all ranks at once instead of leaving the others waiting in the first all-reduce.
    refusal = None if cfg.resume else run_dir_refusal(ckpt_dir)
    resume_state, identity = None, None
    if refusal is None:
        # a resume must belong to the folder's run (run id; audit H1) and not rewind it unless --allow_rewind;
        # nothing is written before the checkpoint has loaded (identity.commit() below)
        try:
            if cfg.resume:
                resume_state = load_checkpoint(cfg.resume, map_location=device)
            identity = check_run_target(ckpt_dir, state=resume_state, resume_path=cfg.resume,
                                        allow_rewind=allow_rewind, dir_flag="--checkpoint_dir")
        except UserError as err:
            refusal = err
    phase_state = None  # --load_checkpoint: read once, checked before anything is written, then loaded
    if refusal is None and cfg.load_checkpoint and not cfg.resume:
        phase_state = load_checkpoint(cfg.load_checkpoint, map_location=device)
        refusal = phase_output_refusal(cfg, explicit_keys, phase_state)
    barrier()
    if refusal:
        raise refusal
    if info.is_main and not cfg.resume:
        prepare_run_dir(ckpt_dir, resume=cfg.resume)
        identity.commit()
    step, start_epoch, batch_in_epoch, best_value = 0, 0, 0, None
    val_history: list[float] = []  # the primary validation metric per epoch (the lambda_KL controller's input)
    if cfg.resume:
        state = resume_state
        # shape-changing flags: one line naming the tensors, not a raw traceback (audit M3)
        check_state_shapes(G_raw, state["gen"], where=str(cfg.resume))
        check_state_shapes(D_raw, state["disc"], where=str(cfg.resume))
        G_raw.load_state_dict(state["gen"])
        D_raw.load_state_dict(state["disc"])
        load_optimizer(opt_g, state["opt_gen"])
        load_optimizer(opt_d, state["opt_disc"])
        scaler_g.load_state_dict(state["scaler_gen"]) if state.get("scaler_gen") else None
        scaler_d.load_state_dict(state["scaler_disc"]) if state.get("scaler_disc") else None
        step_g.load_state_dict(state["stepper_gen"])
        step_d.load_state_dict(state["stepper_disc"])
        for q, key in ((q_gen, "q_gen"), (q_disc, "q_disc"), (q_lkl, "q_lkl")):
            if q is not None and state.get(key):
                q.load_state_dict(state[key])
        lambda_kl = float(state["lambda_kl"])
        # Given on this command line (resume keeps everything else): honoured, so config.yaml tells the truth.
        if "lambda_kl" in explicit_keys:
            lambda_kl = cfg.lambda_kl
            say(f"lambda_kl {lambda_kl:g} (as given; the checkpoint had {float(state['lambda_kl']):g})")
        for opt, key in ((opt_g, "learning_rate_gen"), (opt_d, "learning_rate_disc")):
            if key in explicit_keys:
                for g in opt.param_groups:
                    g["lr"] = getattr(cfg, key)
                say(f"{key} {getattr(cfg, key):g} (as given)")
        step, start_epoch, batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        best_value = state.get("best_value")
        val_history[:] = [float(v) for v in state.get("val_history", [])]
        per_rank_rng = state.get("rng_per_rank") or []
        restore_rng_state(per_rank_rng[info.rank] if info.rank < len(per_rank_rng) else state["rng"])
        if state.get("sampler"):
            sampler.load_state_dict(state["sampler"], where=str(cfg.resume))
        else:  # older checkpoints: position from the batch counter
            sampler.load_state_dict({"epoch": start_epoch, "consumed": batch_in_epoch * per_rank}, where=str(cfg.resume))
        if info.is_main:
            identity.commit()   # loaded: the folder may change now (a confirmed rewind is archived first)
        say(f"resumed {cfg.resume} at epoch {start_epoch}, batch {batch_in_epoch}, step {step}")
    elif cfg.load_checkpoint:
        step, lambda_kl = start_new_phase(cfg, explicit_keys, phase_state, G_raw, D_raw, opt_g, opt_d, q_gen, q_disc,
                                          q_lkl, say)
    if info.is_main:
        save_config(cfg, ckpt_dir)
    tracker = Tracker(ckpt_dir, config=config_to_dict(cfg), wandb_project=cfg.wandb_project if cfg.wandb else None,
                      run_name=cfg.wandb_run_name, resume_step=step if cfg.resume else None)
    say(f"run {ckpt_dir} | {len(train_set)} train / {len(val_set)} val clips of {cfg.total_frames} frames "
        f"({cfg.image_h}x{cfg.image_w}) | G {count_parameters(G_raw):,} / D {count_parameters(D_raw):,} parameters | "
        f"device {device} {precision} | {steps_per_epoch} batches/epoch")
    # Generator EMA (StyleGAN's G_ema): validation, images, videos, `evaluate` and `sample` use it. Built after
    # resume / new-phase loading, so it starts from the weights this run continues.
    ema = EMA(G_raw, decay=cfg.gen_ema_decay) if cfg.gen_ema_decay > 0 else None
    if ema is not None and cfg.resume and state.get("gen_ema") is not None:
        ema.load_state_dict({"module": state["gen_ema"], "num_updates": state.get("gen_ema_updates", 0)})
    G_eval = ema.module if ema is not None else G_raw
    z_fixed = fixed_noise(cfg.demo_num_samples, cfg.latent_dim, cfg.seed, device)
    ctx_fixed = fixed_context(G_raw, val_set, cfg.demo_num_samples, device)
    # Adversarial warm-up: lambda_GAN ramps in linearly once reconstruction has had its steps. Counted from this
    # run's first step (a new phase starts its own ramp only if it asks for one) and never longer than half the run.
    run_steps = cfg.epochs * steps_per_epoch // max(1, cfg.grad_accum_steps)
    gan_warmup = min(cfg.lambda_gan_warmup_steps, max(1, run_steps // 2)) if cfg.lambda_gan_warmup_steps else 0
    warmup_start = int(state.get("warmup_start", 0)) if cfg.resume else step
    # Exploration ends within this run: epsilon reaches its floor half-way through (one choice per optimizer step;
    # the lambda_KL controller chooses every lambda_kl_update_interval steps).
    for q, choices in ((q_gen, run_steps), (q_disc, run_steps),
                       (q_lkl, run_steps // max(1, cfg.lambda_kl_update_interval))):
        if q is not None:
            q.eps_decay = exploration_decay(choices, eps_min=q.eps_min)
    if gan_warmup and gan_warmup < cfg.lambda_gan_warmup_steps:
        say(f"note: lambda_gan_warmup_steps {cfg.lambda_gan_warmup_steps} is longer than half this run "
            f"({run_steps} steps): ramping over {gan_warmup}")

    def lr_factor() -> float:
        """--lr_decay_fraction: over the last fraction of this run's steps both learning rates follow a cosine from
        1x to 0.1x (on top of the Q-controllers' scales). Counted from this run's first step, like the GAN ramp."""
        if not cfg.lr_decay_fraction:
            return 1.0
        start = run_steps * (1.0 - cfg.lr_decay_fraction)
        p = min(1.0, max(0.0, (step - warmup_start - start) / max(1.0, run_steps - start)))
        return 0.1 + 0.45 * (1.0 + math.cos(math.pi * p))

    def lambda_gan_now() -> float:
        if not gan_warmup:
            return cfg.lambda_gan
        return cfg.lambda_gan * min(1.0, max(0, step - warmup_start) / gan_warmup)

    def save(tag: str, epoch: int, batch: int, metrics: dict | None = None) -> Path:
        """Called on every rank (each rank's RNG stream is gathered); only rank 0 writes."""
        rng = capture_rng_state()
        rng_per_rank = [rng]
        if info.world_size > 1:
            rng_per_rank = [None] * info.world_size
            torch.distributed.all_gather_object(rng_per_rank, rng)
        payload = {
            "format_version": FORMAT_VERSION, "gen": plain_state(G_raw.state_dict()),
            "disc": plain_state(D_raw.state_dict()), "opt_gen": plain_state(opt_g.state_dict()),
            "opt_disc": plain_state(opt_d.state_dict()), "scaler_gen": scaler_g.state_dict(),
            "scaler_disc": scaler_d.state_dict(), "stepper_gen": step_g.state_dict(), "stepper_disc": step_d.state_dict(),
            "q_gen": q_gen.state_dict() if q_gen else None, "q_disc": q_disc.state_dict() if q_disc else None,
            "q_lkl": q_lkl.state_dict() if q_lkl else None, "lambda_kl": float(lambda_kl), "step": step,
            "epoch": epoch, "batch_in_epoch": batch, "metrics": metrics or {}, "best_value": best_value,
            "rng": rng, "rng_per_rank": rng_per_rank, "sampler": sampler.state_dict(),
            "config": config_to_dict(cfg), "flow_kind": flow_kind,
            "val_history": [float(v) for v in val_history], "warmup_start": warmup_start,
            "log_window": {"sum": log_sum.tolist(), "n": log_n}, "adaptive_ratio": adaptive_ratio,
            "gen_ema": plain_state(ema.module.state_dict()) if ema is not None else None,
            "gen_ema_updates": ema.num_updates if ema is not None else 0,
        }
        path = ckpt_path(ckpt_dir, tag)
        if info.is_main:
            save_checkpoint(path, identity.stamp(payload))
            if tag != "best":
                identity.note_checkpoint(step)
            if tag != "best" and cfg.keep_last_checkpoints:  # bounded disk use: the newest k periodic files stay
                periodic = sorted((p for p in ckpt_dir.glob(f"{CKPT_PREFIX}*step*.pt")), key=lambda p: p.stat().st_mtime_ns)
                for old in periodic[:-cfg.keep_last_checkpoints]:
                    old.unlink(missing_ok=True)
        return path

    # ---- loop
    stop = GracefulStop()
    window = {}  # loss sums over the accumulation window (for the Q-controllers)
    # Logged train/loss_* are means over every finite micro-batch since the previous log, not the last batch's value
    # (one batch of 8 clips swings D_total between 0.0 and 0.9); the partial window is checkpointed, so a resumed
    # run logs the same numbers.
    saved_log = state.get("log_window") if cfg.resume else None
    log_sum = torch.zeros(8, dtype=torch.float32, device=device)  # the 7 losses and the effective lambda_GAN
    if saved_log:
        log_sum[:len(saved_log["sum"])] = torch.tensor(saved_log["sum"], dtype=torch.float32)
    log_n = int(saved_log["n"]) if saved_log else 0
    adaptive_ratio = float(state.get("adaptive_ratio", 1.0)) if cfg.resume else 1.0  # fp16-overflow fallback
    last_val: dict = {}
    summary = {"checkpoint_dir": str(ckpt_dir), "flow": flow_kind, "is_main": info.is_main}
    last_batch = None  # (frames, recon) of the latest micro-batch, for the train_recon image
    t_start = time.time()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            G.train()
            D.train()
            sampler.set_epoch(epoch)  # keeps a restored mid-epoch position for the resumed epoch only
            batch_in_epoch = sampler.consumed_batches(per_rank)
            bar = progress(sampler.track(loader), total=steps_per_epoch - batch_in_epoch,
                           desc=f"epoch {epoch + 1}/{cfg.epochs}", quiet=cfg.quiet)
            for batch in bar:
                if batch_in_epoch >= steps_per_epoch:
                    break
                # Both steppers' contexts around forward AND backward: DDP decides at forward time whether to all-reduce
                # (no_sync inside an accumulation window), and --detect_anomaly records the forward's traceback.
                if anomaly_watch is not None:
                    anomaly_watch.reset()
                with contextlib.ExitStack() as micro:
                    micro.enter_context(step_g.micro_batch())
                    micro.enter_context(step_d.micro_batch())
                    frames, flow = move(batch, device)
                    if cfg.augment_flip or cfg.augment_color:  # a fresh generator per micro-batch and rank: exact on resume
                        aug_seed = ((cfg.seed * 1_000_003 + epoch) * 1_000_003 + batch_in_epoch) * 1024 + info.rank
                        frames, flow = augment_clips(frames, flow, cfg.augment_flip, cfg.augment_color,
                                                     make_generator(device, aug_seed % 2 ** 62))
                    target = frames[:, Tin:]
                    boundary = step_g.is_boundary
                    with autocast(device, precision):
                        recon, mu, logvar = G(frames, flow)
                        # One D forward on [real; fake]: DDP allows one forward per backward, and spectral norm then
                        # runs one power iteration per step. InstanceNorm is per sample, so nothing mixes.
                        real_in, fake_in = disc_input(cfg, frames, target), disc_input(cfg, frames, recon.detach())
                        logits_real, logits_fake = D(torch.cat([real_in, fake_in])).chunk(2)
                        loss_d_real = bce(logits_real, 1.0)
                        loss_d_fake = bce(logits_fake, 0.0)
                    loss_d = 0.5 * (loss_d_real + loss_d_fake)
                    D_raw.requires_grad_(False)  # G's adversarial term needs no D gradients (raw module: no DDP sync)
                    with autocast(device, precision):
                        loss_adv = bce(D_raw(disc_input(cfg, frames, recon)), 1.0)
                    D_raw.requires_grad_(True)
                    loss_recon = F.mse_loss(recon.float(), target.float())
                    loss_kl = kl_divergence(mu.float(), logvar.float())
                    lambda_gan = lambda_gan_now()
                    if cfg.lambda_gan_adaptive and lambda_gan > 0:
                        adaptive_ratio = adaptive_gan_weight(cfg.lambda_recon * loss_recon, loss_adv,
                                                             G_raw.generator.final.weight, scaler_g, adaptive_ratio,
                                                             lambda_gan)
                        lambda_gan = lambda_gan * adaptive_ratio
                    kl_term = kl_free_bits(mu.float(), logvar.float(), cfg.kl_free_bits) if cfg.kl_free_bits > 0 else loss_kl
                    loss_g = cfg.lambda_recon * loss_recon + lambda_kl * kl_term + lambda_gan * loss_adv
                    parts = torch.stack([loss_recon, loss_kl, loss_adv, loss_g, loss_d_real, loss_d_fake, loss_d]).detach()
                    finite = bool(torch.isfinite(parts).all())
                    if not finite and anomaly_watch is not None:
                        # --detect_anomaly: no poisoning (autograd would then blame our multiply); stop and name
                        # the loss term and the first module whose output went non-finite.
                        raise non_finite_loss_error(parts, step, anomaly_watch)
                    if not finite:
                        # Poison both windows: trainkit skips the whole step for G and D, touching no state.
                        say(f"warning: non-finite loss at step {step} (recon {parts[0]:.4g}, kl {parts[1]:.4g}, "
                            f"adv {parts[2]:.4g}, d {parts[6]:.4g}): skipping this optimizer step for G and D")
                        loss_g, loss_d = loss_g * float("nan"), loss_d * float("nan")
                        window["bad"] = True
                    names = ("recon", "kl", "g_adv", "g_total", "d_real", "d_fake", "d_total")
                    window.setdefault("sum", torch.zeros(7, device=device))
                    window["sum"] += torch.nan_to_num(parts)
                    window["n"] = window.get("n", 0) + 1
                    if finite:
                        log_sum[:7] += parts.float()
                        log_sum[7] += lambda_gan
                        log_n += 1
                    if boundary and not window.get("bad") and q_gen is not None:
                        means = all_reduce_mean({k: float(v) for k, v in zip(names, window["sum"] / window["n"])})
                        common = {**means, "lambda_kl": lambda_kl}
                        apply_scales(opt_g, cfg.learning_rate_gen * lr_factor(), q_gen.step(
                            {**common, "lr": opt_g.param_groups[0]["lr"], "momentum": current_momentum(opt_g)}))
                        apply_scales(opt_d, cfg.learning_rate_disc * lr_factor(), q_disc.step(
                            {**common, "lr": opt_d.param_groups[0]["lr"], "momentum": current_momentum(opt_d)}))
                        if q_lkl is not None and val_history and (step + 1) % cfg.lambda_kl_update_interval == 0:
                            val = val_history[-1] if HIGHER_IS_BETTER[primary] else -val_history[-1]
                            scale = q_lkl.step({**common, "val": val})["lklscale"]
                            lambda_kl = min(cfg.max_lambda_kl_q_control, max(cfg.min_lambda_kl_q_control, lambda_kl * scale))
                    elif boundary and cfg.lr_decay_fraction and q_gen is None:
                        for opt, base in ((opt_g, cfg.learning_rate_gen), (opt_d, cfg.learning_rate_disc)):
                            for group in opt.param_groups:
                                group["lr"] = base * lr_factor()
                    if anomaly_watch is None:
                        out_g = step_g.backward(loss_g)
                        out_d = step_d.backward(loss_d)
                    else:
                        out_g, out_d = anomaly_backward(step_g, loss_g, step_d, loss_d, step)
                batch_in_epoch += 1
                last_batch = (frames, recon)
                if not out_g.boundary:
                    continue
                window = {}
                step += 1
                if ema is not None:
                    ema.update(G_raw)
                if step % cfg.log_interval == 0 or step == 1:
                    # Interval means (rank 0's micro-batches); an interval with no finite batch logs no losses.
                    scalars = {}
                    if log_n:
                        means = (log_sum / log_n).tolist()
                        scalars = {f"train/loss_{k}": v for k, v in zip(names, means)}
                        lambda_gan = means[7]  # the adaptive weight moves per batch: its mean over the interval
                    log_sum.zero_()
                    log_n = 0
                    scalars.update({"train/lr_gen": opt_g.param_groups[0]["lr"], "train/lr_disc": opt_d.param_groups[0]["lr"],
                                    "train/lambda_kl_eff": lambda_kl, "train/lambda_gan_eff": lambda_gan,
                                    "train/skipped_steps": step_g.num_skipped,
                                    "train/epoch": epoch + batch_in_epoch / steps_per_epoch})
                    if cfg.log_grad_norm and out_g.grad_norm is not None:
                        scalars.update({"train/grad_norm_gen": float(out_g.grad_norm), "train/grad_norm_disc": float(out_d.grad_norm)})
                    for q, prefix in ((q_gen, "q_ctrl_gen"), (q_disc, "q_ctrl_disc"), (q_lkl, "q_ctrl_lkl")):
                        if q is not None:
                            scalars.update(q.log_values(prefix))
                    if q_lkl is not None:
                        scalars["q_ctrl_lkl/lambda_kl"] = lambda_kl
                    tracker.log_scalars(scalars, step)
                    if "train/loss_recon" in scalars:
                        bar.set_postfix(rec=f"{scalars['train/loss_recon']:.4f}", d=f"{scalars['train/loss_d_total']:.3f}",
                                        adv=f"{scalars['train/loss_g_adv']:.3f}")
                if cfg.wandb_log_train_recon_interval and step % cfg.wandb_log_train_recon_interval == 0:
                    log_recon_images(tracker, "samples/train_recon", frames, recon, cfg, step)
                if cfg.wandb_log_fixed_noise_samples_interval and step % cfg.wandb_log_fixed_noise_samples_interval == 0:
                    log_fixed_noise(tracker, G_eval, z_fixed, ctx_fixed, step)
                if step % cfg.save_interval == 0:
                    save(f"step{step}", epoch, batch_in_epoch)
                if stop.should_stop():
                    break
            if stop.should_stop():
                path = save(f"step{step}", epoch, batch_in_epoch)
                say(f"stopping on {stop.signal_name}: saved {path}; continue with --resume auto")
                summary["stopped"] = True
                break
            # ---- end of epoch: validation (every rank computes it, so the lambda_KL controller agrees), images, checkpoints
            batch_in_epoch = 0
            try:
                result = validate(G_eval, val_set, cfg, device, lp_net, max_clips=cfg.max_val_clips)
            except EvalStopped:
                # SIGTERM during validation (one process only: trainkit eval_should_stop): the finished epoch is
                # saved without this partial validation (not logged, not ranked for best); exit code 3 as above
                path = save(f"ep{epoch + 1}_step{step}", epoch + 1, 0)
                say(f"stopping on {stop.signal_name} during validation after epoch {epoch + 1}: saved {path} (its "
                    "validation is skipped); continue with --resume auto")
                summary["stopped"] = True
                break
            last_val = result
            val_history.append(result["model"][primary])
            # val/avg_val_* is prediction (encoder on the input frames only); the rest under their own names.
            scalars = {f"val/{k}": v for k, v in result["model"].items() if k.startswith("avg_val_")}
            for other in ("copy_last_frame", "constant_velocity", "reconstruction"):
                scalars.update({f"val/{other}_{k[8:]}": v for k, v in result[other].items() if k.startswith("avg_val_")})
            tracker.log_scalars(scalars, step)
            if last_batch is not None:
                log_recon_images(tracker, "samples/train_recon", *last_batch, cfg, step)
            log_val_images(tracker, G_eval, val_set, cfg, device, step)
            videos = val_rollout_videos(G_eval, val_set, cfg, device) if info.rank == 0 else None
            if videos is not None:  # rows: truth, prediction (input frames, then the h = 1..5 rollout)
                log_video(tracker, "samples/val_rollout_video", videos, step)
            log_fixed_noise(tracker, G_eval, z_fixed, ctx_fixed, step)
            value = result["model"][primary]
            better = best_value is None or (value > best_value if HIGHER_IS_BETTER[primary] else value < best_value)
            if better:
                best_value = value
            path = save(f"ep{epoch + 1}_step{step}", epoch + 1, 0, result["model"])
            # a rewound run restores an older best value: run.json keeps the true best, never replaced by worse
            if better and identity.best_allows(value, "max" if HIGHER_IS_BETTER[primary] else "min"):
                save("best", epoch + 1, 0, result["model"])
                if info.is_main:
                    identity.record_best(value, metric=primary, step=step,
                                         mode="max" if HIGHER_IS_BETTER[primary] else "min")
            m, b = result["model"], result["copy_last_frame"]
            say(f"epoch {epoch + 1}/{cfg.epochs} step {step} | val psnr {m['avg_val_psnr']:.2f} dB ssim "
                f"{m['avg_val_ssim']:.3f} (copy-last {b['avg_val_psnr']:.2f} / {b['avg_val_ssim']:.3f}, constant-velocity "
                f"{result['constant_velocity']['avg_val_psnr']:.2f}) | "
                f"lambda_kl {lambda_kl:.3g} | saved {path.name}{' (best)' if better else ''}")
        barrier()  # every rank leaves together: rank 0 may still be saving (see action_ddim's train)
    finally:
        tracker.close()
        stop.restore()
        cleanup()
    summary.update({"val": last_val, "step": step, "lambda_kl": lambda_kl, "best": str(ckpt_path(ckpt_dir, "best")),
                    "skipped_steps": step_g.num_skipped, "train_time_s": time.time() - t_start})
    return summary


def phase_output_refusal(cfg, explicit_keys, state: dict) -> UserError | None:
    """A new phase whose generator output mode differs from the checkpoint's, without ``--gen_output`` given, is
    refused: loading would re-initialise the generator's output layer (a residual head has 3 channels, a warp
    head 6) and drop G's optimizer state, losing the previous phase's decoder head. Checkpoints written before
    the option are ``residual``. Given explicitly, the change goes ahead and the re-initialised tensors are named."""
    if "gen" not in state or "disc" not in state:
        return UserError("not a wubu-gan checkpoint", str(cfg.load_checkpoint), "a file written by `wubu-gan train`")
    if "gen_output" in explicit_keys:
        return None
    saved = dict(state.get("config") or {}).get("gen_output", "residual")
    if saved == cfg.gen_output or not cfg.gen_context_skip:
        return None
    return UserError(f"checkpoint was trained with --gen_output {saved}, this run would use {cfg.gen_output}",
                     "--gen_output", f"--gen_output {saved} to continue it, or --gen_output {cfg.gen_output} to "
                     f"start a new output layer (its weights and G's optimizer state are re-initialised)")


def start_new_phase(cfg, explicit_keys, state, G_raw, D_raw, opt_g, opt_d, q_gen, q_disc, q_lkl, say):
    """--load_checkpoint: weights, optimizers, Q-controllers and the step counter from the previous phase.

    lambda_KL: the value this run was given (flag, --config or --set) wins over the checkpoint's (the original
    silently kept the checkpoint's, so raising LAMBDA_KL between phases did nothing). D keeps every weight whose
    shape still fits (turning FiLM on in phase 3 changes D) and the re-initialised ones are reported.
    """
    path = cfg.load_checkpoint  # ``state``: its contents, read and checked by train() (phase_output_refusal)
    if cfg.load_strict:
        try:
            G_raw.load_state_dict(state["gen"])
        except RuntimeError as err:
            raise UserError("checkpoint's generator does not match this configuration (--load_strict)", str(path),
                            " ".join(str(err).split())[:200]) from None
        fresh_g = []
    else:
        fresh_g = load_compatible(G_raw, state["gen"])
    fresh_d = load_compatible(D_raw, state["disc"])
    if fresh_g:
        say(f"note: generator/encoder tensors re-initialised (no matching shape in {path}): {', '.join(fresh_g)}")
    dropped_d = dropped_from(D_raw, state["disc"])
    if fresh_d or dropped_d:
        say(f"note: discriminator changed shape; kept {len(D_raw.state_dict()) - len(fresh_d)} compatible tensors, "
            f"re-initialised {len(fresh_d)}: {', '.join(fresh_d) or 'none'}; dropped from the checkpoint "
            f"{len(dropped_d)}: {', '.join(dropped_d) or 'none'}")
    saved_opt = dict(state.get("config") or {}).get("optimizer", "riemannian_adam")
    same_opt = saved_opt == cfg.optimizer
    if not same_opt:  # Adam's state (betas, moments) cannot drive SGD, nor the reverse
        say(f"note: optimizer changed ({saved_opt} -> {cfg.optimizer}): both optimizers start fresh")
    if not fresh_g and same_opt:
        load_optimizer(opt_g, state["opt_gen"])
    if not fresh_d and not dropped_d and same_opt:
        load_optimizer(opt_d, state["opt_disc"])
    elif same_opt:
        say("note: discriminator optimizer starts fresh (its parameters changed)")
    # Base learning rates are this run's (the Q-controller scales them again from its next step on).
    for opt, lr in ((opt_g, cfg.learning_rate_gen), (opt_d, cfg.learning_rate_disc)):
        for g in opt.param_groups:
            g["lr"] = lr
    for q, key in ((q_gen, "q_gen"), (q_disc, "q_disc"), (q_lkl, "q_lkl")):
        if q is not None and state.get(key):
            q.load_state_dict(state[key])
    saved_kl = float(state.get("lambda_kl", cfg.lambda_kl))
    if "lambda_kl" in explicit_keys:
        lambda_kl = cfg.lambda_kl
        say(f"lambda_kl {lambda_kl:g} (as given; the checkpoint had {saved_kl:g})")
    else:
        lambda_kl = saved_kl
        say(f"lambda_kl {lambda_kl:g} (from the checkpoint; none given)")
    step = int(state.get("step", 0))
    say(f"new phase from {path} (step {step}, epoch counter restarts at 0)")
    return step, lambda_kl


# ------------------------------------------------------------------------------------------ images
@torch.no_grad()
def log_recon_images(tracker, tag, frames, recon, cfg, step) -> None:
    n = min(cfg.num_val_samples_to_log or 1, frames.shape[0])
    rows = torch.cat([frames[:n].float(), recon[:n].float().detach()], 1)  # inputs, targets, then reconstructions
    tracker.log_image(tag, frames_to_grid(rows), step)


@torch.no_grad()
def log_val_images(tracker, G, val_set, cfg, device, step) -> None:
    n = min(max(1, cfg.num_val_samples_to_log), len(val_set))
    idx = torch.linspace(0, len(val_set) - 1, n).round().long().tolist()
    items = [val_set[i] for i in idx]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    frames, flow = move(batch, device)
    was = G.training
    G.eval()
    recon, _, _ = G(frames, flow, sample=False)
    G.train(was)
    log_recon_images(tracker, "samples/val_reconstruction_samples", frames, recon, cfg, step)


def fixed_context(G, dataset, n: int, device) -> torch.Tensor | None:
    """Input frames of n evenly spaced clips: what a context generator continues from fixed noise."""
    if not G.generator.use_context or len(dataset) == 0:
        return None
    idx = torch.linspace(0, len(dataset) - 1, n).round().long().tolist()
    return torch.stack([dataset[i]["frames"][:G.num_input_frames] for i in idx]).to(device)


@torch.no_grad()
def log_fixed_noise(tracker, G, z, context, step) -> None:
    was = G.training
    G.eval()
    videos = G.generator(z, context)
    G.train(was)
    tracker.log_image("samples/fixed_noise_generated", frames_to_grid(videos), step)


__all__ = ["train", "resolve_resume_config", "kl_divergence", "make_optimizer", "ckpt_path", "CKPT_PREFIX"]
