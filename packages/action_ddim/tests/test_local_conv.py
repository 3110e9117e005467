"""Issue 11's local-structure and loss-weighting options: ``model.conv_kernel`` (a depthwise convolution
before every encoder layer) and ``diffusion.min_snr_gamma`` (min-SNR-gamma loss weighting)."""
import pytest
import torch

from action_ddim.diffusion import Diffusion
from action_ddim.model import ActionDenoiser, LocalConv
from trainkit.errors import UserError


def test_local_conv_sees_only_its_kernel_window_and_starts_as_the_identity():
    torch.manual_seed(0)
    conv = LocalConv(8, 5)
    h = torch.randn(2, 20, 8)
    assert torch.equal(conv(h), h)  # zero-initialised projection: the block starts as the plain transformer's
    torch.nn.init.normal_(conv.proj.weight)
    base = conv(h)
    h2 = h.clone()
    h2[:, 10] += torch.randn(8)  # not a constant: LayerNorm removes a shift common to all channels
    changed = (conv(h2) - base).abs().amax(dim=(0, 2)) > 1e-6
    # Position 10's change reaches 10 itself (residual) and the 2 neighbours on each side, nothing further.
    assert changed.nonzero().flatten().tolist() == [8, 9, 10, 11, 12]


def test_conv_kernel_zero_is_the_old_model_and_loads_its_weights():
    plain = ActionDenoiser(seq_len=16, d_model=16, num_layers=2, nhead=2)
    assert plain.convs is None and not any(k.startswith("convs") for k in plain.state_dict())
    conv = ActionDenoiser(seq_len=16, d_model=16, num_layers=2, nhead=2, conv_kernel=3)
    missing, unexpected = conv.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("convs.") for k in missing)
    # With the convolutions still at their (identity) initialisation, both compute the same function.
    x, t = torch.randn(3, 16, 3), torch.tensor([0, 400, 999])
    assert torch.allclose(conv.eval()(x, t), plain.eval()(x, t), atol=1e-6)
    with pytest.raises(ValueError, match="odd"):
        ActionDenoiser(seq_len=16, d_model=16, num_layers=1, nhead=2, conv_kernel=4)


STEPS = 80


