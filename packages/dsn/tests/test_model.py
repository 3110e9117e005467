"""Policy networks: shapes, parameter counts, padding masks, multi-scale inputs, config checks."""
import pytest
import torch

torch.set_num_threads(1)  # the shared 2-core machine: tiny ops are much slower with thread contention

from dsn import DSNAdvanced, DSNBaseline, DSNConfig
from dsn.cache import VideoWork
from dsn.evaluate import collate_pyramids
from dsn.model import SinusoidalPositions, build_model, count_parameters, pool_pyramid
from trainkit.errors import UserError


def test_baseline_parameter_count_matches_formula():
    # One BiLSTM layer 64 -> 128 per direction + Linear(256, 1): the note's ~200K baseline.
    m = DSNBaseline(DSNConfig(model_type="baseline", in_dim=64, enc_hidden=128))
    lstm = 2 * 4 * (64 * 128 + 128 * 128 + 2 * 128)
    assert count_parameters(m) == lstm + 257 == 198_913
    assert set(dict(m.named_children())) == {"encoder", "policy"}
    # The original DSN (1024 -> 256): 2,626,049 parameters.
    assert count_parameters(DSNBaseline(DSNConfig(model_type="baseline", in_dim=1024, enc_hidden=256))) == 2_626_049


@pytest.mark.parametrize("pos", ["sinusoidal", "learned", "none"])
@pytest.mark.parametrize("lstm", [False, True])
def test_advanced_outputs_probabilities(pos, lstm):
    cfg = DSNConfig(in_dim=12, enc_hidden=16, num_attn_heads=4, num_attn_layers=1, num_scales=3,
                    pos_encoding_type=pos, use_lstm_in_advanced=lstm)
    m = DSNAdvanced(cfg, init_prob=0.06)
    p = m(torch.randn(2, 23, 12))
    assert p.shape == (2, 23)
    assert torch.all((p > 0) & (p < 1))
    # The head starts at the budget so the selection ratio need not walk down from 0.5.
    assert abs(p.mean().item() - 0.06) < 0.04
    p.sum().backward()
    assert all(q.grad is not None for q in m.parameters())


@pytest.mark.parametrize("model_type", ["baseline", "advanced"])
def test_padding_mask_makes_batching_invisible(model_type):
    torch.manual_seed(0)
    cfg = DSNConfig(model_type=model_type, in_dim=8, enc_hidden=16, num_attn_heads=2, num_attn_layers=2,
                    num_scales=3, pos_encoding_type="learned", use_lstm_in_advanced=True)
    m = build_model(cfg).eval()
    a, b = torch.randn(1, 19, 8), torch.randn(1, 11, 8)
    x = torch.zeros(2, 19, 8)
    x[0], x[1, :11] = a[0], b[0]
    x[1, 11:] = 100.0  # garbage in the padding must not leak
    mask = torch.zeros(2, 19, dtype=torch.bool)
    mask[0], mask[1, :11] = True, True
    with torch.no_grad():
        batched = m(x, mask)
        alone_a, alone_b = m(a), m(b)
    torch.testing.assert_close(batched[0], alone_a[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1, :11], alone_b[0], atol=1e-5, rtol=1e-5)
    assert torch.all(batched[1, 11:] == 0)


def test_pyramid_hand_computed_and_cached_collation_matches():
    x = torch.arange(5, dtype=torch.float32).view(1, 5, 1)
    levels = pool_pyramid(x, None, 3)
    assert levels[1][0].flatten().tolist() == [0.5, 2.5, 4.0]  # windows {0,1},{2,3},{4}
    assert levels[2][0].flatten().tolist() == [1.5, 4.0]
    # Per-video pyramids (what the cache stores) collate to exactly the batched pooling.
    feats = [torch.randn(9, 4), torch.randn(6, 4)]
    work = VideoWork(None)
    collated = collate_pyramids([work.pyramid(str(i), f, 3) for i, f in enumerate(feats)])
    x = torch.zeros(2, 9, 4)
    x[0], x[1, :6] = feats[0], feats[1]
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0], mask[1, :6] = True, True
    for (cx, cm), (bx, bm) in zip(collated, pool_pyramid(x, mask, 3)):
        assert torch.equal(cm, bm)
        assert torch.equal(cx, bx)


def test_ablation_variants_build_and_run():
    for over in ({"num_attn_layers": 0}, {"num_scales": 1}, {"num_scales": 4, "num_attn_layers": 3}):
        m = DSNAdvanced(DSNConfig(in_dim=6, enc_hidden=8, num_attn_heads=2, **over))
        assert m(torch.randn(1, 13, 6)).shape == (1, 13)
    assert len(DSNAdvanced(DSNConfig(in_dim=6, enc_hidden=8, num_attn_heads=2, num_attn_layers=0)).attn_layers) == 0


