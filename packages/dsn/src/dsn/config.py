"""Typed configs: the model's architecture (``DSNConfig``) and a training run (``TrainConfig``).

``DSNConfig`` is what the guide stores under ``checkpoint["config"]`` (as a plain dict, so that
``torch.load`` with ``weights_only=True`` can read it); ``TrainConfig`` holds everything else a run needs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from trainkit.errors import UserError

ModelType = Literal["baseline", "advanced"]
PosEncoding = Literal["sinusoidal", "learned", "none"]


@dataclass
class DSNConfig:
    """Architecture of a policy network (baseline BiLSTM or the advanced attention/multi-scale model)."""

    model_type: ModelType = "advanced"
    # Feature dimension; 0 means "take it from the dataset" (train fills it in before building the model).
    in_dim: int = 0
    # Baseline: LSTM hidden size per direction. Advanced: the model width (d_model).
    enc_hidden: int = 256
    num_attn_heads: int = 4
    # 0 disables self-attention (the ablation's "multi-scale only").
    num_attn_layers: int = 2
    # 1 means a single temporal resolution (no multi-scale).
    num_scales: int = 3
    pos_encoding_type: PosEncoding = "sinusoidal"
    # Amplitude of the sinusoidal encoding. At 1 (the Transformer's usual choice) its std (0.63) is 2.6x
    # the frame-to-frame variation of the fused content (0.24 at init), so attention and the head saw
    # mostly position. 0.1 was best of {1, 0.4, 0.2, 0.1} on a validation carve-out (README "Positional encoding scale").
    pos_scale: float = 0.1
    use_lstm_in_advanced: bool = False
    ffn_mult: int = 4
    dropout: float = 0.0
    # Longest sequence a learned positional table covers.
    max_len: int = 4096

    def __post_init__(self):
        if self.in_dim < 0:
            raise UserError(f"bad in_dim {self.in_dim}", "model.in_dim", "expected >= 0")
        if self.enc_hidden < 2:
            raise UserError(f"bad enc_hidden {self.enc_hidden}", "--enc_hidden", "expected an int >= 2")
        if self.num_scales < 1:
            raise UserError(f"bad num_scales {self.num_scales}", "--num_scales", "expected an int >= 1")
        if self.num_attn_layers < 0:
            raise UserError(f"bad num_attn_layers {self.num_attn_layers}", "--num_attn_layers", "expected an int >= 0")
        # Heads must divide the width only where attention exists: the baseline has none (issue 13 item 11:
        # `--model_type baseline --enc_hidden 18` was refused over the unused default of 4 heads).
        attention = self.model_type == "advanced" and self.num_attn_layers > 0
        if self.num_attn_heads < 1 or (attention and self.enc_hidden % self.num_attn_heads):
            raise UserError(
                f"bad num_attn_heads {self.num_attn_heads}",
                "--num_attn_heads",
                f"expected a positive divisor of enc_hidden={self.enc_hidden}",
            )
        if self.model_type == "advanced" and self.use_lstm_in_advanced and self.enc_hidden % 2:
            raise UserError(f"bad enc_hidden {self.enc_hidden}", "--enc_hidden", "expected an even number with --use_lstm_in_advanced 1")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"bad dropout {self.dropout}", "model.dropout", "expected 0 <= dropout < 1")
        if not self.pos_scale >= 0:
            raise UserError(f"bad pos_scale {self.pos_scale}", "model.pos_scale", "expected a float >= 0")
        if self.max_len < 1 or self.ffn_mult < 1:
            raise UserError("bad max_len/ffn_mult", "model", "expected positive ints")

    @classmethod
    def from_any(cls, config: "DSNConfig | Mapping[str, Any]") -> "DSNConfig":
        """Accept a DSNConfig or the plain dict stored in a checkpoint."""
        if isinstance(config, cls):
            return config
        if isinstance(config, Mapping):
            from trainkit.config import config_from_dict

            config = dict(config)
            # Checkpoints saved before pos_scale existed were trained with the unscaled encoding.
            config.setdefault("pos_scale", 1.0)
            return config_from_dict(cls, config, where="DSNConfig")
        raise TypeError(f"expected DSNConfig or dict, got {type(config).__name__}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainConfig:
    """A training run. Field names follow the guide's flags (``--budget_ratio`` -> ``budget_ratio``)."""

    model: DSNConfig = field(default_factory=DSNConfig)
    # None: build/use the default synthetic dataset in the cache folder.
    dataset_root: str | None = None
    save_dir: str = "runs/dsn"
    split_index: int = 0
    epochs: int = 20
    lr: float = 1e-4
    weight_decay: float = 1e-5
    # Videos per optimizer step (padded and masked). The original DSN uses one.
    batch_size: int = 1
    # 32 episodes (the original used 5): the policy forward/backward runs once per video whatever N is, and
    # with 5 the gradient was mostly noise (README "Why a run could end with negative tau").
    num_episodes: int = 32
    # Target fraction of steps picked as keyframes; also the inference top-k budget.
    budget_ratio: float = 0.06
    # Weight of the length regulariser beta * (mean p - budget_ratio)^2. See README "Budget" for the tuning.
    budget_beta: float = 10.0
    baseline_momentum: float = 0.9
    # REINFORCE baseline: "moving_average" (original DSN, b <- m*b + (1-m)*mean R per video) or "episodes"
    # (leave-one-out mean of the step's other episodes); see train.reward_advantage.
    reward_baseline: Literal["moving_average", "episodes"] = "episodes"
    advantage_norm: bool = True
    entropy_coef: float = 0.0
    grad_clip: float = 5.0
    # Reward: temporal cutoff lambda (steps) and whether representativeness uses squared distances.
    temporal_cutoff: int = 20
    rep_squared: bool = True
    use_cache: bool = True
    cache_size: int = 1000
    # F-score protocol: knapsack proportion and how users are combined ("max" SumMe-style, "avg" TVSum-style).
    summary_proportion: float = 0.15
    f_mode: Literal["max", "avg"] = "avg"
    # Inference keyframes: greedy by score with temporal suppression ("nms"), or plain "topk".
    keyframe_selection: Literal["nms", "topk"] = "nms"
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 1
    # torch intra-op threads when training on CPU (0 = torch's default). These models run many small
    # per-video ops, which thread synchronisation slows down: on a 2-core machine the default 20-epoch
    # run took 241 s with torch's default and 60 s with 1 thread.
    cpu_threads: int = 1
    keep_last: int = 3
    # Checkpoint selection: this fraction of the split's training videos is held out (never trained on) and
    # scored after every epoch; best.pt is the best epoch by select_metric ("auto": per-annotator Kendall tau
    # when annotated, else the DSN reward of the inference keyframes; or "kendall_tau", "F", "reward").
    # 0 keeps the last epoch. The test videos are never used to choose.
    select_fraction: float = 0.2
    select_metric: Literal["auto", "kendall_tau", "F", "reward"] = "auto"
    # Validate on the test videos every N epochs (0 = never; monitoring only); MS-SWD can be switched off.
    eval_every: int = 1
    eval_ms_swd: bool = True
    quiet: bool = False
    wandb_project: str | None = None

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any], where: str = "checkpoint") -> "TrainConfig":
        """A checkpoint's ``train_config`` dict as a TrainConfig. Keys added since it was written get the value
        that checkpoint was trained with (not today's default), so a resumed old run keeps its behaviour."""
        from trainkit.config import config_from_dict

        data = dict(saved)
        for key, value in LEGACY_TRAIN_VALUES.items():
            data.setdefault(key, value)
        data["model"] = dict(data.get("model") or {})
        data["model"].setdefault("pos_scale", 1.0)
        return config_from_dict(cls, data, where=where)

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, "--epochs", self.epochs, "expected an int >= 1"),
            (self.lr > 0, "--lr", self.lr, "expected a positive float"),
            (self.batch_size >= 1, "batch_size", self.batch_size, "expected an int >= 1"),
            (self.num_episodes >= 1, "--num_episodes", self.num_episodes, "expected an int >= 1"),
            (0 < self.budget_ratio < 1, "--budget_ratio", self.budget_ratio, "expected 0 < ratio < 1"),
            (self.budget_beta >= 0, "budget_beta", self.budget_beta, "expected >= 0"),
            (0 <= self.baseline_momentum < 1, "baseline_momentum", self.baseline_momentum, "expected 0 <= m < 1"),
            (self.grad_clip > 0, "grad_clip", self.grad_clip, "expected > 0"),
            (self.temporal_cutoff >= 0, "temporal_cutoff", self.temporal_cutoff, "expected >= 0"),
            (self.cache_size >= 1, "--cache_size", self.cache_size, "expected an int >= 1"),
            (self.split_index >= 0, "--split_index", self.split_index, "expected an int >= 0"),
            (0 < self.summary_proportion < 1, "summary_proportion", self.summary_proportion, "expected 0 < p < 1"),
            (self.keep_last >= 1, "keep_last", self.keep_last, "expected >= 1"),
            (self.cpu_threads >= 0, "cpu_threads", self.cpu_threads, "expected >= 0 (0 = torch's default)"),
            (self.eval_every >= 0, "eval_every", self.eval_every, "expected >= 0"),
            (0 <= self.select_fraction < 1, "select_fraction", self.select_fraction, "expected 0 <= fraction < 1"),
        ]
        for ok, where, value, expected in checks:
            if not ok:
                raise UserError(f"bad value {value!r}", where, expected)


# Settings a resumed run may change: how long it runs, where/how it computes, what it logs. Everything else
# (data, split, model, optimiser, reward, seed, evaluation protocol) defines the run and is refused on resume
# unless --allow_config_change (issue 13 item 2).
RESUME_MAY_CHANGE = ("epochs", "save_dir", "device", "precision", "cpu_threads", "quiet", "wandb_project",
                     "keep_last", "use_cache", "cache_size", "eval_every", "eval_ms_swd")
RUN_DEFINING = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in RESUME_MAY_CHANGE)

# What runs saved before a TrainConfig key existed were trained with.
LEGACY_TRAIN_VALUES: dict[str, Any] = {"reward_baseline": "moving_average", "advantage_norm": False, "num_episodes": 5,
                                       "select_fraction": 0.0, "select_metric": "auto"}
