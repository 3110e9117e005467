"""DSN: unsupervised keyframe selection with REINFORCE (a BiLSTM baseline and an advanced model).

``from dsn import DSNAdvanced, DSNConfig`` as in the guide; checkpoints hold ``config`` as a plain dict,
which ``DSNAdvanced`` accepts directly.
"""
from .config import DSNConfig, TrainConfig
from .model import DSNAdvanced, DSNBaseline, build_model, count_parameters

__all__ = ["DSNAdvanced", "DSNBaseline", "DSNConfig", "TrainConfig", "build_model", "count_parameters"]
__version__ = "0.1.0"
