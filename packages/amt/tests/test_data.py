import numpy as np
import pytest
import torch
from PIL import Image

from amt.data import (IMAGENET_MEAN, IMAGENET_STD, SERIALS, SUBJECTS, AugmentConfigLike, DexYCBIndex,
                      HandCropDataset, crop_transform, project, write_intrinsics, write_labels, write_meta)
from amt.synthetic import hand_joints
from trainkit.errors import UserError



def test_crop_intrinsics_keep_projections(K):
    K_TEST = K
    rng = np.random.default_rng(0)
    J = hand_joints(rng) + [0.05, -0.02, 0.7]
    for mirror, rot, scale, shift in [(False, 0.0, 1.0, (0, 0)), (True, 0.4, 1.2, (0.1, -0.05))]:
        T, Kc, M = crop_transform(K_TEST, J, 128, mirror=mirror, rotation=rot, scale=scale, shift=shift)
        uv_orig = project(K_TEST, J)
        uv_crop = project(Kc, J @ T.T)
        mapped = (np.c_[uv_orig, np.ones(21)] @ M.T)[:, :2]
        assert np.abs(mapped - uv_crop).max() < 1e-6          # image map and crop camera agree exactly
        assert np.allclose(T @ T.T, np.eye(3)) and np.allclose(Kc[2], [0, 0, 1]) and Kc[1, 0] == 0
        if not (mirror or rot or shift != (0, 0)):
            lo, hi = uv_crop.min(0), uv_crop.max(0)        # x1.5 square box, centred
            assert (hi - lo).max() == pytest.approx(128 / 1.5, rel=1e-6)
            assert ((lo + hi) / 2) == pytest.approx([63.5, 63.5])


def _one_frame_tree(root, J, K_TEST, side="right", dot_joint=8):
    write_intrinsics(root, SERIALS[0], K_TEST)
    seq = root / SUBJECTS[0] / "20200101_000000"
    write_meta(seq, serials=[SERIALS[0]], num_frames=1, ycb_ids=[1], grasp_ind=0, side=side, calib="x")
    (seq / SERIALS[0]).mkdir(parents=True)
    img = np.zeros((480, 640, 3), np.uint8)
    u, v = np.round(project(K_TEST, J[dot_joint])).astype(int)
    img[v - 2:v + 3, u - 2:u + 3] = 255
    Image.fromarray(img).save(seq / SERIALS[0] / "color_000000.jpg", quality=100)
    write_labels(seq / SERIALS[0] / "labels_000000.npz", J, project(K_TEST, J), np.zeros((1, 3, 4)))
    return root


@pytest.mark.parametrize("side", ["right", "left"])
def test_augmentation_moves_image_and_labels_together(tmp_path, side, K):
    rng = np.random.default_rng(3)
    J = hand_joints(rng) * ([-1, 1, 1] if side == "left" else 1) + [0.02, 0.01, 0.55]
    root = _one_frame_tree(tmp_path, J, K, side)
    ds = HandCropDataset(DexYCBIndex(root, "s0_train"), 96, augment=True,
                         aug=AugmentConfigLike(rotation_deg=45, scale=0.2, translation=0.1, color_jitter=0.0))
    errors = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        s = ds[0]
        img = s["image"].numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
        bright = img.mean(-1)
        v, u = np.unravel_index(np.argmax(bright), bright.shape)
        ys, xs = np.nonzero(bright > 0.5 * bright.max())
        centroid = np.array([xs.mean(), ys.mean()])
        errors.append(np.linalg.norm(centroid - s["joints_2d"][8].numpy()))
        # labels agree with each other: crop K projects the sample-frame joints onto joints_2d
        J_s = s["joints_rel"] + s["root"]
        assert torch.allclose(torch.tensor(project(s["K"].double().numpy(), J_s.double().numpy())),
                              s["joints_2d"].double(), atol=1e-3)
        # the sample frame is a rotation/reflection: bone lengths unchanged, and T maps back to the original
        assert torch.allclose((J_s @ s["T"]).double(), torch.tensor(J), atol=1e-5)
    assert max(errors) < 1.0, errors  # the dot in the warped image sits on the warped label (px)


