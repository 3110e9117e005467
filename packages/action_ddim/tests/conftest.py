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
