import numpy as np
import pytest
import torch
from PIL import Image

import json

from scipy.io import savemat

from amt.data import SERIALS, SUBJECTS, project, write_intrinsics, write_labels, write_meta
from amt.synthetic import hand_joints


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


# ---------------------------------------------------------------- real-hand layouts (tiny folders made from synthetic hands)

K_FULL_FRAME = np.array([[900.0, 0, 640.0], [0, 910.0, 360.0], [0, 0, 1]])


def posed_hands(n, seed=0, mirror=False):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        J = hand_joints(rng) * ([-1, 1, 1] if mirror else 1)
        out.append(J @ np.diag([1.0, -1.0, -1.0]) + [rng.uniform(-0.05, 0.05), 0.0, 0.45])  # palm towards camera
    return np.stack(out)


def _make_hand_crops(root, n=6, size=64, seed=0, mirror=False):
    """Ge et al.'s layout: images/NNNNN.jpg square crops, pose_gt.mat (cm), params.mat (full-frame K, bbox)."""
    (root / "images").mkdir(parents=True)
    J = posed_hands(n, seed, mirror)
    bbox = []
    for i, j in enumerate(J):
        uv = project(K_FULL_FRAME, j)
        c, w = (uv.min(0) + uv.max(0)) / 2, int((uv.max(0) - uv.min(0)).max() * 1.6)
        x, y = int(c[0] - w / 2), int(c[1] - w / 2)
        bbox.append([x, y, w, w])
        Image.new("RGB", (size, size), (120 + 10 * i, 90, 80)).save(root / "images" / f"{i:05d}.jpg")
    cam = np.tile([K_FULL_FRAME[0, 0], K_FULL_FRAME[1, 1], K_FULL_FRAME[0, 2], K_FULL_FRAME[1, 2]], (n, 1))
    savemat(root / "pose_gt.mat", {"pose_gt": (J * 100).astype(np.float32)})
    savemat(root / "params.mat", {"cam_param": cam, "bbox": np.array(bbox, np.int32)})
    return root, J, np.array(bbox, float)


def _make_freihand(root, n=3, copies=2, size=64, seed=1):
    """FreiHAND's public layout: training_xyz.json, training_K.json, training/rgb/%08d.jpg (copies x n images)."""
    (root / "training" / "rgb").mkdir(parents=True)
    J = posed_hands(n, seed)
    K = [[[250.0, 0, size / 2], [0, 250.0, size / 2], [0, 0, 1]] for _ in range(n)]
    (root / "training_xyz.json").write_text(json.dumps(J.tolist()))
    (root / "training_K.json").write_text(json.dumps(K))
    for i in range(n * copies):
        Image.new("RGB", (size, size), (100, 80 + 20 * i, 70)).save(root / "training" / "rgb" / f"{i:08d}.jpg")
    return root, J, np.array(K)


@pytest.fixture
def make_hand_crops():
    """(root, n=6, size=64, seed=0, mirror=False) -> (root, joints [n,21,3] m, bbox [n,4]) in Ge et al.'s layout."""
    return _make_hand_crops


@pytest.fixture
def make_freihand():
    """(root, n=3, copies=2, size=64, seed=1) -> (root, joints, K) in FreiHAND's public layout."""
    return _make_freihand


@pytest.fixture
def k_full_frame():
    return K_FULL_FRAME
