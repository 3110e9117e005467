"""Real-hand layouts (hand crops, FreiHAND) on tiny fixtures made here from synthetic hands, and the real dev
block when present."""
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from amt.baselines import handedness
from amt.data import HandCropDataset, project
from amt.realdata import FreiHANDIndex, HandCropsIndex, detect_layout, make_index
from trainkit.errors import UserError


REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "realdata" / "hands" / "real_world_testset_dev"


def test_hand_crops_layout_reads_cm_joints_and_crop_intrinsics(tmp_path, make_hand_crops, k_full_frame):
    root, J, bbox = make_hand_crops(tmp_path / "crops", n=6, size=64)
    assert detect_layout(root) == "hand_crops" and detect_layout(tmp_path) == "dexycb"
    idx = make_index(root, "s0_test")
    assert isinstance(idx, HandCropsIndex) and len(idx) == 6 and [f.tk_index for f in idx.frames] == list(range(6))
    for f in idx.frames:
        lab = idx.read(f)
        assert np.allclose(lab["joint_3d"], J[f.tk_index], atol=1e-6)        # cm on disk -> metres
        # the crop's K maps joints to where the full frame's K puts them, shifted by the box and scaled to 64 px
        x, y, w, _ = bbox[f.tk_index]
        expect = (project(k_full_frame, J[f.tk_index]) - [x, y]) * 64 / w
        assert np.allclose(lab["joint_2d"], expect, atol=1e-3)
        assert (lab["joint_2d"] > 0).all() and (lab["joint_2d"] < 64).all()
    assert len(make_index(root, "s0_train")) == 5 and len(make_index(root, "s0_val")) == 1


def test_handedness_comes_from_geometry_not_names(tmp_path, make_hand_crops):
    right, _, _ = make_hand_crops(tmp_path / "r", n=4, mirror=True)     # the v2 generator's hands mirrored = right
    left, _, _ = make_hand_crops(tmp_path / "l", n=4, mirror=False)
    assert {f.mano_side for f in make_index(right, "s0_test").frames} == {"right"}
    assert {f.mano_side for f in make_index(left, "s0_test").frames} == {"left"}
    # a model trained on left-bending hands (right_sign -1) sees those unmirrored
    assert {f.mano_side for f in make_index(left, "s0_test", right_sign=-1).frames} == {"right"}
    ds = HandCropDataset(make_index(left, "s0_test"), 32)
    item = ds[0]
    assert float(item["T"][0, 0]) == -1.0                                   # mirrored for the model


def test_hand_crops_bad_input_is_one_line_error(tmp_path, make_hand_crops):
    root, J, _ = make_hand_crops(tmp_path / "c", n=4)
    savemat(root / "pose_gt.mat", {"pose_gt": np.zeros((3, 21, 3), np.float32)})
    with pytest.raises(UserError, match="4 images but 3 poses"):
        make_index(root, "s0_test")
    savemat(root / "pose_gt.mat", {"other": np.zeros(3)})
    with pytest.raises(UserError, match="lacks 'pose_gt'"):
        make_index(root, "s0_test")


def test_freihand_layout_with_the_releases_extra_colourings(tmp_path, make_freihand):
    root, J, K = make_freihand(tmp_path / "frei", n=3, copies=2)
    assert detect_layout(root) == "freihand"
    idx = make_index(root, "s0_test")
    assert isinstance(idx, FreiHANDIndex) and len(idx) == 6
    for f in idx.frames:
        lab = idx.read(f)
        assert np.allclose(lab["joint_3d"], J[f.tk_index % 3])             # image i uses label i mod N
        assert np.allclose(lab["joint_2d"], project(K[f.tk_index % 3], J[f.tk_index % 3]))
    (root / "training_K.json").write_text("[[1, 2]]")
    with pytest.raises(UserError, match="training_K.json"):
        make_index(root, "s0_test")


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/realdata/hands/real_world_testset_dev is absent")
def test_real_dev_block_is_left_handed_and_its_joints_project_into_the_crops():
    idx = make_index(REAL, "s0_test")
    assert len(idx) == 292 and set(handedness(idx.joints)) == {"left"}
    uv = np.stack([idx.read(f)["joint_2d"] for f in idx.frames])
    assert (uv > -10).all() and (uv < 266).all()                          # 256-px crops


def test_predict_uses_the_whole_image_as_the_crop_and_mirrors_about_its_centre():
    from PIL import Image

    from amt.predict import whole_image_sample

    W, H, S = 80, 60, 40
    img = np.zeros((H, W, 3), np.uint8)
    img[20:24, 10:14] = 255                                                   # a bright square near the left
    K = np.array([[100.0, 0, (W - 1) / 2], [0, 100.0, (H - 1) / 2], [0, 0, 1]])
    for mirror in (False, True):
        x, T, Kc, M = whole_image_sample(Image.fromarray(img), K, S, mirror)
        corners = np.array([[0, 0, 1], [W - 1, 0, 1], [0, H - 1, 1], [W - 1, H - 1, 1.0]]) @ M.T
        assert corners[:, :2].min() >= -0.5 - 1e-6 and corners[:, :2].max() <= S - 0.5 + 1e-6  # whole image inside
        bright = np.argwhere(x.numpy().mean(0) > 1.0)                          # crop pixels of the square
        expect = M @ [11.5, 21.5, 1]
        assert np.abs(bright.mean(0)[::-1] - expect[:2]).max() < 1.0
        assert (expect[0] < S / 2) != mirror                                  # mirrored: the square moves right
        X = np.array([0.01, 0.02, 0.5])
        assert np.allclose(M @ (K @ X / X[2]), Kc @ (T @ X) / X[2])           # image map and 3-D map agree
