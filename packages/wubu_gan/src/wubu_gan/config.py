"""Typed configuration: one flat dataclass whose keys are the original script's argparse names.

Every argument of ``WuBuGAADHybridGen_v0.1.py`` is a field with the same name and default, so the launch
scripts' variables map one to one onto ``wubu-gan train`` flags; a few fields after ``# ---- ours`` are
additions (device, optimizer, resume...). Precedence: defaults < ``--config`` YAML < flags < ``--set``.
Shipped phase files live in ``configs/`` (package data) and can be named without a path (``--config phase2a``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from trainkit.errors import UserError

DEMO_DIR = "demo_video_data_dir"
PHASES = ("phase1", "phase2a", "phase2b", "phase2c", "phase3", "phase4")
FLOW_STATS = ("mag_mean", "angle_mean", "mag_std", "angle_std")
VAL_METRICS = ("avg_val_psnr", "avg_val_ssim", "avg_val_lpips", "avg_val_recon_mse")


@dataclass
class TrainConfig:
    # ---- data and run (original names and defaults)
    video_data_path: str = DEMO_DIR
    local_rank: int = -1                  # accepted for launch-script compatibility; torchrun's env decides
    epochs: int = 100
    batch_size: int = 4                   # global batch, divided over DDP ranks
    image_h: int = 64
    image_w: int = 64
    num_channels: int = 3
    num_input_frames: int = 3
    num_predict_frames: int = 1
    frame_skip: int = 1
    seed: int = 42
    num_workers: int = 2
    checkpoint_dir: str = "wubugaad_hybridgen_checkpoints_v01"
    load_checkpoint: str | None = None
    load_strict: bool = False
    wandb: bool = False
    wandb_project: str = "WuBuGAADHybridGenV01"
    wandb_run_name: str | None = None
    log_interval: int = 50
    save_interval: int = 1000
    # ---- GAAD
    gaad_num_regions: int = 12
    gaad_decomposition_type: str = "hybrid"
    gaad_min_size_px: int = 4
    # ---- motion branch
    use_wubu_motion_branch: bool = False
    gaad_motion_num_regions: int = 8
    gaad_motion_decomposition_type: str = "hybrid"
    optical_flow_net_type: str = "raft_small"
    freeze_flow_net: bool = False
    flow_stats_components: list[str] = field(default_factory=lambda: ["mag_mean", "angle_mean"])
    # ---- encoder
    latent_dim: int = 256
    encoder_use_roi_align: bool = False
    encoder_shallow_cnn_channels: int = 32
    encoder_roi_align_output_h: int = 4
    encoder_roi_align_output_w: int = 4
    encoder_pixel_patch_size: int = 16
    encoder_initial_tangent_dim: int = 128
    # ---- generator
    gen_temporal_kernel_size: int = 3
    gen_final_conv_kernel_spatial: int = 3
    # ---- discriminator
    discriminator_type: str = "spatio_temporal_cnn"
    disc_apply_spectral_norm: bool = False
    disc_base_disc_channels: int = 64
    disc_max_disc_channels: int = 512
    disc_temporal_kernel_size: int = 3
    disc_min_hidden_fc_dim: int = 128
    disc_max_hidden_fc_dim: int = 512
    disc_use_gaad_film_condition: bool = False
    disc_gaad_condition_dim_disc: int = 64
    disc_patch_size: int = 16
    disc_cnn_channels_2d: list[int] = field(default_factory=lambda: [64, 128, 256])
    # ---- WuBu stacks
    wubu_dropout: float = 0.1
    wubu_s_num_levels: int = 2
    wubu_s_hyperbolic_dims: list[int] = field(default_factory=lambda: [64, 32])
    wubu_s_initial_curvatures: list[float] = field(default_factory=lambda: [1.0, 0.8])
    wubu_s_use_rotation: bool = False
    wubu_s_phi_influence_curvature: bool = False
    wubu_s_phi_influence_rotation_init: bool = False
    wubu_s_output_dim: int = 32           # as in the original: forced to the last S level's dim
    wubu_m_num_levels: int = 1
    wubu_m_hyperbolic_dims: list[int] = field(default_factory=lambda: [32])
    wubu_m_initial_curvatures: list[float] = field(default_factory=lambda: [0.7])
    wubu_m_use_rotation: bool = False
    wubu_m_phi_influence_curvature: bool = False
    wubu_m_phi_influence_rotation_init: bool = False
    wubu_m_output_dim: int = 32           # forced to the last M level's dim
    wubu_t_num_levels: int = 1
    wubu_t_hyperbolic_dims: list[int] = field(default_factory=lambda: [128])
    wubu_t_initial_curvatures: list[float] = field(default_factory=lambda: [0.5])
    wubu_t_use_rotation: bool = False
    wubu_t_phi_influence_curvature: bool = False
    wubu_t_phi_influence_rotation_init: bool = False
    # ---- training
    lambda_recon: float = 10.0
    lambda_kl: float = 0.1
    lambda_gan: float = 1.0
    learning_rate_gen: float = 1e-4
    learning_rate_disc: float = 1e-4
    risgd_max_grad_norm: float = 1.0      # per-tensor gradient clip inside the optimizer step
    global_max_grad_norm: float = 5.0     # per-network total-norm clip
    grad_accum_steps: int = 1
    q_controller_enabled: bool = False
    use_amp: bool = False
    detect_anomaly: bool = False
    log_grad_norm: bool = False
    lambda_kl_update_interval: int = 2    # 0 turns the lambda_KL controller off
    min_lambda_kl_q_control: float = 1e-6
    max_lambda_kl_q_control: float = 0.5
    # ---- validation and logging
    wandb_log_train_recon_interval: int = 0
    wandb_log_fixed_noise_samples_interval: int = 0
    use_lpips_for_verification: bool = False
    validation_video_path: str | None = None
    validation_split_fraction: float = 0.1
    val_block_size: int = 20
    val_primary_metric: str = "avg_val_psnr"
    num_val_samples_to_log: int = 2
    demo_num_samples: int = 4
    # ---- ours
    optimizer: str = "riemannian_adam"    # or riemannian_sgd (the original's SGD: momentum 0.9, wd 0.01)
    wubu_learnable_curvature: bool = True  # false freezes every level's curvature (ablation of the original)
    gen_ema_decay: float = 0.999          # generator EMA (with warm-up) used for validation/evaluate/sample; 0 = off
    kl_free_bits: float = 0.0             # nats per latent dim the KL term never pushes below (0 = plain KL)
    euclidean: bool = False               # every WuBu stack flat (the c -> 0 limit of the same ops): the geometry ablation
    gen_context_skip: bool = True         # generator sees the last input frame and predicts a residual to it
    gen_context_channels: int = 32        # width of that context feature pyramid
    gen_output: str = "warp"              # with gen_context_skip: warp (last frame moved by a predicted flow, blended
                                          # with an rgb residual by a mask) | residual (rgb residual only)
    disc_output: str = "global"           # patch: one logit per last-layer cell / GAAD region (loss averaged) | global: one per clip
    disc_frame_diff: bool = False         # D also reads each frame minus the previous one (the motion it implies)
    disc_see_context: bool = True         # D scores [input frames, predicted frames] (conditional), not the prediction alone
    keep_last_checkpoints: int = 3        # newest epE_stepN / stepN files kept (0 = all); best is always kept
    augment_flip: bool = False            # training clips mirrored left-right / up-down at random (flow with them)
    augment_color: bool = False           # training clips' RGB channels permuted at random
    lr_decay_fraction: float = 0.0        # last fraction of this run's steps: cosine LR decay to 0.1x (0 = constant, the original)
    lambda_gan_warmup_steps: int = 0      # adversarial weight ramps 0 -> lambda_gan over these optimizer steps
    lambda_gan_adaptive: bool = False     # scale the adversarial term so its gradient at G's last layer is lambda_gan x
                                          # the reconstruction term's (VQGAN's adaptive weight; off = the original's fixed weight)
    flow_fallback: str = "ilk"            # weights-free flow when RAFT weights are not cached: ilk | tvl1
    resume: str | None = None             # continue THIS run: a checkpoint path or "auto" (newest in checkpoint_dir)
    device: str = "auto"
    precision: str | None = None          # fp32 | bf16 | fp16; default: fp32, or with --use_amp fp16 (CUDA) / bf16 (CPU)
    threads: int = 0                      # torch CPU threads; 0 = torch's default
    max_val_clips: int = 64               # validation clips per evaluation (0 = all)
    quiet: bool = False

    def __post_init__(self):
        validate(self)

    @property
    def total_frames(self) -> int:
        return self.num_input_frames + self.num_predict_frames

    def effective_precision(self, device_type: str) -> str:
        if self.precision:
            return self.precision
        if self.use_amp:
            return "fp16" if device_type == "cuda" else "bf16"
        return "fp32"

    def stack(self, name: str) -> dict:
        """Arguments of one WuBu stack (s, m or t), levels taken from num_levels."""
        n = getattr(self, f"wubu_{name}_num_levels")
        dims = list(getattr(self, f"wubu_{name}_hyperbolic_dims"))[:n]
        curv = list(getattr(self, f"wubu_{name}_initial_curvatures"))
        curv = (curv + [curv[-1]] * n)[:n]
        return {"dims": dims, "curvatures": curv, "use_rotation": getattr(self, f"wubu_{name}_use_rotation"),
                "phi_curvature": getattr(self, f"wubu_{name}_phi_influence_curvature"),
                "phi_rotation": getattr(self, f"wubu_{name}_phi_influence_rotation_init"),
                "dropout": self.wubu_dropout, "learnable_curvature": self.wubu_learnable_curvature,
                "euclidean": self.euclidean}


# Keys that define the model's shape or the data: changing them on --resume changes what the run is.
RUN_DEFINING = ("video_data_path", "validation_video_path", "image_h", "image_w", "num_channels", "num_input_frames",
                "num_predict_frames", "frame_skip", "latent_dim", "gaad_num_regions", "gaad_decomposition_type",
                "use_wubu_motion_branch", "gaad_motion_num_regions", "encoder_use_roi_align",
                "encoder_initial_tangent_dim", "discriminator_type", "disc_use_gaad_film_condition",
                "disc_apply_spectral_norm", "wubu_s_num_levels", "wubu_s_hyperbolic_dims", "wubu_m_num_levels",
                "wubu_m_hyperbolic_dims", "wubu_t_num_levels", "wubu_t_hyperbolic_dims", "epochs", "gen_context_skip",
                "gen_context_channels", "gen_output", "disc_output", "disc_frame_diff", "disc_see_context", "lr_decay_fraction", "lambda_gan_warmup_steps",
                "lambda_gan_adaptive", "augment_flip", "augment_color", "euclidean", "validation_split_fraction", "val_block_size", "seed", "batch_size", "grad_accum_steps",
                "optimizer")  # Adam's moment state loaded into SGD (audit M3): a new optimizer is a new phase


def _fail(key, value, expected):
    raise UserError(f"{key}={value!r}", f"--{key}", expected)


def validate(c: TrainConfig) -> None:
    positive = ("epochs", "batch_size", "image_h", "image_w", "num_channels", "num_input_frames", "num_predict_frames",
                "frame_skip", "log_interval", "save_interval", "gaad_num_regions", "gaad_motion_num_regions",
                "latent_dim", "encoder_shallow_cnn_channels", "encoder_roi_align_output_h",
                "encoder_roi_align_output_w", "encoder_pixel_patch_size", "encoder_initial_tangent_dim",
                "gen_temporal_kernel_size", "gen_final_conv_kernel_spatial", "disc_base_disc_channels",
                "disc_max_disc_channels", "disc_temporal_kernel_size", "disc_min_hidden_fc_dim",
                "disc_max_hidden_fc_dim", "disc_gaad_condition_dim_disc", "disc_patch_size", "wubu_s_num_levels",
                "wubu_m_num_levels", "wubu_t_num_levels", "learning_rate_gen", "learning_rate_disc",
                "grad_accum_steps", "val_block_size", "demo_num_samples", "lambda_recon", "gen_context_channels")
    for key in positive:
        if getattr(c, key) <= 0:
            _fail(key, getattr(c, key), "a positive number")
    for key in ("num_workers", "lambda_kl", "lambda_gan", "risgd_max_grad_norm", "global_max_grad_norm",
                "lambda_kl_update_interval", "wandb_log_train_recon_interval", "wandb_log_fixed_noise_samples_interval",
                "num_val_samples_to_log", "threads", "max_val_clips", "gaad_min_size_px", "lambda_gan_warmup_steps",
                "keep_last_checkpoints", "kl_free_bits", "gen_ema_decay"):
        if getattr(c, key) < 0:
            _fail(key, getattr(c, key), "a value >= 0")
    if not 0 <= c.gen_ema_decay < 1:
        _fail("gen_ema_decay", c.gen_ema_decay, "0 (off) or a decay in (0, 1)")
    if not 0 < c.min_lambda_kl_q_control <= c.max_lambda_kl_q_control:
        _fail("min_lambda_kl_q_control", c.min_lambda_kl_q_control, "0 < min_lambda_kl_q_control <= max_lambda_kl_q_control")
    if not 0.0 <= c.wubu_dropout < 1.0:
        _fail("wubu_dropout", c.wubu_dropout, "a value in [0, 1)")
    if not 0.0 <= c.lr_decay_fraction <= 1.0:
        _fail("lr_decay_fraction", c.lr_decay_fraction, "a fraction in [0, 1]")
    if not 0.0 < c.validation_split_fraction < 1.0:
        _fail("validation_split_fraction", c.validation_split_fraction, "a value in (0, 1)")
    choices = {"gaad_decomposition_type": ("hybrid", "spiral", "subdivide"),
               "gaad_motion_decomposition_type": ("hybrid", "spiral", "subdivide"),
               "optical_flow_net_type": ("raft_small", "raft_large"),
               "discriminator_type": ("spatio_temporal_cnn", "regional_cnn"),
               "val_primary_metric": VAL_METRICS, "optimizer": ("riemannian_adam", "riemannian_sgd"),
               "flow_fallback": ("ilk", "tvl1"), "gen_output": ("warp", "residual"),
               "disc_output": ("patch", "global")}
    for key, allowed in choices.items():
        if getattr(c, key) not in allowed:
            _fail(key, getattr(c, key), f"one of {', '.join(allowed)}")
    if c.precision is not None and c.precision not in ("fp32", "bf16", "fp16"):
        _fail("precision", c.precision, "fp32, bf16 or fp16")
    if not c.flow_stats_components or any(s not in FLOW_STATS for s in c.flow_stats_components):
        _fail("flow_stats_components", c.flow_stats_components, f"one or more of {', '.join(FLOW_STATS)}")
    for name in "smt":
        n = getattr(c, f"wubu_{name}_num_levels")
        dims = getattr(c, f"wubu_{name}_hyperbolic_dims")
        curv = getattr(c, f"wubu_{name}_initial_curvatures")
        if len(dims) < n or any(d <= 0 for d in dims):
            _fail(f"wubu_{name}_hyperbolic_dims", dims, f"at least wubu_{name}_num_levels={n} positive sizes")
        if not curv or any(v <= 0 for v in curv):
            _fail(f"wubu_{name}_initial_curvatures", curv, "positive curvatures")
    if not c.disc_cnn_channels_2d or any(v <= 0 for v in c.disc_cnn_channels_2d):
        _fail("disc_cnn_channels_2d", c.disc_cnn_channels_2d, "positive channel counts")
    if c.gen_temporal_kernel_size % 2 == 0:  # 'same' temporal padding (k // 2) keeps the frame count only for odd k
        _fail("gen_temporal_kernel_size", c.gen_temporal_kernel_size, "an odd size (1, 3, 5, ...)")
    if c.num_channels != 3:  # accepted for launch-script compatibility; videos are decoded as RGB
        _fail("num_channels", c.num_channels, "3 (videos are decoded as RGB)")
    if min(c.image_h, c.image_w) < 8:
        _fail("image_h", min(c.image_h, c.image_w), "frames of at least 8x8 pixels")


def resolve_config_path(name_or_path: str | None) -> Path | None:
    """``--config`` takes a file path or the name of a shipped phase config (``phase1`` ... ``phase4``)."""
    if name_or_path is None:
        return None
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    shipped = Path(str(resources.files("wubu_gan") / "configs" / f"{stem}.yaml"))
    if shipped.is_file() and str(path.parent) in (".", ""):
        return shipped
    raise UserError("config file not found", f"--config {name_or_path}",
                    f"a YAML file, or a shipped config name: {', '.join(('cpu',) + PHASES)}")


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))
