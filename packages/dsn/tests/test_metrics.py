import itertools
import math

import numpy as np
import pytest
import torch

from dsn import metrics as M
from dsn.data import Video


def _video(n_frames, picks, cps, user_summary=None, gtscore=None):
    cps = np.asarray(cps, dtype=np.int64)
    return Video(
        key="v",
        features=np.zeros((len(picks), 2), np.float32),
        picks=np.asarray(picks, dtype=np.int64),
        n_frames=n_frames,
        change_points=cps,
        n_frame_per_seg=cps[:, 1] - cps[:, 0] + 1,
        user_summary=None if user_summary is None else np.asarray(user_summary, np.uint8),
        gtscore=None if gtscore is None else np.asarray(gtscore, np.float32),
        frames=None,
    )


# ----------------------------------------------------------------------------- knapsack
def test_knapsack_hand_computed():
    # best under capacity 5: items 1 (w2, v10) + 2 (w3, v12) = 22 beats 0+1 (16) and 0+2 (18)
    assert M.knapsack([6, 10, 12], [1, 2, 3], 5) == [1, 2]
    assert M.knapsack([6, 10, 12], [1, 2, 3], 3) == [0, 1]
    assert M.knapsack([6, 10, 12], [1, 2, 3], 0) == []
    assert M.knapsack([5.0], [7], 6) == []  # too heavy


def test_knapsack_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 8))
        v = rng.random(n)
        w = rng.integers(1, 10, n)
        cap = int(rng.integers(0, 25))
        best = max(
            (sum(v[list(c)]) for r in range(n + 1) for c in itertools.combinations(range(n), r) if w[list(c)].sum() <= cap),
        )
        got = M.knapsack(v, w, cap)
        assert w[got].sum() <= cap
        assert math.isclose(v[got].sum(), best, rel_tol=1e-12, abs_tol=1e-12)


# ----------------------------------------------------------------------------- eccv16 protocol
def test_upsample_scores():
    np.testing.assert_array_equal(M.upsample_scores([1, 2, 3], [0, 2, 4], 7), [1, 1, 2, 2, 3, 3, 3])
    # frames before the first pick stay 0, as in DSN's generate_summary
    np.testing.assert_array_equal(M.upsample_scores([5, 6], [1, 3], 5), [0, 5, 5, 6, 6])
    np.testing.assert_array_equal(M.upsample_scores(torch.tensor([0.5]), [0], 3), [0.5, 0.5, 0.5])


def test_summary_from_scores_protocol():
    v = _video(10, [0, 5], [[0, 3], [4, 6], [7, 9]])
    # frame scores .2 x5, .9 x5 -> segment means [.2, (.2+.9+.9)/3, .9]
    # proportion .5 -> capacity 5: segments 1 and 2 (3 frames each) cannot both fit -> segment 2
    np.testing.assert_array_equal(M.summary_from_scores([0.2, 0.9], v, proportion=0.5), [0] * 7 + [1] * 3)
    # default 15 % -> capacity floor(1.5) = 1 frame: nothing fits
    assert M.summary_from_scores([0.2, 0.9], v).sum() == 0
    # capacity 7 (70 %): segments 1+2 (w6, 1.567) beat 0+2 (w7, 1.1) and 0+1 (w7, .867)
    np.testing.assert_array_equal(M.summary_from_scores([0.2, 0.9], v, proportion=0.7), [0] * 4 + [1] * 6)


def test_f_score_max_vs_avg():
    summary = [1, 1, 0, 0]
    users = [[1, 1, 0, 0], [0, 0, 1, 1]]
    assert M.f_score(summary, users, "max") == pytest.approx(100.0)
    assert M.f_score(summary, users, "avg") == pytest.approx(50.0)
    # P = 1/2, R = 1 -> F = 2 * .5 / 1.5
    assert M.f_score([1, 1, 0, 0], [[1, 0, 0, 0]]) == pytest.approx(200 / 3)
    # a shorter machine summary is zero-padded to the users' length
    assert M.f_score([1], [[1, 0, 0, 0]]) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        M.f_score(summary, users, "median")


