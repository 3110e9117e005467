"""The low-noise end of sampling and training (issue 11): where sample noise comes from, and the options
that address it (increment features, timestep_power)."""
import math

import pytest
import torch

from action_ddim.diffusion import Diffusion
from action_ddim.model import ActionDenoiser, scaled_increments
from trainkit.errors import UserError


@pytest.mark.parametrize("spacing,last_t", [("leading", 0), ("trailing", 19)])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_last_step_returns_the_x0_prediction_without_noise(spacing, last_t, eta):
    """Sampling ends on abar = 1: the output is exactly the model's x0 estimate at the last visited t
    (t = 0 for leading spacing; trailing with 50 of 1000 steps never visits t < 19), with no noise added."""
    d = Diffusion("cosine", 1000, "v")
    calls = []

    def model(x, t):
        calls.append((x.clone(), int(t[0])))
        return 0.3 * torch.sin(3 * x) + 0.01 * t[:, None, None]  # any smooth, t-dependent output

    g = torch.Generator().manual_seed(0)
    out = d.sample(model, (4, 16, 3), 50, eta=eta, spacing=spacing, clip=False, generator=g)
    x_last, t_last = calls[-1]
    assert t_last == last_t
    x0_hat, _ = d.split_output(model(x_last, torch.full((4,), t_last)), x_last, float(d.alphas_cumprod[t_last]))
    assert torch.allclose(out, x0_hat, atol=1e-6)


def test_scaled_increments_make_low_noise_visible():
    """Noise at the lowest training noise level (sigma_0 ~ 0.006 for the cosine schedule) moves a raw
    position by < 1% of its size but changes the normalised increments by O(0.1-1)."""
    g = torch.Generator().manual_seed(0)
    tt = torch.linspace(0, 1, 64)
    clean = torch.stack([0.8 * tt - 0.4, 0.3 * torch.sin(3 * tt), torch.ones(64)], dim=-1).expand(8, 64, 3)
    sigma0 = math.sqrt(1 - float(Diffusion("cosine", 1000).alphas_cumprod[0]))
    noisy = clean + sigma0 * torch.randn(clean.shape, generator=g)
    f_clean, f_noisy = scaled_increments(clean), scaled_increments(noisy)
    assert f_noisy.shape == (8, 64, 6)
    assert torch.all(f_noisy[:, 0, :3] == 0) and torch.all(f_noisy[:, -1, 3:] == 0)  # no increment past the ends
    rms = f_noisy[:, 1:, :3].pow(2).mean(dim=1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-4)  # unit RMS per sequence and channel
    raw_change = (noisy - clean)[..., :2].abs().mean() / clean[..., :2].abs().mean()
    feature_change = (f_noisy - f_clean)[..., [0, 1, 3, 4]].abs().mean()
    assert raw_change < 0.03 and feature_change > 0.3, (raw_change, feature_change)


def test_increment_features_model_shapes_and_default_off():
    assert ActionDenoiser(seq_len=16, d_model=16, num_layers=1, nhead=2).input_proj.in_features == 3
    m = ActionDenoiser(seq_len=16, d_model=16, num_layers=1, nhead=2, increment_features=True)
    assert m.input_proj.in_features == 9
    assert m(torch.randn(2, 16, 3), torch.tensor([0, 999])).shape == (2, 16, 3)


