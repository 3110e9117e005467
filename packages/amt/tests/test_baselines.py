import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from amt.baselines import canonical_hand, chirality, handedness, orient_like
from amt.synthetic import hand_joints


def _hands(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([hand_joints(rng) for _ in range(n)])


def test_canonical_hand_is_invariant_to_each_hands_pose_in_space():
    """The GPA mean of hands seen from random sides, shifted and at varied distance equals the GPA mean of the
    same hands in their own frame (up to one global rotation), unlike a camera-frame average."""
    J = _hands(40)
    R = Rotation.random(40, random_state=1).as_matrix()
    moved = np.einsum("bij,bnj->bni", R, J) + np.random.default_rng(2).normal(0, 0.3, (40, 1, 3))
    a, b = canonical_hand(J), canonical_hand(moved)
    aligned = orient_like(a, b[None])[0]
    assert np.abs(aligned - b).max() < 1e-6
    blob = (moved - moved[:, :1]).mean(0)
    size = lambda x: np.linalg.norm(x - x.mean(0))  # noqa: E731
    assert size(blob) < 0.7 * size(b)                     # the camera-frame mean is shrunken, the canonical is not
    assert size(b) == pytest.approx(np.mean([size(x) for x in J]), rel=1e-6)


def test_orient_like_recovers_the_rotation_and_is_root_relative():
    hand = canonical_hand(_hands(10))
    R = Rotation.random(5, random_state=3).as_matrix()
    targets = np.einsum("bij,nj->bni", R, hand) + 1.0
    out = orient_like(hand, targets)
    assert np.abs(out - (targets - targets[:, :1])).max() < 1e-9
    # with articulation noise it is the best rotation about the wrist: no other rotation does better
    noisy = targets + np.random.default_rng(4).normal(0, 0.005, targets.shape)
    out = orient_like(hand, noisy)
    err = np.linalg.norm(out - (noisy - noisy[:, :1]), axis=-1).mean()
    for Rp in Rotation.random(20, random_state=5).as_matrix():
        small = Rotation.from_rotvec(Rotation.from_matrix(Rp).as_rotvec() * 0.05).as_matrix()
        worse = np.einsum("ij,bnj->bni", small, out)
        assert np.linalg.norm(worse - (noisy - noisy[:, :1]), axis=-1).mean() >= err - 1e-12


def test_chirality_flips_under_a_mirror_and_matches_anatomy():
    J = _hands(30, seed=4)
    c, cm = chirality(J), chirality(J * [-1, 1, 1])
    assert np.allclose(c, -cm)
    # An anatomical right hand: fingers along +y, thumb side +x, palm facing +z, fingers curled towards +z
    # (seen from the palm side, a right hand's thumb is on the viewer's right).
    hand = np.zeros((21, 3))
    for k, x in zip((5, 9, 13, 17), (0.02, 0.0, -0.02, -0.04)):
        hand[k] = (x, 0.09, 0)
        hand[k + 1:k + 4] = [(x, 0.12, 0.01), (x, 0.13, 0.03), (x, 0.13, 0.05)]
    hand[1:5] = [(0.03, 0.02, 0.01), (0.05, 0.04, 0.02), (0.06, 0.06, 0.03), (0.06, 0.08, 0.04)]
    assert handedness(hand[None]) == ["right"] and handedness((hand * [1, -1, 1])[None]) == ["left"]
    # the v2 synthetic generator's "right" hands (palm facing -z with the thumb on +x) are mirror images
    assert (c < 0).mean() > 0.8


def test_baseline_comparison_counts_frames_and_ratios():
    from amt.evaluate import baseline_comparison

    J = _hands(12, seed=6)
    rel = J - J[:, :1]
    canon = canonical_hand(rel)
    gt_mm = torch.tensor(rel * 1000)
    perfect = {"gt_rel": torch.tensor(rel), "pred_mm": gt_mm, "gt_mm": gt_mm}
    r = baseline_comparison(perfect, canon)
    assert r["frames_beating_canonical"]["pa_mpjpe"] == 1.0 and r["ratio_to_canonical"]["pa_mpjpe"] < 1e-6
    assert r["canonical_hand"]["pa_mpjpe"] > 1.0
    const = {"gt_rel": torch.tensor(rel), "gt_mm": gt_mm,
             "pred_mm": torch.tensor(np.broadcast_to(canon * 1000, rel.shape).copy())}
    r = baseline_comparison(const, canon)
    assert r["ratio_to_canonical"]["pa_mpjpe"] == pytest.approx(1.0)
    assert r["frames_beating_canonical"]["pa_mpjpe"] == 0.0
