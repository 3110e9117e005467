import io

import torch

from wubu_gan.qcontrol import QController, trend_bin, value_bin


def test_trend_and_value_bins():
    hist = [1.0, 1.0, 1.0, 1.0]
    assert trend_bin(hist, 0.5) == 0   # -50% vs median 1.0
    assert trend_bin(hist, 0.95) == 1  # -5%
    assert trend_bin(hist, 1.01) == 2
    assert trend_bin(hist, 1.1) == 3
    assert trend_bin(hist, 2.0) == 4
    assert [value_bin(v, [0.35, 0.65, 0.85]) for v in (0.1, 0.5, 0.7, 0.9)] == [0, 1, 2, 3]


def _m(**kw):
    base = dict(recon=0.2, kl=10.0, g_adv=0.8, g_total=3.0, d_real=0.5, d_fake=0.5, d_total=0.5, lambda_kl=1e-4,
                lr=3e-4, momentum=0.9, val=15.0)
    base.update(kw)
    return base


def test_rewards_on_hand_made_histories():
    g = QController("gen")
    for r in (0.3, 0.3, 0.3, 0.3):
        g._hist("recon").append(r)
        g._hist("g_adv").append(0.8)
        g._hist("g_total").append(3.0)
    better = g.reward(_m(recon=0.2))
    worse = g.reward(_m(recon=0.4))
    assert better > 1.0 and worse < 0 and better - worse > 2
    d = QController("disc")
    healthy = d.reward(_m(d_total=0.5))   # +1.5 in (0.4, 0.65)
    too_strong = d.reward(_m(d_total=0.2, d_real=0.5, d_fake=0.5))  # -0.75
    assert healthy == 1.5 and too_strong == -0.75
    assert d.reward(_m(d_total=0.5, g_adv=0.1)) == 1.5 - 0.3


def test_state_survives_weights_only_round_trip_and_resume_is_identical():
    a = QController("gen", seed=3)
    for i in range(30):
        a.step(_m(recon=0.3 - 0.005 * i, g_adv=0.7 + 0.01 * (i % 3)))
    buf = io.BytesIO()
    torch.save({"q": a.state_dict()}, buf)
    buf.seek(0)
    b = QController("gen", seed=99)
    b.load_state_dict(torch.load(buf, weights_only=True)["q"])
    assert b.q == a.q and b.epsilon == a.epsilon
    for i in range(10):  # the same future: same actions, same tables
        m = _m(recon=0.15 + 0.01 * (i % 2))
        assert a.step(m) == b.step(m)
    assert a.q == b.q


def test_epsilon_schedule_and_lambda_kl_controller():
    q = QController("lkl")
    for _ in range(3):
        scales = q.step(_m())
        assert set(scales) == {"lklscale"} and scales["lklscale"] in (0.94, 0.97, 1.0, 1.03, 1.06)
    assert abs(q.epsilon - 0.5 * 0.9995 ** 3) < 1e-12