def test_conv_model_learns_a_local_filter_the_plain_one_learns_slower():
    """Behaviour, not shapes: both denoise a white-noise-on-smooth-signal task; with the same steps the conv
    model removes more of the noise (the task is a local low-pass filter)."""
    def run(conv_kernel):
        torch.manual_seed(0)
        m = ActionDenoiser(seq_len=32, d_model=32, num_layers=1, nhead=2, conv_kernel=conv_kernel)
        opt = torch.optim.Adam(m.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(1)
        tt = torch.linspace(0, 1, 32)

        def batch(n):
            f = 1 + 2 * torch.rand(n, 1, 1, generator=g)
            ph = 6.28 * torch.rand(n, 1, 3, generator=g)
            clean = 0.5 * torch.sin(6.28 * f * tt[None, :, None] + ph)
            return clean, clean + 0.3 * torch.randn(clean.shape, generator=g)

        for _ in range(STEPS):
            clean, noisy = batch(32)
            loss = (m(noisy, torch.zeros(32, dtype=torch.long)) - clean).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        clean, noisy = batch(256)
        with torch.no_grad():
            return ((m(noisy, torch.zeros(256, dtype=torch.long)) - clean).pow(2).mean() / 0.09).item()

    plain, conv = run(0), run(5)
    # Measured: conv 0.19 of the noise energy left, plain 0.39.
    assert conv < 0.3, conv
    assert conv < 0.7 * plain, (conv, plain)


@pytest.mark.parametrize("prediction_type", ["v", "epsilon", "x0"])
def test_min_snr_loss_is_the_clamped_snr_weighted_x0_error(prediction_type):
    d = Diffusion("cosine", 1000, prediction_type, min_snr_gamma=5.0)
    x0 = torch.randn(64, 16, 3, generator=torch.Generator().manual_seed(0))

    def model(x, t):
        return 0.5 * x + 0.01 * t[:, None, None].float() / 1000

    loss = d.loss(model, x0, generator=torch.Generator().manual_seed(3))
    # The same draws, the weighted x0 error written out: min(SNR, 5) * |x0_hat - x0|^2.
    g = torch.Generator().manual_seed(3)
    t = d.sample_timesteps(64, "cpu", g)
    noise = torch.randn(x0.shape, generator=g)
    a = d.abar(t, x0)
    xt = d.q_sample(x0, t, noise)
    x0_hat = torch.stack([d.split_output(model(xt[i:i + 1], t[i:i + 1]), xt[i:i + 1], a[i])[0][0] for i in range(64)])
    snr = (a / (1 - a)).flatten()
    expected = (snr.clamp(max=5.0) * (x0_hat - x0).pow(2).flatten(1).mean(dim=1)).mean()
    assert torch.allclose(loss, expected, rtol=1e-4), (loss, expected)
    # Off (0): exactly the plain loss.
    plain = Diffusion("cosine", 1000, prediction_type)
    assert torch.equal(plain.loss(model, x0, generator=torch.Generator().manual_seed(3)),
                       torch.nn.functional.mse_loss(model(xt, t), plain.target(x0, t, noise)))


def test_new_keys_are_validated_run_defining_and_round_trip_through_a_checkpoint(tmp_path):
    from trainkit.checkpoint import save_checkpoint, training_state
    from trainkit.config import config_to_dict, load_config

    from action_ddim.config import Config
    from action_ddim.data import Normalizer
    from action_ddim.train import RUN_DEFINING, build_model, load_for_inference

    for bad, key in (("model.conv_kernel=4", "model.conv_kernel"), ("model.conv_kernel=-3", "model.conv_kernel"),
                     ("diffusion.min_snr_gamma=-1", "diffusion.min_snr_gamma")):
        with pytest.raises(UserError, match=key):
            load_config(Config, None, [bad])
    assert "model" in RUN_DEFINING and "diffusion.min_snr_gamma" in RUN_DEFINING
    default = load_config(Config, None, [])
    assert default.model.conv_kernel == 0 and default.diffusion.min_snr_gamma == 0.0
    cfg = load_config(Config, None, ["model.conv_kernel=5", "diffusion.min_snr_gamma=5", "model.d_model=16",
                                     "model.nhead=2", "model.num_layers=2"])
    model = build_model(cfg, 64)
    torch.nn.init.normal_(model.convs[0].proj.weight)  # not the identity, so the test can tell
    path = tmp_path / "c.pt"
    save_checkpoint(path, training_state(model=model, config=config_to_dict(cfg),
                                         extra={"normalizer": Normalizer().to_dict(), "seq_len": 64}))
    loaded, diffusion, _, _, _ = load_for_inference(path, "cpu")
    assert loaded.convs is not None and diffusion.min_snr_gamma == 5.0
    x, t = torch.randn(2, 64, 3), torch.tensor([3, 500])
    assert torch.equal(loaded(x, t), model.eval()(x, t))


def test_position_features_are_the_decoded_pointer_position_and_need_velocity_data():
    from trainkit.config import load_config

    from action_ddim.augmentation import generate_sequences
    from action_ddim.config import Config
    from action_ddim.data import Normalizer
    from action_ddim.model import running_positions
    from action_ddim.train import build_model

    x = torch.from_numpy(generate_sequences(8, seed=0)).double()
    norm = Normalizer(increment_scale=20.0)
    z = norm.encode(x)
    # The model's extra input is exactly the position decoding would give, in model units ([-1, 1]).
    decoded = norm.decode_continuous(z)[..., :2]
    assert torch.allclose(running_positions(z, 20.0), 2 * decoded - 1, atol=1e-12)
    with pytest.raises(UserError, match="model.position_features"):
        build_model(load_config(Config, None, ["model.position_features=true"]), 64)
    cfg = load_config(Config, None, ["model.position_features=true", "data.increment_scale=20", "model.d_model=16",
                                     "model.nhead=2", "model.num_layers=1"])
    model = build_model(cfg, 64)
    assert model.position_features_scale == 20.0 and model.input_proj.in_features == 5
    # The feature is what input_proj reads beside the velocities (columns 3:5), and it reaches the output:
    # with those two weight columns zeroed the output changes. (Moving row 0 and watching every output step
    # would not show it: attention carries row 0's change everywhere without the feature too.)
    seen = {}
    hook = model.input_proj.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0].detach()))
    t = torch.zeros(8, dtype=torch.long)
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight)
        out = model(z.float(), t)
        hook.remove()
        assert torch.allclose(seen["x"][..., 3:5], running_positions(z, 20.0).float(), atol=1e-5)
        model.input_proj.weight[:, 3:5] = 0
        assert (model(z.float(), t) - out).abs().max() > 1e-4
    assert build_model(load_config(Config, None, ["data.increment_scale=20"]), 64).input_proj.in_features == 3
