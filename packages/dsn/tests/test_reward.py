"""The DSN reward: hand-computed tiny cases and the batched form against a per-episode loop."""
import math

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # the shared 2-core machine: tiny ops are much slower with thread contention

from dsn.reward import batched_reward, compute_reward, reward_loop, reward_matrices


def test_no_picks_is_zero():
    x = torch.randn(10, 4)
    assert compute_reward(x, torch.zeros(10)).item() == 0.0
    assert reward_loop(x, torch.zeros(1, 10)).tolist() == [0.0]


def test_one_pick_hand_computed():
    # x0=(1,0), x1=(0,1), x2=(1,1); pick step 0. Squared distances to it: 0, 2, 1 -> mean 1.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    a = torch.tensor([1.0, 0.0, 0.0])
    # K = 1: R_div = 0, R_rep = exp(-1).
    assert compute_reward(x, a).item() == pytest.approx(0.5 * math.exp(-1.0), abs=1e-7)
    # Plain (not squared) distances: 0, sqrt(2), 1.
    want = 0.5 * math.exp(-(math.sqrt(2.0) + 1.0) / 3.0)
    assert compute_reward(x, a, squared=False).item() == pytest.approx(want, abs=1e-7)


def test_two_picks_hand_computed():
    # Picks 0 and 1: cos(x0, x1) = 0 -> d = 1 both ways, R_div = 2 / (2*1) = 1.
    # Nearest-pick squared distances: 0, 0, min(1, 1) = 1 -> mean 1/3.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    a = torch.tensor([1.0, 1.0, 0.0])
    assert compute_reward(x, a).item() == pytest.approx(0.5 * (1.0 + math.exp(-1.0 / 3.0)), abs=1e-6)


@pytest.mark.parametrize("gap,expected_div", [(10, 0.0), (20, 0.0), (21, 1.0), (25, 1.0)])
def test_temporal_cutoff(gap, expected_div):
    # Two identical frames (1 - cos = 0) count as fully dissimilar once more than lambda=20 steps apart.
    T = 30
    x = torch.zeros(T, 3)
    x[:, 0] = 1.0
    x[:, 1] = torch.linspace(0, 1, T)  # distinct frames elsewhere
    x[gap] = x[0]
    a = torch.zeros(T)
    a[0] = a[gap] = 1.0
    nearest = torch.cdist(x, x[[0, gap]]).pow(2).min(1).values
    want = 0.5 * (expected_div + math.exp(-nearest.mean().item()))
    assert compute_reward(x, a, temporal_cutoff=20).item() == pytest.approx(want, abs=1e-6)
    # Without the cutoff the pair is identical: diversity 0.
    no_cut = 0.5 * math.exp(-nearest.mean().item())
    assert compute_reward(x, a, temporal_cutoff=10**6).item() == pytest.approx(no_cut, abs=1e-6)


@pytest.mark.parametrize("T,N,p", [(7, 3, 0.3), (60, 5, 0.06), (200, 8, 0.2)])
@pytest.mark.parametrize("squared", [True, False])
def test_batched_equals_loop(T, N, p, squared):
    g = torch.Generator().manual_seed(T * N)
    x = torch.randn(T, 12, generator=g)
    a = (torch.rand(N, T, generator=g) < p).float()
    a[0] = 0  # an empty episode
    a[1] = 0
    a[1, T // 2] = 1  # a single-pick episode
    batched = compute_reward(x, a, temporal_cutoff=5, squared=squared)
    loop = reward_loop(x, a, temporal_cutoff=5, squared=squared)
    torch.testing.assert_close(batched, loop.to(batched.dtype), atol=1e-5, rtol=1e-5)


def test_matrices_reused_for_all_episodes_and_rewards_detached():
    x = torch.randn(40, 6, requires_grad=True)
    div_mat, rep_mat = reward_matrices(x)
    assert div_mat.shape == rep_mat.shape == (40, 40)
    assert not div_mat.requires_grad and not rep_mat.requires_grad
    a = (torch.rand(5, 40) < 0.2).float()
    r = batched_reward(div_mat, rep_mat, a)
    assert r.shape == (5,) and not r.requires_grad
    assert torch.all((r >= 0) & (r <= 1))
