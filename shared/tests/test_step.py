import copy

import pytest
import torch
from torch import nn

from trainkit.errors import UserError
from trainkit.step import OptimizerStep


def setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    return model, opt


def test_accumulation_matches_one_big_batch():
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    m1, o1 = setup()
    s1 = OptimizerStep(m1, o1, accum_steps=1)
    with s1.micro_batch():
        s1.backward(nn.functional.mse_loss(m1(x), y))
    m2, o2 = setup()
    s2 = OptimizerStep(m2, o2, accum_steps=4)
    outcomes = []
    for i in range(4):
        with s2.micro_batch():
            outcomes.append(s2.backward(nn.functional.mse_loss(m2(x[2 * i:2 * i + 2]), y[2 * i:2 * i + 2])))
    assert [o.boundary for o in outcomes] == [False, False, False, True]
    assert outcomes[-1].stepped
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b)


def test_clip_returns_total_norm_and_clips():
    model, opt = setup()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    stepper = OptimizerStep(model, opt, grad_clip=0.5)
    loss = 1000.0 * model(torch.ones(1, 4)).sum()
    expected = torch.sqrt(sum((g ** 2).sum() for g in torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)))
    out = stepper.backward(loss)
    assert out.grad_norm == pytest.approx(expected.item(), rel=1e-5)
    moved = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert moved.item() == pytest.approx(0.5, rel=1e-4)  # lr 1 * clipped norm 0.5


def test_nan_loss_skips_step_and_leaves_optimizer_state_untouched():
    model, opt = setup()
    stepper = OptimizerStep(model, opt, max_consecutive_nonfinite=3)
    stepper.backward(model(torch.randn(2, 4)).pow(2).mean())  # one good step creates Adam state
    params = copy.deepcopy(list(model.parameters()))
    state = copy.deepcopy(opt.state_dict())
    out = stepper.backward(model(torch.randn(2, 4)).sum() * float("nan"))
    assert out.skipped_nonfinite and not out.stepped
    for p, q in zip(model.parameters(), params):
        assert torch.equal(p, q)
    for k, v in opt.state_dict()["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(v[name], state["state"][k][name])
            assert torch.isfinite(v[name]).all()
    assert all(p.grad is None for p in model.parameters())
    assert stepper.num_skipped == 1


def test_consecutive_nonfinite_raises_user_error_with_advice():
    model, opt = setup()
    stepper = OptimizerStep(model, opt, max_consecutive_nonfinite=3)
    for _ in range(2):
        stepper.backward(model(torch.randn(2, 4)).sum() * float("inf"))
    stepper.backward(model(torch.randn(2, 4)).pow(2).mean())  # a good step resets the streak
    assert stepper.consecutive_skipped == 0
    stepper.backward(model(torch.randn(2, 4)).sum() * float("nan"))
    stepper.backward(model(torch.randn(2, 4)).sum() * float("nan"))
    with pytest.raises(UserError) as e:
        stepper.backward(model(torch.randn(2, 4)).sum() * float("nan"))
    assert "3 optimizer steps in a row" in str(e.value) and "lower the learning rate" in str(e.value)
    assert "--detect_anomaly" in str(e.value)


def test_anomaly_detection_switch_finds_the_op():
    model, opt = setup()
    stepper = OptimizerStep(model, opt, detect_anomaly=True)
    with pytest.raises(RuntimeError, match="nan"), pytest.warns(UserWarning):
        with stepper.micro_batch():
            out = model(torch.randn(2, 4))
            loss = torch.sqrt(out - out.detach() - 1.0).sum()  # sqrt of a negative number
            stepper.backward(loss)


def test_state_dict_roundtrip():
    model, opt = setup()
    s = OptimizerStep(model, opt, accum_steps=3)
    s.backward(model(torch.randn(2, 4)).sum())
    t = OptimizerStep(model, opt, accum_steps=3)
    t.load_state_dict(s.state_dict())
    assert t.micro_index == 1
