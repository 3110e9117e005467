"""Schedules and the DDIM sampler against an exact (analytic) epsilon model for Gaussian data."""
import math

import pytest
import torch

from action_ddim.diffusion import Diffusion, ddim_timesteps, make_alphas_cumprod
from trainkit.errors import UserError


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_schedule_decreasing_and_ends_near_zero(schedule):
    a = make_alphas_cumprod(schedule, 1000)
    assert torch.all(a[1:] < a[:-1])
    assert 0.99 < a[0] < 1.0
    assert a[-1] < 1e-3


def test_default_schedule_ends_near_zero():
    d = Diffusion()  # package defaults
    assert d.alphas_cumprod[-1] < 1e-3


def test_linear_with_short_T_is_refused_unless_forced():
    with pytest.raises(UserError, match="num_train_timesteps >= 1000"):
        make_alphas_cumprod("linear", 100)
    assert make_alphas_cumprod("linear", 100, force=True)[-1] > 0.3  # why it is refused


def test_timestep_spacings():
    assert ddim_timesteps(100, 10, "leading") == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert ddim_timesteps(100, 10, "trailing") == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]
    assert ddim_timesteps(1000, 1000, "leading") == list(range(999, -1, -1))
    with pytest.raises(UserError):
        ddim_timesteps(100, 101)


class GaussianOracle:
    """Exact E[eps | x_t] (or v / x0) when x0 ~ N(mu, diag(s^2))."""

    def __init__(self, diffusion, mu, s):
        self.d, self.mu, self.var = diffusion, mu, s**2

    def __call__(self, x, t):
        a = self.d.alphas_cumprod[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        eps = (1 - a).sqrt() * (x - a.sqrt() * self.mu) / (a * self.var + 1 - a)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        if self.d.prediction_type == "epsilon":
            return eps
        if self.d.prediction_type == "x0":
            return x0
        return a.sqrt() * eps - (1 - a).sqrt() * x0


def _gaussian(n=1000, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.linspace(0.05, 0.5, dim, dtype=torch.float64)
    mu = torch.linspace(-0.3, 0.3, dim, dtype=torch.float64)
    x0 = mu + s * torch.randn(n, dim, generator=g, dtype=torch.float64)
    return x0, mu, s


@pytest.mark.parametrize("prediction_type", ["epsilon", "v"])
def test_inversion_round_trip_error_falls_like_one_over_S_squared(prediction_type):
    d = Diffusion("cosine", 1000, prediction_type)
    x0, mu, s = _gaussian()
    oracle = GaussianOracle(d, mu, s)
    errs = {}
    for S in (10, 20, 40, 80):
        xT = d.invert(oracle, x0, S)
        rec = d.sample(oracle, x0.shape, S, eta=0.0, clip=False, x_T=xT)
        errs[S] = torch.mean((rec - x0) ** 2).item()
    # Each doubling of S cuts the squared error ~4x (first-order scheme: error ~ 1/S).
    for S in (10, 20, 40):
        assert 2.5 < errs[S] / errs[2 * S] < 6.5, errs
    assert errs[80] < 5e-4


def test_eta0_sampling_is_deterministic_and_matches_data_distribution():
    d = Diffusion("cosine", 1000, "epsilon")
    x0, mu, s = _gaussian(n=4000)
    oracle = GaussianOracle(d, mu, s)
    g = torch.Generator().manual_seed(1)
    xT = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    a = d.sample(oracle, x0.shape, 100, x_T=xT, clip=False)
    b = d.sample(oracle, x0.shape, 100, x_T=xT.clone(), clip=False)
    assert torch.equal(a, b)
    assert torch.allclose(a.mean(0), mu, atol=0.03)
    # Few-step deterministic DDIM slightly under-disperses the narrowest dimensions (known; see README).
    assert torch.allclose(a.std(0), s, rtol=0.15)


def test_prediction_types_give_the_same_sampler():
    x0, mu, s = _gaussian(n=64)
    xT = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    outs = []
    for p in ("epsilon", "v", "x0"):
        d = Diffusion("cosine", 1000, p)
        outs.append(d.sample(GaussianOracle(d, mu, s), x0.shape, 20, x_T=xT, clip=False))
    assert torch.allclose(outs[0], outs[1], atol=1e-8)
    assert torch.allclose(outs[0], outs[2], atol=1e-6)


def test_eta1_with_S_equal_T_is_the_ddpm_posterior():
    T = 50
    d = Diffusion("cosine", T, "epsilon")
    ts, prev = d._levels(T, "leading")
    assert ts == list(range(T - 1, -1, -1))
    ac = d.alphas_cumprod
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    for t in (T - 1, 30, 10, 1):
        a_t, a_s = float(ac[t]), float(ac[t - 1])
        beta = 1 - a_t / a_s
        posterior_var = beta * (1 - a_s) / (1 - a_t)
        assert math.isclose(d.sigma(a_t, a_s, 1.0) ** 2, posterior_var, rel_tol=1e-12)
        # Empirically: x_{t-1} given x_t and the true eps has the DDPM posterior mean and variance.
        n = 200_000
        eps = torch.randn(n, 3, generator=g, dtype=torch.float64)
        x_t = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * eps
        z = torch.randn(n, 3, generator=g, dtype=torch.float64)
        x_s, _ = d.step(eps, x_t, a_t, a_s, eta=1.0, noise=z)
        mean = math.sqrt(a_s) * beta / (1 - a_t) * x0 + math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t) * x_t
        resid = x_s - mean
        assert resid.abs().max() < 10 * math.sqrt(posterior_var)
        assert abs(resid.var().item() / posterior_var - 1) < 0.01
        assert abs(resid.mean().item()) < 5 * math.sqrt(posterior_var / n / 3)


def test_clipping_is_off_during_inversion():
    d = Diffusion("cosine", 1000, "epsilon")
    x0 = torch.full((2, 4), 3.0, dtype=torch.float64)  # far outside [-1, 1]
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    xT = d.invert(zero, x0, 10)
    # With eps = 0 the encode is x_T = sqrt(abar) x0 exactly: nothing was clipped on the way.
    assert torch.allclose(xT, math.sqrt(float(d.alphas_cumprod[900])) * x0)
    rec = d.sample(zero, x0.shape, 10, x_T=xT, clip=False)
    assert torch.allclose(rec, x0)
    assert d.sample(zero, x0.shape, 10, x_T=xT, clip=True).max() <= 1.0 + 1e-9
