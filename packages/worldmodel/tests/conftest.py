import os

import pytest
import torch

from trainkit.config import load_config

from worldmodel.config import Config

torch.set_num_threads(1)

TINY = [
    "model.latent_dim=16", "model.hidden_dim=32", "model.encoder.stages=[4,8]", "model.encoder.num_heads=2",
    "model.dynamics.num_layers=1", "model.dynamics.dropout=0.1", "model.decoder.stages=[8,4]",
    "model.decoder.init_size=8", "data.image_size=[32,18]", "data.sequence_length=4", "data.num_workers=0",
    "training.batch_size=4", "training.gradient_accumulation=1", "training.use_amp=false", "training.device=cpu",
    "training.quiet=true", "scheduler.warmup_steps=2", "eval.max_sequences=4", "eval.horizon=2",
    "logging.log_interval=1", "logging.eval_interval=1000", "logging.save_interval=1000", "logging.num_samples=2",
]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WORLDMODEL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """4 synthetic scenes x 12 frames at 32x18 (3 train, 1 val)."""
    from worldmodel.synthetic import generate

    return generate(tmp_path_factory.mktemp("data") / "tiny", num_scenes=4, num_frames=12, image_size=(32, 18),
                    seed=0, val_fraction=0.25)


def tiny_config(data_root, save_dir, *extra) -> Config:
    return load_config(Config, None, [*TINY, f"data.data_root={data_root}", f"training.save_dir={save_dir}", *extra])


@pytest.fixture
def tiny_cfg(tiny_data, tmp_path):
    return lambda *extra: tiny_config(tiny_data, tmp_path / "run", *extra)
