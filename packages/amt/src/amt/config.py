"""Typed configuration with the guide's keys. Precedence: dataclass defaults < ``--config`` YAML < flags < ``--set``.

``configs/default_config.yaml`` is the guide's (ViT-L/14 DINOv2, H200-sized); ``configs/cpu.yaml`` is sized for
the synthetic default on a CPU. ``--config`` takes a path, or the name of a shipped config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from trainkit.errors import UserError

from .data import SPLITS
from .model import BACKBONES, COMPONENTS


@dataclass
class SyntheticConfig:
    sequences_per_subject: int = 5
    frames_per_sequence: int = 8
    seed: int = 0
    generator_version: int = 2        # 2: coloured stick hands (amt.synthetic); 3: skinned hands over photos (amt.synth)


@dataclass
class DataConfig:
    root: str | None = None           # DexYCB root; None: the synthetic default, generated into the cache
    train_split: str = "s0_train"
    val_split: str = "s0_val"
    test_split: str = "s0_test"
    image_size: int = 224             # hand-crop side in pixels (a multiple of 14 for a ViT backbone)
    crop_scale: float = 1.5           # crop side = crop_scale x the 2-D joints' bounding box
    augment: bool = True              # rotation, scaling, translation, colour jitter (image and labels together)
    aug_rotation_deg: float = 30.0
    aug_scale: float = 0.15
    aug_translation: float = 0.1      # fraction of the crop side
    aug_color_jitter: float = 0.3
    mirror_left: bool = True          # left hands mirrored into right hands (mano_side from meta.yml)
    num_workers: int = 0
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    backbone: str = "dinov2_vitl14"
    backbone_weights: str | None = None
    freeze_layers: int = 12
    hidden_dim: int = 1024
    num_heads: int = 8
    num_decoder_layers: int = 4
    num_refinement_steps: int = 2
    use_sigma_reparam: bool = True
    dropout: float = 0.1
    cnn_width: int = 32               # channels of the first stage of the CNN backbone


@dataclass
class MultiRate:
    pretrained: float = 0.01          # backbone, when pretrained weights were loaded (else new_encoders)
    new_encoders: float = 0.5         # hand_encoder, object_encoder (and a randomly initialised backbone)
    decoders: float = 1.0             # hand_decoder, object_decoder, refinement


@dataclass
class TrainingConfig:
    batch_size: int = 32
    learning_rate: float = 1e-3
    num_epochs: int = 100
    weight_decay: float = 0.01
    use_amp: bool = True
    use_bf16: bool = True
    accumulation_steps: int = 2
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    multi_rate: MultiRate = field(default_factory=MultiRate)
    scheduler: str = "cosine"         # cosine annealing with warm restarts, stepped per iteration
    T_0: float = 10.0                 # first cycle, epochs
    T_mult: float = 2.0
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0        # capped at 10% of the run, so short runs warm up proportionally
    log_freq: int = 100               # steps
    val_freq: int = 1000              # steps (and at the end of every epoch whose end crosses it, and the last)
    save_freq: int = 10               # epochs (latest.pth is written every epoch)
    diversity_target_ratio: float = 0.5   # diversity loss penalises prediction spread below this x GT spread
    input_noise: float = 0.0          # std of Gaussian noise added to normalised inputs (guide's troubleshooting)
    collapse_std_threshold: float = 0.001  # metres: the guide's "hand pose std < 0.001" warning
    collapse_ratio_threshold: float = 0.25  # warn when prediction spread < this x ground-truth spread (collapse)
    image_freq: int = 1               # epochs between skeleton-overlay images
    device: str = "auto"
    seed: int = 0
    resume: str | None = None
    stop_after_epoch: int | None = None   # end this invocation (with a checkpoint) after this epoch
    use_wandb: bool = False
    wandb_project: str = "231nProject_AMT"
    threads: int | None = None        # torch CPU threads (None: torch's default)
    quiet: bool = False


@dataclass
class LossWeights:
    hand_pose: float = 1.0
    hand_pose_refined: float = 1.2
    hand_2d: float = 0.3
    root: float = 1.0
    object_position: float = 0.5
    diversity: float = 0.01
    physics_penetration: float = 0.0


@dataclass
class MemoryConfig:
    gradient_checkpointing: bool = True
    checkpoint_ratio: float = 0.5


@dataclass
class Optimizations:
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    use_compile: bool = False
    compile_mode: str = "default"     # torch.compile mode (the guide mentions reduce-overhead)


@dataclass
class StageConfig:
    """One stage of the guide's schedule: runs ``epochs`` epochs with these settings."""
    name: str = "stage"
    epochs: int = 1
    freeze_all_except: list[str] | None = None   # None: everything trainable (unfreeze_all)
    lr_scale: float = 1.0                         # multiplies the scheduled learning rate
    loss_weights: dict[str, float] = field(default_factory=dict)  # overrides of loss_weights


