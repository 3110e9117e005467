import numpy as np
import pytest
import torch

# The machine is shared; one thread keeps the suite predictable and leaves cores for others.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """The guide's test_data_mini: 10 train / 5 val sequences in the real on-disk format."""
    from action_ddim.augmentation import generate_click_dataset

    root = tmp_path_factory.mktemp("test_data_mini")
    generate_click_dataset(root, num_train=10, num_val=5, seq_len=64, seed=0)
    return root


def write_actions(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(arr, dtype=np.float32))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """An untrained d16/L1 checkpoint in `action-ddim train`'s format (no training: milliseconds)."""
    from action_ddim.config import Config
    from action_ddim.data import Normalizer
    from action_ddim.train import build_model
    from trainkit.checkpoint import save_checkpoint, training_state
    from trainkit.config import config_to_dict

    cfg = Config()
    cfg.model.d_model, cfg.model.nhead, cfg.model.num_layers = 16, 2, 1
    cfg.diffusion.num_inference_steps, cfg.train.num_gen_samples = 3, 4
    torch.manual_seed(0)
    payload = training_state(model=build_model(cfg, 64), config=config_to_dict(cfg),
                             extra={"normalizer": Normalizer().to_dict(), "seq_len": 64})
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", payload)
