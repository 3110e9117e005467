import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.transform import Rotation

from amt.metrics import auc, collapse_monitor, hand_metrics, pa_mpjpe, pck, procrustes_align


def toolkit_align_w_scale(gt, pred):
    """The toolkit's align_w_scale (freihand eval.py): unit-norm both, scipy orthogonal_procrustes."""
    t1, t2 = gt.mean(0), pred.mean(0)
    g, p = gt - t1, pred - t2
    s1, s2 = np.linalg.norm(g) + 1e-8, np.linalg.norm(p) + 1e-8
    g, p = g / s1, p / s2
    R, s = orthogonal_procrustes(g, p)
    return np.dot(p, R.T) * s * s1 + t1


def test_procrustes_matches_scipy_toolkit_on_random_data():
    rng = np.random.default_rng(0)
    gt = rng.normal(0, 40, (64, 21, 3))
    pred = gt + rng.normal(0, 15, gt.shape)
    ours = procrustes_align(torch.tensor(pred), torch.tensor(gt)).numpy()
    ref = np.stack([toolkit_align_w_scale(g, p) for g, p in zip(gt, pred)])
    assert np.abs(ours - ref).max() < 1e-6


def test_procrustes_recovers_a_similarity_exactly():
    rng = np.random.default_rng(1)
    gt = rng.normal(0, 50, (4, 21, 3))
    R = Rotation.random(4, random_state=2).as_matrix()
    pred = 0.7 * np.einsum("bij,bnj->bni", R, gt) + np.array([10.0, -5.0, 300.0])
    assert pa_mpjpe(torch.tensor(pred), torch.tensor(gt)) < 1e-8
    # a reflection is not a rotation: the proper-rotation value stays large; the toolkit's allows it
    from amt.metrics import pa_mpjpe_proper

    assert pa_mpjpe_proper(torch.tensor(gt * [-1, 1, 1]), torch.tensor(gt)) > 1.0
    assert pa_mpjpe(torch.tensor(gt * [-1, 1, 1]), torch.tensor(gt)) < 1e-6


def umeyama_svd(pred, gt):
    """Reference: Umeyama with numpy's SVD and the reflection fix."""
    X0, Y0 = pred - pred.mean(0), gt - gt.mean(0)
    U, S, Vt = np.linalg.svd(X0.T @ Y0)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))])
    R = Vt.T @ D @ U.T
    return (S * np.diag(D)).sum() / (X0 ** 2).sum() * X0 @ R.T + gt.mean(0)


def test_procrustes_degenerate_cases_match_svd_reference():
    rng = np.random.default_rng(3)
    gt = rng.normal(0, 40, (6, 21, 3))
    planar = gt.copy()
    planar[..., 2] = 0.0                                        # a flat hand: rank-2 cross-covariance
    cases = {
        "mirrored (reflection fix needed)": (gt * [-1, 1, 1] + rng.normal(0, 1, gt.shape), gt),
        "planar prediction": (planar + rng.normal(0, 2, gt.shape) * [1, 1, 0], gt),
        "planar both": (planar * 0.9 + 3.0, planar),
        "symmetric (repeated singular values)": (np.repeat(np.eye(3)[None] * 30, 6, 0), np.repeat(np.eye(3)[None] * 30, 6, 0)),
    }
    for name, (pred, g) in cases.items():
        ours = procrustes_align(torch.tensor(pred), torch.tensor(g)).numpy()
        ref = np.stack([umeyama_svd(p, q) for p, q in zip(pred, g)])
        assert np.abs(ours - ref).max() < 1e-6, name
    collapsed = np.repeat(gt.mean(1, keepdims=True), 21, 1)     # constant prediction: scale 0, aligned = GT mean
    ours = procrustes_align(torch.tensor(collapsed), torch.tensor(gt)).numpy()
    assert np.isfinite(ours).all() and np.abs(ours - gt.mean(1, keepdims=True)).max() < 1e-9