@dataclass
class Config:
    # The guide writes the scheduler keys at the YAML top level ("Learning Rate Scheduling") and calls the
    # penetration weight `physics` in stage 2; both spellings mean the keys below (trainkit.config aliases).
    KEY_ALIASES = {"scheduler": "training.scheduler", "T_0": "training.T_0", "T_mult": "training.T_mult",
                   "loss_weights.physics": "loss_weights.physics_penetration"}

    experiment_name: str = "amt"
    output_dir: str | None = None     # run directory; None: runs/<experiment_name>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    optimizations: Optimizations = field(default_factory=Optimizations)
    stages: list[StageConfig] = field(default_factory=list)

    def __post_init__(self):
        validate(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.experiment_name}")

    @property
    def precision(self) -> str:
        t = self.training
        return "fp32" if not t.use_amp else ("bf16" if t.use_bf16 else "fp16")


def _bad(key: str, value, expected: str):
    raise UserError(f"{key.split('.')[-1]}={value!r}", key, expected)


def validate(cfg: Config) -> None:
    d, m, t = cfg.data, cfg.model, cfg.training
    for key, v in (("data.image_size", d.image_size), ("model.hidden_dim", m.hidden_dim), ("model.num_heads", m.num_heads),
                   ("model.num_decoder_layers", m.num_decoder_layers), ("training.batch_size", t.batch_size),
                   ("training.learning_rate", t.learning_rate), ("training.num_epochs", t.num_epochs),
                   ("training.accumulation_steps", t.accumulation_steps), ("training.T_0", t.T_0),
                   ("training.log_freq", t.log_freq), ("training.val_freq", t.val_freq),
                   ("training.save_freq", t.save_freq), ("training.image_freq", t.image_freq),
                   ("data.crop_scale", d.crop_scale), ("model.cnn_width", m.cnn_width),
                   ("data.synthetic.sequences_per_subject", d.synthetic.sequences_per_subject)):
        if v <= 0:
            _bad(key, v, "a positive number")
    for key, v in (("model.num_refinement_steps", m.num_refinement_steps), ("model.freeze_layers", m.freeze_layers),
                   ("model.dropout", m.dropout), ("training.weight_decay", t.weight_decay),
                   ("training.grad_clip", t.grad_clip), ("training.min_lr", t.min_lr),
                   ("training.warmup_epochs", t.warmup_epochs), ("training.input_noise", t.input_noise),
                   ("data.num_workers", d.num_workers), ("data.aug_rotation_deg", d.aug_rotation_deg),
                   ("data.aug_scale", d.aug_scale), ("data.aug_translation", d.aug_translation),
                   ("data.aug_color_jitter", d.aug_color_jitter), ("training.diversity_target_ratio", t.diversity_target_ratio),
                   *((f"loss_weights.{k}", v) for k, v in vars(cfg.loss_weights).items())):
        if v < 0:
            _bad(key, v, "a value >= 0")
    for key, v in (("data.max_train_samples", d.max_train_samples), ("data.max_val_samples", d.max_val_samples),
                   ("training.stop_after_epoch", t.stop_after_epoch), ("training.threads", t.threads)):
        if v is not None and v <= 0:
            _bad(key, v, "a positive integer (or leave it unset)")
    if d.synthetic.generator_version not in (2, 3):
        _bad("data.synthetic.generator_version", d.synthetic.generator_version, "2 or 3")
    if d.synthetic.frames_per_sequence < 2:
        _bad("data.synthetic.frames_per_sequence", d.synthetic.frames_per_sequence, "an integer >= 2 (frame 0 has no hand)")
    if m.dropout >= 1:
        _bad("model.dropout", m.dropout, "a value in [0, 1)")
    if m.hidden_dim % m.num_heads or m.hidden_dim % 4:
        _bad("model.hidden_dim", m.hidden_dim, f"a multiple of num_heads={m.num_heads} and of 4")
    if m.backbone not in BACKBONES:
        _bad("model.backbone", m.backbone, f"one of {BACKBONES}")
    if m.backbone != "cnn" and d.image_size % 14:
        _bad("data.image_size", d.image_size, f"a multiple of 14 for the ViT/14 backbone {m.backbone} (e.g. 224, 126)")
    if m.backbone == "cnn" and d.image_size % 8:
        _bad("data.image_size", d.image_size, "a multiple of 8 for the CNN backbone (e.g. 128)")
    for key, v in (("data.train_split", d.train_split), ("data.val_split", d.val_split), ("data.test_split", d.test_split)):
        if v not in SPLITS:
            _bad(key, v, f"one of {', '.join(SPLITS)}")
    if t.scheduler not in ("cosine", "constant"):
        _bad("training.scheduler", t.scheduler, "'cosine' (warm restarts) or 'constant'")
    if t.T_mult < 1:
        _bad("training.T_mult", t.T_mult, "a value >= 1")
    if not 0 <= t.ema_decay < 1:
        _bad("training.ema_decay", t.ema_decay, "a value in [0, 1)")
    if not 0 <= cfg.optimizations.memory.checkpoint_ratio <= 1:
        _bad("optimizations.memory.checkpoint_ratio", cfg.optimizations.memory.checkpoint_ratio, "a value in [0, 1]")
    if cfg.optimizations.compile_mode not in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
        _bad("optimizations.compile_mode", cfg.optimizations.compile_mode, "a torch.compile mode")
    for i, st in enumerate(cfg.stages):
        if st.epochs <= 0:
            _bad(f"stages[{i}].epochs", st.epochs, "a positive integer")
        if st.lr_scale <= 0:
            _bad(f"stages[{i}].lr_scale", st.lr_scale, "a positive number")
        if st.freeze_all_except is not None and len(st.freeze_all_except) == 0:
            _bad(f"stages[{i}].freeze_all_except", [], "at least one component (or leave it out: train everything)")
        for n in st.freeze_all_except or []:
            if n not in COMPONENTS:
                _bad(f"stages[{i}].freeze_all_except", n, f"names from {COMPONENTS}")
        for k in st.loss_weights:
            if k not in vars(cfg.loss_weights):
                _bad(f"stages[{i}].loss_weights", k, f"keys from {sorted(vars(cfg.loss_weights))}")