def test_rank_correlation_gtscore_hand_computed():
    v = _video(4, [0, 1, 2, 3], [[0, 3]], gtscore=[1, 3, 2, 4])
    tau, rho = M.rank_correlation_gtscore([1, 2, 3, 4], v)
    # one discordant pair out of 6: tau = (5 - 1) / 6; rho = 1 - 6 * 2 / (4 * 15)
    assert tau == pytest.approx(4 / 6)
    assert rho == pytest.approx(0.8)
    v = _video(4, [0, 1, 2, 3], [[0, 3]], gtscore=[1, 2, 3, 4])
    assert M.rank_correlation_gtscore([4, 3, 2, 1], v) == pytest.approx((-1, -1))


def test_rank_correlation_gtscore_falls_back_to_user_mean_and_nan_when_unannotated():
    users = [[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]]
    v = _video(6, [0, 2, 4], [[0, 5]], user_summary=users)  # user mean at picks: [0, .5, 1]
    assert M.rank_correlation_gtscore([0.1, 0.2, 0.3], v) == pytest.approx((1.0, 1.0))
    for fn in (M.rank_correlation, M.rank_correlation_gtscore):
        tau, rho = fn([0.1, 0.2, 0.3], _video(6, [0, 2, 4], [[0, 5]]))
        assert math.isnan(tau) and math.isnan(rho)


def test_rank_correlation_is_the_per_annotator_average():
    """issue 13 item 12: the published tau/rho (Otani et al.; CA-SUM) average the coefficient over annotators."""
    # At the picks: user 1 [0, 1, 1], user 2 [0, 0, 1], user 3 [0, 0, 0] (constant: skipped).
    users = [[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1], [0, 1, 0, 1, 0, 1]]
    v = _video(6, [0, 2, 4], [[0, 5]], user_summary=users)
    tau, rho = M.rank_correlation([0.1, 0.2, 0.3], v)
    # each user: 2 concordant pairs, 1 tied in the reference -> tau_b = 2 / sqrt(3 * 2); rho of ranks
    # [1, 2, 3] vs [1, 2.5, 2.5] = 1.5 / sqrt(2 * 1.5)
    assert tau == pytest.approx(2 / math.sqrt(6))
    assert rho == pytest.approx(1.5 / math.sqrt(3))
    # against the mean of the users ([0, 1/3, 2/3]) the ranking is perfect: the other variant differs
    assert M.rank_correlation_gtscore([0.1, 0.2, 0.3], v) == pytest.approx((1.0, 1.0))
    # the reference is the annotators, not gtscore, even when gtscore is present
    v.gtscore = np.array([3, 2, 1], np.float32)
    assert M.rank_correlation([0.1, 0.2, 0.3], v) == pytest.approx((tau, rho))


# ----------------------------------------------------------------------------- selection and baselines
def test_keyframes_topk_and_baselines():
    np.testing.assert_array_equal(M.keyframes_topk([0.1, 0.9, 0.5, 0.9, 0.2], 0.4), [1, 3])
    np.testing.assert_array_equal(M.keyframes_topk([0.1, 0.2], 0.01), [1])  # at least one
    np.testing.assert_array_equal(M.uniform_keyframes(10, 0.2), [2, 7])
    np.testing.assert_array_equal(M.uniform_scores(10, 0.2), [0, 0, 1, 0, 0, 0, 0, 1, 0, 0])
    a = M.random_scores(50, np.random.default_rng(1))
    np.testing.assert_array_equal(a, M.random_scores(50, 1))
    assert a.shape == (50,) and 0 <= a.min() and a.max() < 1
    assert M.budget_k(100, 0.06) == 6


# ----------------------------------------------------------------------------- keyframe metrics
def test_rec_err_hand_computed():
    x = np.array([[0, 0], [3, 4], [6, 8]], dtype=np.float32)
    assert M.rec_err(x, [0]) == pytest.approx(5.0)  # distances 0, 5, 10 (not squared)
    assert M.rec_err(x, [0, 2]) == pytest.approx(5 / 3)
    assert M.rec_err(torch.from_numpy(x), np.array([1])) == pytest.approx(10 / 3)
    assert math.isnan(M.rec_err(x, []))