def test_timestep_power_one_is_the_uniform_stream_and_two_favours_low_noise():
    d1, d2 = Diffusion(timestep_power=1.0), Diffusion(timestep_power=2.0)
    g = torch.Generator().manual_seed(5)
    # p = 1 draws exactly what torch.randint drew before the option existed (old runs reproduce).
    assert torch.equal(d1.sample_timesteps(1000, "cpu", torch.Generator().manual_seed(5)),
                       torch.randint(0, 1000, (1000,), generator=g))
    t = d2.sample_timesteps(40000, "cpu", torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 999
    assert abs((t < 20).float().mean().item() - math.sqrt(0.02)) < 0.01  # P(t < k) = (k/T)**(1/p): 14% vs 2%
    with pytest.raises(UserError, match="timestep_power"):
        Diffusion(timestep_power=0.0)


def test_new_keys_are_validated_and_round_trip_through_a_checkpoint(tmp_path):
    from trainkit.checkpoint import save_checkpoint, training_state
    from trainkit.config import config_to_dict, load_config

    from action_ddim.config import Config
    from action_ddim.data import Normalizer
    from action_ddim.train import build_model, load_for_inference

    with pytest.raises(UserError, match="diffusion.timestep_power"):
        load_config(Config, None, ["diffusion.timestep_power=-1"])
    cfg = load_config(Config, None, ["model.increment_features=true", "diffusion.timestep_power=2",
                                     "model.d_model=16", "model.nhead=2", "model.num_layers=1"])
    model = build_model(cfg, 64)
    path = tmp_path / "c.pt"
    save_checkpoint(path, training_state(model=model, config=config_to_dict(cfg),
                                         extra={"normalizer": Normalizer().to_dict(), "seq_len": 64}))
    loaded, diffusion, _, cfg2, _ = load_for_inference(path, "cpu")
    assert loaded.increment_features and diffusion.timestep_power == 2.0
    x, t = torch.randn(2, 64, 3), torch.tensor([3, 500])
    assert torch.equal(loaded(x, t), model.eval()(x, t))


def test_cosine_offset_sets_the_lowest_noise_level():
    """The default s = 0.008 puts the lowest noise level at twice the generator's sensor jitter (0.0015
    data units = 0.003 model units); s = 0.0002 puts it below, and leaves the top of the schedule alone."""
    from action_ddim.augmentation import GeneratorSettings

    jitter_model_units = 2 * GeneratorSettings().jitter_std
    sigma0 = lambda s: math.sqrt(1 - float(Diffusion("cosine", 1000, cosine_offset=s).alphas_cumprod[0]))  # noqa: E731
    assert sigma0(0.008) > 2 * jitter_model_units
    assert sigma0(0.0002) < jitter_model_units
    assert Diffusion(cosine_offset=0.0002).alphas_cumprod[-1] < 1e-3
    assert torch.equal(Diffusion().alphas_cumprod, Diffusion(cosine_offset=0.008).alphas_cumprod)
    from trainkit.config import load_config

    from action_ddim.config import Config
    with pytest.raises(UserError, match="diffusion.cosine_offset"):
        load_config(Config, None, ["diffusion.cosine_offset=0"])


def test_increment_representation_round_trips_and_keeps_old_checkpoints_as_positions():
    from action_ddim.augmentation import generate_sequences
    from action_ddim.data import Normalizer

    x = torch.from_numpy(generate_sequences(32, seed=0)).double()
    n = Normalizer(increment_scale=10.0)
    z = n.encode(x)
    assert torch.allclose(n.decode(z), x, atol=1e-12)
    assert torch.allclose(z[:, 0, :2], 2 * x[:, 0, :2] - 1)  # row 0: the start position
    assert torch.allclose(z[:, 1:, :2], 10 * (x[:, 1:, :2] - x[:, :-1, :2]))
    assert torch.equal(z[..., 2], 2 * x[..., 2] - 1)  # press unchanged
    # A resting pointer with the generator's jitter (0.0015): in positions the jitter (0.003 model units) is
    # under the default lowest noise level (0.0064); as velocities it is 0.021, over 3x that level.
    still = torch.zeros(4, 64, 3, dtype=torch.float64) + 0.5
    still[..., :2] += 0.0015 * torch.randn(4, 64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma0 = math.sqrt(1 - float(Diffusion().alphas_cumprod[0]))
    assert Normalizer().encode(still)[..., :2].std() < sigma0 < n.encode(still)[:, 1:, :2].std() / 3
    pos = Normalizer().encode(x)
    # A sample whose summed velocity leaves the screen stops at the edge.
    far = z.clone()
    far[:, 1:, 0] = 1.0
    assert n.decode(far)[..., 0].max() == 1.0
    # Checkpoints written before the option existed hold no increment_scale: positions.
    old = Normalizer.from_dict({"low": [0, 0, 0], "high": [1, 1, 1], "binary_channels": [2]})
    assert old.increment_scale == 0.0 and torch.equal(old.encode(x), pos)
    assert Normalizer.from_dict(n.to_dict()) == n
