"""Typed configuration with the guide's sections: model, training, optimizer, scheduler, loss, data, logging.

Precedence: dataclass defaults (= the shipped ``configs/model/base.yaml`` + ``configs/training/base.yaml``)
< ``--config`` YAML (a path, or the name of a shipped config) < typed flags < ``--set key=value``.
A test checks that the shipped base YAMLs and these defaults agree key for key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from trainkit.errors import UserError


@dataclass
class EncoderConfig:
    stages: list[int] = field(default_factory=lambda: [64, 128, 256, 512])  # channels per stride-2 stage
    num_heads: int = 4                   # self-attention heads over the last stage's positions; 0 = no attention


@dataclass
class DynamicsConfig:
    num_layers: int = 4                  # causal transformer layers over the latent sequence
    dropout: float = 0.1
    num_heads: int | None = None         # None: hidden_dim // 64 (at least 1)


@dataclass
class DecoderConfig:
    stages: list[int] = field(default_factory=lambda: [512, 256, 128, 64])  # channels after each x2 upsampling
    init_size: int = 16                  # width of the first feature grid; its height follows the frame's aspect
    reference_frame: bool = True         # render from the last observed frame (encoder skips + warp); false:
                                         # from the latent alone (an autoencoder bottleneck; README)
    rollout_reference: str = "context"   # open-loop: render every step from the last observed frame
                                         # (context) or from the frame just predicted (predicted; README)


@dataclass
class ModelConfig:
    latent_dim: int = 256
    action_dim: int = 4
    hidden_dim: int = 512
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)


@dataclass
class TrainingConfig:
    batch_size: int = 16
    num_epochs: int = 100
    use_amp: bool = True                 # bf16 autocast on CPU, fp16 + GradScaler on CUDA
    gradient_accumulation: int = 4
    max_grad_norm: float = 1.0           # 0 = no clipping
    use_gradient_checkpointing: bool = False
    distributed: bool = False            # true: refuse to run unless launched by torchrun with >1 process
    backend: str | None = None           # None: nccl on CUDA, gloo on CPU
    use_dp: bool = False                 # DataParallel; only with several CUDA devices
    max_steps: int | None = None         # cap on optimizer steps (None: num_epochs decides)
    stop_after_steps: int | None = None  # end this invocation (with a checkpoint) after this step; the LR
                                         # schedule still spans the whole run, so --resume auto continues it
    device: str = "auto"
    seed: int = 0
    save_dir: str = "runs/worldmodel"
    resume: str | None = None            # checkpoint path or "auto"
    keep_last: int = 3
    threads: int | None = None           # torch CPU threads; None = torch's default
    quiet: bool = False


@dataclass
class OptimizerConfig:
    type: str = "adamw"
    lr: float = 1e-4                     # LR of any module whose own LR is None, and the schedule's reference
    encoder_lr: float | None = 1e-5
    dynamics_lr: float | None = 1e-4
    decoder_lr: float | None = 1e-4
    weight_decay: float = 0.01           # not applied to biases and norm weights
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class SchedulerConfig:
    type: str = "cosine"                 # cosine | constant (both after linear warmup)
    warmup_steps: int = 1000             # capped at 10% of the run when the run is shorter than 10x this
    min_lr: float = 1e-6                 # floor of `lr`; each module's floor keeps its ratio to `lr`


@dataclass
class LossConfig:
    recon_weight: float = 1.0
    pred_weight: float = 1.0
    perceptual_weight: float = 0.1
    latent_reg_weight: float = 0.01
    temporal_weight: float = 0.1
    perceptual: str = "auto"             # auto (LPIPS if its weights are cached, else ssim_grad) | lpips | ssim_grad


@dataclass
class CurriculumConfig:
    enabled: bool = False
    num_phases: int = 3
    epochs_per_phase: int = 20           # after num_phases * epochs_per_phase epochs all windows are used


@dataclass
class AugmentationConfig:
    """The guide's ``DrivingAugmentation(brightness, contrast, crop_scale)``, on training windows only. One draw
    per window, applied to all its frames alike, so the motion between frames (what the model learns) stays."""
    enabled: bool = False
    brightness: float = 0.3              # factor uniform in [1 - b, 1 + b]
    contrast: float = 0.3                # factor uniform in [1 - c, 1 + c] around each frame's mean grey
    crop_scale: list[float] = field(default_factory=lambda: [0.7, 1.0])  # area fraction of a random crop
                                         # (the frame's aspect ratio), resized back to the frame size


@dataclass
class DataConfig:
    num_workers: int = 4
    pin_memory: bool = True
    sequence_length: int = 10            # frames per training window (after frame_skip)
    frame_skip: int = 1                  # take every k-th frame within a scene
    dataset: str = "synthetic"           # what `prepare-dataset` builds: synthetic | nuscenes | carla
    data_root: str | None = None         # a processed dataset; None: the synthetic default in the cache
    image_size: list[int] = field(default_factory=lambda: [256, 144])  # [width, height] written by prepare-dataset
    val_fraction: float = 0.2            # scene-level split when the dataset has no official one
    window_stride: int = 1               # start a training window every k frames
    # synthetic default (generated on first use when data_root is None)
    synthetic_scenes: int = 40
    synthetic_frames: int = 60
    synthetic_seed: int = 0
    synthetic_version: int = 2           # generator version: 2 shows speed and braking; 1 = the world before
                                         # session 19 (checkpoints without this key were trained on 1)
    # nuScenes
    version: str = "v1.0-mini"
    action_smoothing: int = 3            # centred moving-average window over derived ego actions (1 = off)
    use_can_bus: bool = True
    # CARLA
    carla_fps: float = 25.0              # used when the action table has no timestamp column
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)


@dataclass
class EvalConfig:
    horizon: int = 5                     # open-loop rollout steps reported at evaluation
    context_frames: int = 1              # ground-truth frames given before the rollout
    max_sequences: int = 64              # validation windows per evaluation (0 = all)


@dataclass
class LoggingConfig:
    log_interval: int = 100              # optimizer steps between train/* scalars
    eval_interval: int = 1000            # optimizer steps between validations
    save_interval: int = 5000            # optimizer steps between checkpoints (and one at the end)
    num_samples: int = 8                 # sequences in image grids
    histogram_every: int = 5             # weights/* and gradients/* every N log intervals (0 = never)
    use_wandb: bool = False
    wandb_project: str | None = "world-model"
    wandb_name: str | None = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self):
        validate(self)


ACTION_CHANNELS = 4   # the processed format's actions.npy is [N, 4]
MIN_FRAME_SIDE = 11   # SSIM (metric and loss) uses an 11x11 Gaussian window


def _bad(key: str, value, expected: str):
    raise UserError(f"{key.split('.')[-1]}={value}", key, expected)


def validate(cfg: Config) -> None:
    m, t, o, s, lo, d, lg, e = (cfg.model, cfg.training, cfg.optimizer, cfg.scheduler, cfg.loss, cfg.data,
                                cfg.logging, cfg.eval)
    positive = {
        "model.latent_dim": m.latent_dim, "model.action_dim": m.action_dim, "model.hidden_dim": m.hidden_dim,
        "model.dynamics.num_layers": m.dynamics.num_layers, "model.decoder.init_size": m.decoder.init_size,
        "training.batch_size": t.batch_size, "training.num_epochs": t.num_epochs,
        "training.gradient_accumulation": t.gradient_accumulation, "training.keep_last": t.keep_last,
        "optimizer.lr": o.lr, "data.sequence_length": d.sequence_length, "data.frame_skip": d.frame_skip,
        "data.window_stride": d.window_stride, "data.synthetic_scenes": d.synthetic_scenes,
        "data.synthetic_frames": d.synthetic_frames, "data.action_smoothing": d.action_smoothing,
        "data.carla_fps": d.carla_fps, "logging.log_interval": lg.log_interval,
        "logging.eval_interval": lg.eval_interval, "logging.save_interval": lg.save_interval,
        "logging.num_samples": lg.num_samples, "eval.horizon": e.horizon, "eval.context_frames": e.context_frames,
        "data.curriculum.num_phases": d.curriculum.num_phases,
        "data.curriculum.epochs_per_phase": d.curriculum.epochs_per_phase,
    }
    for key, value in positive.items():
        if value <= 0:
            _bad(key, value, "a positive number")
    for key, value in (("training.max_steps", t.max_steps),
                       ("training.stop_after_steps", t.stop_after_steps), ("training.threads", t.threads),
                       ("optimizer.encoder_lr", o.encoder_lr), ("optimizer.dynamics_lr", o.dynamics_lr),
                       ("optimizer.decoder_lr", o.decoder_lr), ("model.dynamics.num_heads", m.dynamics.num_heads)):
        if value is not None and value <= 0:
            _bad(key, value, "a positive number (or leave it out)")
    for key, value in (("training.max_grad_norm", t.max_grad_norm), ("optimizer.weight_decay", o.weight_decay),
                       ("scheduler.warmup_steps", s.warmup_steps), ("scheduler.min_lr", s.min_lr),
                       ("data.num_workers", d.num_workers), ("model.encoder.num_heads", m.encoder.num_heads),
                       ("eval.max_sequences", e.max_sequences), ("logging.histogram_every", lg.histogram_every),
                       *((f"loss.{k}", getattr(lo, k)) for k in ("recon_weight", "pred_weight", "perceptual_weight",
                                                                 "latent_reg_weight", "temporal_weight"))):
        if value < 0:
            _bad(key, value, "a value >= 0")
    if m.action_dim != ACTION_CHANNELS:
        _bad("model.action_dim", m.action_dim, f"{ACTION_CHANNELS}: every processed dataset has {ACTION_CHANNELS} "
             "action channels (speed, yaw rate, acceleration, curvature; or CARLA's throttle, steer, brake, speed)")
    if not m.encoder.stages or any(c <= 0 for c in m.encoder.stages):
        _bad("model.encoder.stages", m.encoder.stages, "a non-empty list of positive channel counts")
    if not m.decoder.stages or any(c <= 0 for c in m.decoder.stages):
        _bad("model.decoder.stages", m.decoder.stages, "a non-empty list of positive channel counts")
    if m.decoder.rollout_reference not in ("predicted", "context"):
        _bad("model.decoder.rollout_reference", m.decoder.rollout_reference, "predicted or context")
    if m.encoder.num_heads and m.encoder.stages[-1] % m.encoder.num_heads:
        raise UserError(f"encoder.num_heads={m.encoder.num_heads} does not divide the last stage's "
                        f"{m.encoder.stages[-1]} channels", "model.encoder.num_heads", "a divisor of stages[-1]")
    heads = m.dynamics.num_heads or max(1, m.hidden_dim // 64)
    if m.hidden_dim % heads:
        raise UserError(f"hidden_dim={m.hidden_dim} is not divisible by {heads} heads", "model.dynamics.num_heads",
                        "a divisor of model.hidden_dim")
    if not 0.0 <= m.dynamics.dropout < 1.0:
        _bad("model.dynamics.dropout", m.dynamics.dropout, "a value in [0, 1)")
    if o.type.lower() != "adamw":
        _bad("optimizer.type", o.type, "adamw (the only optimizer built)")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        _bad("optimizer.betas", o.betas, "two values in [0, 1)")
    if s.type not in ("cosine", "constant"):
        _bad("scheduler.type", s.type, "cosine or constant")
    if s.min_lr > o.lr:
        _bad("scheduler.min_lr", s.min_lr, f"at most optimizer.lr={o.lr}")
    if lo.perceptual not in ("auto", "lpips", "ssim_grad"):
        _bad("loss.perceptual", lo.perceptual, "auto, lpips or ssim_grad")
    if d.dataset not in ("synthetic", "nuscenes", "carla"):
        _bad("data.dataset", d.dataset, "synthetic, nuscenes or carla")
    if len(d.image_size) != 2 or any(v < MIN_FRAME_SIDE for v in d.image_size):
        _bad("data.image_size", d.image_size, f"[width, height], each at least {MIN_FRAME_SIDE} (SSIM's 11-px window)")
    if not 0.0 < d.val_fraction < 1.0:
        _bad("data.val_fraction", d.val_fraction, "a value in (0, 1)")
    if d.sequence_length < 2:
        _bad("data.sequence_length", d.sequence_length, "at least 2 (a frame and its successor)")
    aug = d.augmentation
    if not (0.0 <= aug.brightness < 1.0 and 0.0 <= aug.contrast < 1.0):
        _bad("data.augmentation.brightness", [aug.brightness, aug.contrast], "brightness and contrast in [0, 1)")
    if len(aug.crop_scale) != 2 or not 0.0 < aug.crop_scale[0] <= aug.crop_scale[1] <= 1.0:
        _bad("data.augmentation.crop_scale", aug.crop_scale, "[low, high] with 0 < low <= high <= 1")
    if d.synthetic_version not in (1, 2):
        _bad("data.synthetic_version", d.synthetic_version, "1 or 2 (the synthetic generator's version)")
    if t.backend not in (None, "nccl", "gloo"):
        _bad("training.backend", t.backend, "nccl or gloo")


# Keys whose change makes a different run: on --resume they must match the checkpoint unless the user
# passes --allow-config-change.
RUN_DEFINING_KEYS = (
    "model", "data.data_root", "data.image_size", "data.val_fraction", "eval.max_sequences", "eval.horizon",
    "eval.context_frames", "data.sequence_length", "data.frame_skip", "data.window_stride",
    "data.synthetic_scenes", "data.synthetic_frames", "data.synthetic_seed", "data.synthetic_version", "data.curriculum",
    "data.augmentation",
    "training.batch_size", "training.gradient_accumulation", "training.num_epochs", "training.max_steps",
    "training.seed", "optimizer", "scheduler", "loss",
    "training.max_grad_norm", "training.use_amp",   # clipping and precision change the optimisation (audit M4)
)

# click parameter name -> dotted config key, for the typed flags of `worldmodel train`.
TRAIN_FLAGS = {
    "data_root": "data.data_root",
    "batch_size": "training.batch_size",
    "num_epochs": "training.num_epochs",
    "max_steps": "training.max_steps",
    "lr": "optimizer.lr",
    "save_dir": "training.save_dir",
    "resume": "training.resume",
    "use_wandb": "logging.use_wandb",
    "wandb_project": "logging.wandb_project",
    "wandb_name": "logging.wandb_name",
    "use_dp": "training.use_dp",
    "device": "training.device",
    "seed": "training.seed",
    "quiet": "training.quiet",
    "threads": "training.threads",
}


def upgrade_saved_config(saved: dict) -> dict:
    """A checkpoint's config dict as this version reads it: a run saved before ``data.synthetic_version``
    existed was trained on generator version 1, so it keeps version 1 (not today's default) on resume/evaluate."""
    data = saved.get("data")
    if isinstance(data, dict) and "synthetic_version" not in data:
        saved = {**saved, "data": {**data, "synthetic_version": 1}}
    return saved


def configs_root() -> Path:
    return Path(str(resources.files("worldmodel") / "configs"))


def shipped_configs() -> list[str]:
    root = configs_root()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def resolve_config_path(spec: str | None) -> Path | None:
    """A YAML path as given, else a shipped config: ``configs/training/base.yaml``, ``training/base`` or a
    recipe name such as ``quick_prototype``."""
    if spec is None:
        return None
    path = Path(spec)
    if path.is_file():
        return path
    root = configs_root()
    name = spec[len("configs/"):] if spec.startswith("configs/") else spec
    name = name[:-5] if name.endswith(".yaml") else name
    for candidate in (root / f"{name}.yaml", root / "recipes" / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    raise UserError("config not found", f"--config {spec}",
                    f"a YAML file, or one of the shipped configs: {', '.join(shipped_configs())}")


def get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def effective_lrs(o: OptimizerConfig) -> dict[str, float]:
    """Each module's peak LR; a module LR left out (None) falls back to ``lr``."""
    return {name: (value if value is not None else o.lr)
            for name, value in (("encoder", o.encoder_lr), ("dynamics", o.dynamics_lr), ("decoder", o.decoder_lr))}