def test_pck_and_auc_match_hand_computed_values():
    # one keypoint, errors 0, 25, 50 mm: PCK(t) over linspace(0, 50, 100) is 1/3 for t < 25, 2/3 for 25 <= t < 50
    e = torch.tensor([[0.0], [25.0], [50.0]])
    t = np.linspace(0, 50, 100)
    curve = np.array([(np.array([0, 25, 50]) <= x).mean() for x in t])
    expected = np.trapezoid(curve, t) / 50
    assert auc(e) == pytest.approx(expected)
    assert 0.49 < auc(e) < 0.51  # ~ mean of 1/3 and 2/3 plus the endpoint
    assert pck(e, 25.0) == pytest.approx(2 / 3)  # <= as in the toolkit
    # AUC is per keypoint then averaged: a perfect keypoint and a hopeless one give 0.5
    e2 = torch.tensor([[0.0, 100.0], [0.0, 100.0]])
    assert auc(e2) == pytest.approx(0.5)


def test_hand_metrics_conventions():
    gt = torch.zeros(2, 21, 3, dtype=torch.float64)
    gt[:, :, 2] = 600
    gt[:, 1:, 0] = torch.arange(1, 21, dtype=torch.float64) * 5
    pred = gt + torch.tensor([10.0, 0, 0])  # a pure root offset
    m = hand_metrics(pred, gt)
    assert m["mpjpe"] == pytest.approx(0, abs=1e-9)  # root-relative ignores it
    assert m["mpjpe_abs"] == pytest.approx(10)
    uv_gt = torch.full((2, 21, 2), 100.0)
    uv_gt[0, 0] = -1  # masked
    m = hand_metrics(pred, gt, uv_gt + torch.tensor([3.0, 4.0]), uv_gt)  # 5 px error: counts (<=)
    assert m["pck_5px"] == 1.0


def test_collapse_monitor_fires_on_constant_predictions():
    gt = torch.randn(16, 21, 3) * 0.03
    stats, warning = collapse_monitor(torch.zeros(16, 21, 3) + 0.01, gt)
    assert warning is not None and "std" in warning and stats["pred_std"] == 0
    stats, warning = collapse_monitor(gt + 0.001 * torch.randn_like(gt), gt)
    assert warning is None and stats["std_ratio"] == pytest.approx(1, abs=0.05)
    assert stats["collapse_warning"] == 0.0


def test_collapse_monitor_warns_on_a_shrinking_spread_the_hinge_would_miss():
    """Predictions that vary 0.2x as much as the hands: above the guide's absolute 0.001 m, so only the spread
    ratio catches it."""
    gt = torch.randn(32, 21, 3) * 0.03
    pred = gt.mean(0, keepdim=True) + 0.2 * (gt - gt.mean(0, keepdim=True))
    stats, warning = collapse_monitor(pred, gt)
    assert stats["pred_std"] > 0.001 and stats["std_ratio"] == pytest.approx(0.2, rel=1e-6)
    assert warning is not None and "collapsing" in warning and stats["collapse_warning"] == 1.0
    assert collapse_monitor(pred, gt, ratio_threshold=0.1)[1] is None


def test_toolkit_pa_allows_reflections_exactly_like_scipy_and_proper_pa_does_not():
    """pa_mpjpe is the toolkit's align_w_scale (scipy orthogonal_procrustes): on near-mirrored predictions the
    best orthogonal map is a reflection, so it differs from the reflection-fixed value, which stays large."""
    from amt.metrics import pa_mpjpe_proper, procrustes_align_toolkit

    rng = np.random.default_rng(5)
    gt = rng.normal(0, 40, (16, 21, 3))
    pred = gt * [-1, 1, 1] + rng.normal(0, 3, gt.shape)       # mirror images: reflections fit best
    ours = procrustes_align_toolkit(torch.tensor(pred), torch.tensor(gt)).numpy()
    ref = np.stack([toolkit_align_w_scale(g, p) for g, p in zip(gt, pred)])
    assert np.abs(ours - ref).max() < 1e-6
    ref_pa = np.linalg.norm(ref - gt, axis=-1).mean()
    assert pa_mpjpe(torch.tensor(pred), torch.tensor(gt)) == pytest.approx(ref_pa, rel=1e-9)
    assert pa_mpjpe_proper(torch.tensor(pred), torch.tensor(gt)) > 3 * ref_pa
    m = hand_metrics(torch.tensor(pred), torch.tensor(gt))
    assert m["pa_mpjpe"] == pytest.approx(ref_pa, rel=1e-9) and m["pa_mpjpe_proper"] > 3 * ref_pa
    assert m["auc_pa"] > m["auc_pa_proper"]
