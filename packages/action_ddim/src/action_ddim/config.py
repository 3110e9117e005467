"""Typed configuration. Precedence: dataclass defaults < ``--config`` YAML < typed flags < ``--set``.

``configs/default.yaml`` (package data) spells out every default; flags map onto these keys
through ``TRAIN_FLAGS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

from trainkit.errors import UserError

from .diffusion import PREDICTION_TYPES, SCHEDULES, SPACINGS


@dataclass
class DataConfig:
    data_dir: str | None = None          # None: the default synthetic dataset, generated into the cache
    val_data_dir: str | None = None
    seq_len: int = 64                    # used when a data directory has no metadata.json
    # Size of the dataset generated when no data directory is given (the main job). Smaller than
    # generate-data's 5000/1000 so the guide's default model trains in minutes on a 2-core CPU.
    num_train: int = 2000
    num_val: int = 256
    data_seed: int = 0
    num_workers: int = 0
    # 0: the model sees positions. > 0: it sees the start position and then per-step increments times
    # this scale (data.Normalizer); 10 puts the generator's steps at std ~0.3 and its jitter above the
    # lowest noise level. Turn diffusion.clip_sample off with it: fast flicks exceed 1 in these units.
    increment_scale: float = 0.0


@dataclass
class ModelConfig:
    d_model: int = 128
    num_layers: int = 4
    nhead: int = 4
    dropout: float = 0.0
    # Feed each step's backward/forward increments, normalised per sequence, beside the positions
    # (model.scaled_increments). Off in the guide's recipes; on in configs/fidelity.yaml.
    increment_features: bool = False
    # > 0 (odd): a depthwise 1-D convolution of this width before every encoder layer (model.LocalConv),
    # for the local structure of pointer data (jitter, speed bells). 0: the guide's plain transformer.
    conv_kernel: int = 0
    # With data.increment_scale > 0: feed the running pointer position (start + summed increments) beside
    # the velocities (model.running_positions), so the model sees where the screen edges are.
    position_features: bool = False


@dataclass
class DiffusionConfig:
    schedule: str = "cosine"
    num_train_timesteps: int = 1000
    prediction_type: str = "v"           # see README: epsilon makes DDIM inversion ill-conditioned here
    num_inference_steps: int = 50        # DDIM steps for validation, sampling and reconstruction
    eta: float = 0.0                     # sampling stochasticity (reconstruction always uses 0)
    spacing: str = "leading"
    clip_sample: bool = True             # clip x0_hat to [-1, 1] when sampling; never when inverting
    clip_reconstruction: bool = False    # clipping breaks the invert/decode symmetry; off by default
    force_schedule: bool = False         # allow linear with T < 1000
    plot_t_fraction: float = 0.5         # the fixed t* of the "noised" panel, as a fraction of T
    cosine_offset: float = 0.008         # the cosine schedule's s; sets the lowest noise level (see diffusion.py)
    timestep_power: float = 1.0          # training t = floor(T * u**p): 1 = uniform (DDPM); > 1 favours low noise
    min_snr_gamma: float = 0.0           # > 0: min-SNR-gamma loss weighting (Diffusion.loss_weight); 0 = the plain loss


@dataclass
class TrainConfig:
    batch_size: int = 32
    num_epochs: int = 50
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 500
    min_lr_ratio: float = 0.0            # cosine floor as a fraction of lr
    grad_clip: float = 1.0
    ema_decay: float = 0.9995
    ema_warmup: bool = True
    precision: str = "fp32"
    device: str = "auto"
    seed: int = 0
    save_dir: str = "checkpoints"
    resume: str | None = None            # a checkpoint path or "auto"
    save_every: int = 20                 # epochs
    keep_last: int = 3
    plot_every: int = 10                 # epochs
    val_every: int = 1                   # epochs
    val_subset: int = 64                 # validation sequences per epoch (0 = all)
    val_full_at_end: bool = True         # final validation on the whole validation set
    num_gen_samples: int = 64            # unconditional samples for val/gen/* (0 = skip)
    # The epoch line's fidelity estimate (progress/*: C2ST and the speed and path-length W1 ratios) every
    # N epochs; validated epochs reuse val/gen/*, others draw fidelity_samples samples. 0 = off.
    fidelity_every: int = 5
    fidelity_samples: int = 64
    wandb_project: str | None = None     # W&B only when given (offline without a key/network)
    stop_after_epoch: int = 0            # end this invocation (with a checkpoint) after this epoch; 0 = never.
                                         # The LR curve still spans num_epochs, so a later --resume continues it.
    quiet: bool = False
    # torch CPU threads; 0 = torch's default (one per core). On an idle 2-core CPU two threads train
    # d64/L3 at batch 64 1.7x faster than one (64 vs 110 ms/step); on a CPU shared with other jobs,
    # set 1: OpenMP threads thrash there (load 2.7: 171 ms/step with 1 thread vs ~1100 with 2).
    threads: int = 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        validate(self)


def _positive(value, name: str) -> None:
    if value <= 0:
        raise UserError(f"{name.split('.')[-1]}={value}", f"--{name.split('.')[-1]}", "a positive number")


def _check_finite(cfg: Config) -> None:
    """NaN/inf pass every ``<=``/``<`` range check below (``nan <= 0`` is False): refuse them first."""
    flags = {key: param for param, key in TRAIN_FLAGS.items()}
    for section_name in ("data", "model", "diffusion", "train"):
        section = getattr(cfg, section_name)
        for f in fields(section):
            value = getattr(section, f.name)
            for v in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(v, float) and not math.isfinite(v):
                    key = f"{section_name}.{f.name}"
                    raise UserError(f"{f.name}={v}", f"--{flags[key]}" if key in flags else key, "a finite number")


def validate(cfg: Config) -> None:
    m, d, t = cfg.model, cfg.diffusion, cfg.train
    _check_finite(cfg)
    for name, value in (("model.d_model", m.d_model), ("model.num_layers", m.num_layers), ("model.nhead", m.nhead),
                        ("train.batch_size", t.batch_size), ("train.num_epochs", t.num_epochs), ("train.lr", t.lr),
                        ("data.seq_len", cfg.data.seq_len), ("diffusion.num_inference_steps", d.num_inference_steps),
                        ("train.save_every", t.save_every), ("train.plot_every", t.plot_every),
                        ("train.val_every", t.val_every)):
        _positive(value, name)
    if m.d_model % m.nhead:
        raise UserError(f"d_model={m.d_model} is not divisible by nhead={m.nhead}", "--d_model/--nhead",
                        "d_model % nhead == 0 (e.g. d_model 64 with nhead 4)")
    if not 0.0 <= m.dropout < 1.0:
        raise UserError(f"dropout={m.dropout}", "model.dropout", "a value in [0, 1)")
    if d.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {d.schedule!r}", "--schedule", f"one of {', '.join(SCHEDULES)}")
    if d.prediction_type not in PREDICTION_TYPES:
        raise UserError(f"unknown prediction type {d.prediction_type!r}", "--prediction_type",
                        f"one of {', '.join(PREDICTION_TYPES)}")
    if d.spacing not in SPACINGS:
        raise UserError(f"unknown spacing {d.spacing!r}", "diffusion.spacing", f"one of {', '.join(SPACINGS)}")
    if d.schedule == "linear" and d.num_train_timesteps < 1000 and not d.force_schedule:
        raise UserError(f"linear schedule with num_train_timesteps={d.num_train_timesteps}", "--schedule linear",
                        "num_train_timesteps >= 1000 (its final abar is far from 0 below that; "
                        "use cosine, or --set diffusion.force_schedule=true)")
    if not 1 <= d.num_inference_steps <= d.num_train_timesteps:
        raise UserError(f"num_inference_steps={d.num_inference_steps}", "--num_inference_steps",
                        f"between 1 and num_train_timesteps={d.num_train_timesteps}")
    if not d.timestep_power > 0:
        raise UserError(f"timestep_power={d.timestep_power}", "diffusion.timestep_power", "a number > 0 (1 = uniform)")
    if d.min_snr_gamma < 0:
        raise UserError(f"min_snr_gamma={d.min_snr_gamma}", "diffusion.min_snr_gamma", "0 (off) or a number > 0, e.g. 5")
    if m.conv_kernel < 0 or (m.conv_kernel and m.conv_kernel % 2 == 0):
        raise UserError(f"conv_kernel={m.conv_kernel}", "model.conv_kernel", "0 (off) or an odd number >= 1, e.g. 5")
    if not 0.0 < d.cosine_offset <= 0.5:
        raise UserError(f"cosine_offset={d.cosine_offset}", "diffusion.cosine_offset", "a number in (0, 0.5] (0.008 = Nichol & Dhariwal)")
    if d.eta < 0:
        raise UserError(f"eta={d.eta}", "--eta", "eta >= 0 (0 = deterministic DDIM, 1 = DDPM)")
    if not 0.0 < d.plot_t_fraction <= 1.0:
        raise UserError(f"plot_t_fraction={d.plot_t_fraction}", "diffusion.plot_t_fraction", "a value in (0, 1]")
    if t.precision not in ("fp32", "bf16", "fp16"):
        raise UserError(f"unknown precision {t.precision!r}", "--precision", "fp32, bf16 or fp16")
    for name, value in (("train.warmup_steps", t.warmup_steps), ("train.val_subset", t.val_subset),
                        ("train.num_gen_samples", t.num_gen_samples), ("train.threads", t.threads),
                        ("train.fidelity_every", t.fidelity_every), ("train.fidelity_samples", t.fidelity_samples),
                        ("train.grad_clip", t.grad_clip), ("train.weight_decay", t.weight_decay),
                        ("train.stop_after_epoch", t.stop_after_epoch),
                        ("data.data_seed", cfg.data.data_seed)):  # the default dataset's SeedSequence: >= 0
        if value < 0:
            raise UserError(f"{name.split('.')[-1]}={value}", name, "a value >= 0")
    if cfg.data.increment_scale < 0:
        raise UserError(f"increment_scale={cfg.data.increment_scale}", "data.increment_scale",
                        "0 (positions) or a positive scale, e.g. 10")
    if not 0.0 <= t.min_lr_ratio <= 1.0:
        raise UserError(f"min_lr_ratio={t.min_lr_ratio}", "train.min_lr_ratio", "a value in [0, 1]")
    if len(t.betas) != 2 or not all(0.0 <= b < 1.0 for b in t.betas):
        raise UserError(f"betas={list(t.betas)}", "train.betas", "two values in [0, 1), e.g. [0.9, 0.999]")
    if not 0.0 <= t.ema_decay < 1.0:
        raise UserError(f"ema_decay={t.ema_decay}", "--ema_decay", "a value in [0, 1)")


# click parameter name -> dotted config key, for every typed flag of `action-ddim train`.
TRAIN_FLAGS = {
    "data_dir": "data.data_dir",
    "val_data_dir": "data.val_data_dir",
    "seq_len": "data.seq_len",
    "d_model": "model.d_model",
    "num_layers": "model.num_layers",
    "nhead": "model.nhead",
    "dropout": "model.dropout",
    "schedule": "diffusion.schedule",
    "num_train_timesteps": "diffusion.num_train_timesteps",
    "prediction_type": "diffusion.prediction_type",
    "num_inference_steps": "diffusion.num_inference_steps",
    "eta": "diffusion.eta",
    "batch_size": "train.batch_size",
    "num_epochs": "train.num_epochs",
    "lr": "train.lr",
    "warmup_steps": "train.warmup_steps",
    "grad_clip": "train.grad_clip",
    "ema_decay": "train.ema_decay",
    "precision": "train.precision",
    "device": "train.device",
    "seed": "train.seed",
    "save_dir": "train.save_dir",
    "resume": "train.resume",
    "save_every": "train.save_every",
    "plot_every": "train.plot_every",
    "val_every": "train.val_every",
    "val_subset": "train.val_subset",
    "wandb_project": "train.wandb_project",
    "quiet": "train.quiet",
}


def default_config_path() -> Path:
    return Path(str(resources.files("action_ddim") / "configs" / "default.yaml"))


def named_config(path: str | None) -> str | None:
    """``--config balabit`` (a bare name that is not a file) -> the shipped ``configs/balabit.yaml``."""
    if path is None or Path(path).exists() or "/" in path or path.endswith((".yaml", ".yml")):
        return path
    shipped = Path(str(resources.files("action_ddim") / "configs" / f"{path}.yaml"))
    if not shipped.is_file():
        names = sorted(p.stem for p in shipped.parent.glob("*.yaml"))
        raise UserError(f"no config file or shipped config named {path!r}", "--config",
                        f"a YAML path or one of {', '.join(names)}")
    return str(shipped)
