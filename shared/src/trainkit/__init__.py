"""trainkit: thin, composable helpers that the five training packages' loops call.

Nothing here owns a loop or knows a model: config, errors, device/AMP, optimizer step, EMA,
checkpoints, tracking, distributed and progress helpers.
"""
from .checkpoint import (CheckpointManager, capture_rng_state, load_checkpoint, restore_rng_state,
                         restore_training_state, save_checkpoint, training_state, unwrap_model)
from .cli import common_options, prepare_run_dir
from .data import ResumableSampler
from .config import config_from_dict, config_to_dict, explicit_cli_values, load_config, save_config
from .device import (autocast, check_precision, make_generator, make_grad_scaler, resolve_device, seed_everything,
                     set_tf32)
from .distributed import (DistInfo, GracefulStop, all_reduce_mean, barrier, cleanup, init_distributed,
                          is_main_process, make_sampler, seed_rank_streams, wrap_ddp)
from .ema import EMA
from .errors import UserError, handle_user_errors
from .progress import progress
from .step import OptimizerStep, StepOutcome
from .tracking import Tracker

__all__ = [
    "CheckpointManager", "capture_rng_state", "load_checkpoint", "restore_rng_state", "restore_training_state",
    "save_checkpoint", "training_state", "unwrap_model", "common_options", "prepare_run_dir", "config_from_dict",
    "config_to_dict", "explicit_cli_values", "load_config", "save_config", "autocast", "check_precision",
    "make_generator", "make_grad_scaler", "resolve_device", "seed_everything", "set_tf32", "DistInfo", "GracefulStop",
    "all_reduce_mean", "barrier", "cleanup", "init_distributed", "is_main_process", "make_sampler", "seed_rank_streams", "wrap_ddp",
    "ResumableSampler", "EMA", "UserError", "handle_user_errors", "progress", "OptimizerStep", "StepOutcome", "Tracker",
]