def check_stage_epochs(cfg) -> None:
    """Stages must cover the run. Checked once all files, flags and --set overrides are applied (not per
    override: ``--set training.num_epochs=10 --set stages=[]`` must work in either order)."""
    if cfg.stages and sum(s.epochs for s in cfg.stages) != cfg.training.num_epochs:
        _bad("stages", [s.epochs for s in cfg.stages],
             f"stage epochs summing to training.num_epochs={cfg.training.num_epochs} (set stages=[...] to match, "
             f"or stages=[] for no stage schedule)")


def resolve_config_path(path: str | None) -> str | None:
    """A file path as given, else a shipped config: ``configs/cpu.yaml``, ``cpu.yaml`` or ``cpu``."""
    if path is None or Path(path).is_file():
        return path
    name = Path(path).name
    if not name.endswith((".yaml", ".yml")):
        name += ".yaml"
    shipped = Path(str(resources.files("amt") / "configs" / name))
    if shipped.is_file():
        return str(shipped)
    raise UserError("config file not found", path,
                    f"a YAML file, or a shipped config: {', '.join(shipped_configs())}")


def shipped_configs() -> list[str]:
    return sorted(f"configs/{p.name}" for p in Path(str(resources.files("amt") / "configs")).glob("*.yaml"))


# click parameter name -> dotted key, for the typed flags of `amt train` / `amt evaluate`.
TRAIN_FLAGS = {"data_root": "data.root", "device": "training.device", "seed": "training.seed",
               "quiet": "training.quiet", "resume": "training.resume", "output_dir": "output_dir",
               "experiment_name": "experiment_name"}