def test_diversity_hand_computed():
    x = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    assert M.diversity(x, [0, 1]) == pytest.approx(1.0)
    assert M.diversity(x, [0, 1, 2]) == pytest.approx((1 + 2 * (1 - 1 / math.sqrt(2))) / 3)
    assert M.diversity(x, [2]) == 0.0
    assert M.diversity(x, []) == 0.0


def _solid(colours, size=16):
    return np.stack([np.full((size, size, 3), c, np.uint8) for c in colours])


def test_ms_swd_zero_for_identical_sets_and_larger_for_other_colours():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    assert M.ms_swd(frames, np.arange(12)) == 0.0
    # a video that is half red, half blue: one red and one blue keyframe match it far better
    # than two red keyframes
    video = _solid([(220, 30, 30)] * 10 + [(30, 30, 220)] * 10)
    balanced = M.ms_swd(video, [0, 15])
    one_sided = M.ms_swd(video, [0, 1])
    assert balanced < 1e-6 < one_sided
    # duplicating the same frames does not change the distribution
    assert M.ms_swd(_solid([(50, 90, 10)] * 3), [1]) == pytest.approx(0.0, abs=1e-9)


def test_ms_swd_reproducible_and_unequal_counts():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (20, 40, 24, 3), dtype=np.uint8)  # non-square, unequal counts 3 vs 20
    a = M.ms_swd(frames, [0, 7, 13])
    M._MSSWD_CACHE.clear()  # recompute from scratch: the projections are seeded, not re-sampled
    b = M.ms_swd(frames, [0, 7, 13])
    assert a == b and np.isfinite(a) and a > 0
    assert M.ms_swd(frames, [0, 7, 13], seed=1) != a
    assert M.ms_swd(frames, [0, 7, 13], num_scales=1) != a
    assert math.isnan(M.ms_swd(frames, []))


def test_docs_describe_keyframe_selection_and_diversity_as_the_code_does():
    """issue 13 item 13: the docs said keyframes are top-k (the default is nms) and Diversity is 0.0 below two
    keyframes (evaluate reports null)."""
    from pathlib import Path

    from dsn.config import TrainConfig
    from dsn.evaluate import select_keyframes, summary_metrics

    docs = (Path(__file__).resolve().parents[1] / "docs" / "data-and-metrics.md").read_text()
    assert "The model's keyframes are top-k" not in docs and "Random keyframes are their top-k" not in docs
    assert TrainConfig().keyframe_selection == "nms" and "(default `nms`)" in docs
    scores = np.array([0.9, 0.8, 0.1, 0.7, 0.2, 0.1])
    assert select_keyframes(scores, 0.34) .tolist() == [0, 3]  # top-2 would be [0, 1]: neighbours suppressed
    v = _video(6, np.arange(6), [[0, 5]])
    v.features = np.eye(6, dtype=np.float32)
    assert M.diversity(v.features, [2]) == 0.0
    assert summary_metrics(v, None, np.array([2]), proportion=0.15, f_mode="avg")["Diversity"] is None
    assert "report **null** for such a video" in docs


def test_f_is_null_when_no_shot_fits_the_knapsack():
    """aud21-7: a one-shot video (14 of the 19 real clips) got F = 0.0 for model, random and uniform: the
    15 % knapsack selects nothing, so F was 0 by construction. Now null; two shots of which one fits give F."""
    from dsn.evaluate import summary_metrics

    users = np.zeros((2, 20), np.uint8)
    users[:, :3] = 1
    one = _video(20, np.arange(20), [[0, 19]], user_summary=users)
    assert summary_metrics(one, np.linspace(1, 0, 20), np.array([0]), proportion=0.15, f_mode="avg",
                           ms_swd=False)["F"] is None
    two = _video(20, np.arange(20), [[0, 2], [3, 19]], user_summary=users)
    assert summary_metrics(two, np.linspace(1, 0, 20), np.array([0]), proportion=0.15, f_mode="avg",
                           ms_swd=False)["F"] == pytest.approx(100.0)
