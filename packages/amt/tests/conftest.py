import numpy as np
import pytest
import torch
from PIL import Image

from amt.data import SERIALS, SUBJECTS, project, write_intrinsics, write_labels, write_meta


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small synthetic dataset (10 subjects x 5 sequences x 8 cameras x 2 frames; frame 0 has no hand)."""
    from amt.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("syn") / "dexycb"
    return make_synthetic(root, sequences_per_subject=5, frames_per_sequence=2, seed=0, log=lambda m: None)


K_TEST = np.array([[613.08, 0, 313.03], [0, 612.0, 245.01], [0, 0, 1.0]])


@pytest.fixture
def make_tree():
    return hand_made_tree


@pytest.fixture
def K():
    return K_TEST


def hand_made_tree(root, *, subjects=(0, 2), sequences=5, frames=3, serials=SERIALS[:2], bad=None):
    """A DexYCB tree by hand: frame 0 of every sequence is a no-hand (-1) frame."""
    for s in serials:
        if bad == "no_intrinsics" and s == serials[-1]:
            continue
        write_intrinsics(root, s, K_TEST)
    rng = np.random.default_rng(0)
    for si in subjects:
        for q in range(sequences):
            seq = root / SUBJECTS[si] / f"20200101_{q:06d}"
            write_meta(seq, serials=list(serials), num_frames=frames, ycb_ids=[3], grasp_ind=0,
                       side="left" if q == 1 else "right", calib="x")
            for s in serials:
                (seq / s).mkdir(parents=True)
                for f in range(frames):
                    Image.new("RGB", (640, 480), (90, 90, 90)).save(seq / s / f"color_{f:06d}.jpg")
                    J = np.array([0.0, 0.0, 0.6]) + rng.normal(0, 0.04, (21, 3))
                    pose_y = np.concatenate([np.eye(3), J[8][:, None] + 0.03], 1)[None]
                    if f == 0:
                        write_labels(seq / s / f"labels_{f:06d}.npz", None, None, pose_y)
                    else:
                        write_labels(seq / s / f"labels_{f:06d}.npz", J, project(K_TEST, J), pose_y)
    return root