def test_accepts_plain_dict_config():
    cfg = DSNConfig(in_dim=6, enc_hidden=8, num_attn_heads=2)
    m = DSNAdvanced(cfg.to_dict())
    assert m.config == cfg
    with pytest.raises(UserError, match="unknown config key 'nonsense'"):
        DSNAdvanced({**cfg.to_dict(), "nonsense": 1})


@pytest.mark.parametrize("kwargs,where", [
    ({"enc_hidden": 10, "num_attn_heads": 4}, "--num_attn_heads"),
    ({"num_scales": 0}, "--num_scales"),
    ({"num_attn_layers": -1}, "--num_attn_layers"),
    ({"pos_scale": -0.5}, "model.pos_scale"),
])
def test_config_validation(kwargs, where):
    with pytest.raises(UserError) as err:
        DSNConfig(**kwargs)
    assert err.value.where == where


def test_sinusoidal_encoding_is_scaled_by_pos_scale():
    import math

    pe = SinusoidalPositions(4, scale=0.2)(3, "cpu", torch.float32)
    # Row t = 0.2 * [sin(t), cos(t), sin(t / 100), cos(t / 100)] (10000 ** (2 / 4) = 100).
    want = [0.2 * v for v in (math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02))]
    assert pe[2].tolist() == pytest.approx(want, abs=1e-6)
    # The scale is the only difference between the encodings: scale 0 is "none", with the same weights.
    x = torch.randn(2, 11, 6)
    base = dict(in_dim=6, enc_hidden=8, num_attn_heads=2, num_attn_layers=1, num_scales=2)
    zero = DSNAdvanced(DSNConfig(**base, pos_encoding_type="sinusoidal", pos_scale=0.0))
    none = DSNAdvanced(DSNConfig(**base, pos_encoding_type="none"))
    none.load_state_dict(zero.state_dict())
    assert torch.allclose(zero(x), none(x), atol=1e-6)
    full = DSNAdvanced(DSNConfig(**base, pos_encoding_type="sinusoidal", pos_scale=1.0))
    full.load_state_dict(zero.state_dict())
    assert not torch.allclose(full(x), none(x), atol=1e-4)


def test_default_pos_scale_and_old_checkpoint_configs():
    # Default: the encoding's std (0.63 * scale) stays below the ~0.24 frame-to-frame std of the fused content.
    assert DSNConfig().pos_scale == 0.1
    # A config dict from a checkpoint saved before pos_scale existed keeps the scale it was trained with.
    old = DSNConfig(in_dim=6, enc_hidden=8, num_attn_heads=2).to_dict()
    del old["pos_scale"]
    assert DSNConfig.from_any(old).pos_scale == 1.0


def test_baseline_ignores_attention_settings_it_does_not_use():
    # issue 13 item 11: the baseline was refused because 4 (unused) heads do not divide 18.
    from dsn.config import DSNConfig, TrainConfig
    from trainkit.config import load_config
    from trainkit.errors import UserError

    cfg = load_config(TrainConfig, None, [], {"model.model_type": "baseline", "model.enc_hidden": 18})
    assert cfg.model.enc_hidden == 18
    with pytest.raises(UserError, match="expected a positive divisor of enc_hidden=18"):
        DSNConfig(model_type="advanced", enc_hidden=18)
    DSNConfig(model_type="advanced", enc_hidden=18, num_attn_layers=0)  # no attention, no heads to divide


def test_device_paths_use_no_host_generator_or_float64():
    """issue 13 item 1's class of bug, checked in dsn: a CPU torch.Generator (or a float64 tensor, which MPS
    rejects) reaching a device tensor. The tests run on CPU only, so this is a tripwire over the sources: the one
    torch generator is the epoch order, drawn on the host and consumed as a Python list; episodes are sampled by
    Bernoulli(p) on p's own device; baselines and metrics use numpy generators on host arrays."""
    from pathlib import Path

    import dsn

    src = Path(dsn.__file__).parent
    uses = [(f.name, line.strip()) for f in sorted(src.glob("*.py")) for line in f.read_text().splitlines()
            if "generator=" in line or "torch.Generator(" in line]
    assert len(uses) == 1 and uses[0][0] == "train.py", uses
    assert "torch.randperm(" in uses[0][1] and uses[0][1].endswith(".tolist()"), uses
    for name in ("model.py", "reward.py", "train.py", "evaluate.py", "cache.py"):
        text = (src / name).read_text()
        assert "torch.float64" not in text and ".double()" not in text, name