def test_reader_layout_splits_and_empty_frames(tmp_path, make_tree, K):
    K_TEST = K
    root = make_tree(tmp_path, subjects=(0, 2), sequences=5, frames=3)
    train = DexYCBIndex(root, "s0_train")
    # s0 train: sequences at positions i % 5 != 4 of every subject: 2 subjects x 4 seq x 2 cams x (3 - 1 empty)
    assert len(train) == 2 * 4 * 2 * 2 and train.num_empty == 2 * 4 * 2
    assert all("000004" not in f.color for f in train.frames)
    val = DexYCBIndex(root, "s0_val")  # subjects 0-1, sequence 4
    assert len(val) == 1 * 1 * 2 * 2 and all(SUBJECTS[0] in f.color and "000004" in f.color for f in val.frames)
    test = DexYCBIndex(root, "s0_test")  # subjects 2-9, sequence 4
    assert len(test) == 4 and all(SUBJECTS[2] in f.color for f in test.frames)
    # toolkit indices count the dropped -1 frames: frame f of (seq, cam) sits at 3*(seq*2+cam)+f
    assert [f.tk_index for f in test.frames] == [1, 2, 4, 5]
    # per-camera intrinsics and mano_side from meta.yml
    assert set(train.intrinsics) == set(SERIALS[:2]) and np.allclose(train.intrinsics[SERIALS[0]], K_TEST)
    assert {f.mano_side for f in train.frames} == {"left", "right"}
    s2 = DexYCBIndex(root, "s2_train")  # unseen cameras: cams 0-5 train, so both cameras of this tree
    assert len(s2) == 2 * 5 * 2 * 2
    # a left hand is mirrored into a right hand: x flips, root-relative geometry otherwise unchanged
    ds = HandCropDataset(train, 64)
    left = next(i for i, f in enumerate(train.frames) if f.mano_side == "left")
    item = ds[left]
    assert torch.allclose(item["T"], torch.diag(torch.tensor([-1.0, 1.0, 1.0])))


def test_bad_inputs_are_one_line_user_errors(tmp_path, make_tree):
    hand_made_tree = make_tree
    with pytest.raises(UserError, match="root not found"):
        DexYCBIndex(tmp_path / "nope", "s0_train")
    root = hand_made_tree(tmp_path / "a", subjects=(0,), sequences=1, frames=2)
    with pytest.raises(UserError, match="unknown split"):
        DexYCBIndex(root, "s5_train")
    root = hand_made_tree(tmp_path / "b", subjects=(0,), sequences=1, frames=2, bad="no_intrinsics")
    with pytest.raises(UserError, match="no intrinsics file") as e:
        DexYCBIndex(root, "s0_train")
    assert "841412060263" not in str(e.value) and SERIALS[1] in str(e.value)
    root = hand_made_tree(tmp_path / "c", subjects=(0,), sequences=1, frames=2)
    bad = next(root.rglob("labels_000001.npz"))
    np.savez(bad, joint_3d=np.zeros((21, 3)), joint_2d=np.zeros((1, 21, 2)))
    with pytest.raises(UserError, match=r"joint_3d of shape \(21, 3\)") as e:
        DexYCBIndex(root, "s0_train")
    assert str(bad) in str(e.value)


def test_unreadable_color_image_is_a_one_line_error(tmp_path, make_tree):
    root = make_tree(tmp_path / "t", subjects=(0,), sequences=1, frames=2)
    ds = HandCropDataset(DexYCBIndex(root, "s0_train"), 32)
    img = ds.index.frames[0].color
    for content in (open(img, "rb").read()[:300], b""):  # truncated, then empty
        with open(img, "wb") as f:
            f.write(content)
        with pytest.raises(UserError, match="unreadable color image") as e:
            ds[0]
        assert img in str(e.value)


def test_partial_release_is_reported(tmp_path, make_tree):
    """A tree that is not the full release (a subject folder missing, sequences not 100 per subject) says so:
    split membership and the result file's indices would silently differ from the toolkit's."""
    root = make_tree(tmp_path, subjects=(0, 2), sequences=5, frames=2)
    test = DexYCBIndex(root, "s0_test")  # subjects 2-9: 3-9 missing, subject 2 has 5 sequences
    note = test.incompleteness()
    assert note is not None and SUBJECTS[3] in note and f"{SUBJECTS[2]}: 5" in note and "evaluate_hpe" in note
    assert SUBJECTS[2] not in test.missing_subjects and test.sequence_counts == {SUBJECTS[2]: 5}

    import amt.data as data
    full = DexYCBIndex(root, "s0_val")  # subjects 0-1: 1 is missing
    assert SUBJECTS[1] in full.incompleteness()
    old = data.SEQUENCES_PER_SUBJECT
    try:  # the same tree read as if 5 sequences were the release's count: only the missing folder remains
        data.SEQUENCES_PER_SUBJECT = 5
        assert "sequences per subject" not in full.incompleteness()
        whole = make_tree(tmp_path / "whole", subjects=(0, 1), sequences=5, frames=2)
        assert DexYCBIndex(whole, "s0_val").incompleteness() is None  # every subject there, each "complete"
    finally:
        data.SEQUENCES_PER_SUBJECT = old
