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
    assert isinstance(out.grad_norm, torch.Tensor) and out.grad_norm.dim() == 0  # stays on the device
    assert out.grad_norm.item() == pytest.approx(expected.item(), rel=1e-5)
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
    with pytest.warns(UserWarning, match="inside an accumulation window"):  # resume only on a boundary
        t.load_state_dict(s.state_dict())
    assert t.micro_index == 1


class HostReadCounter:
    """Counts every way a tensor's value reaches Python (item, tolist, bool, float, int, cpu, numpy)."""

    METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(original))

    def _wrap(self, original):
        def counted(tensor, *args, **kwargs):
            self.count += 1
            return original(tensor, *args, **kwargs)

        return counted

    def take(self) -> int:
        n, self.count = self.count, 0
        return n


@pytest.mark.parametrize("fp16_scaler", [False, True])
def test_at_most_one_host_read_per_optimizer_step_and_none_per_micro_batch(monkeypatch, fp16_scaler):
    model, _ = setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # SGD itself reads nothing back
    scaler = torch.amp.GradScaler("cpu", enabled=fp16_scaler)
    stepper = OptimizerStep(model, opt, scaler=scaler, accum_steps=3, grad_clip=1.0)
    data = [torch.randn(2, 4) for _ in range(9)]
    counter = HostReadCounter(monkeypatch)
    per_micro = []
    outcomes = []
    for x in data:
        with stepper.micro_batch():
            loss = model(x).pow(2).mean()
            outcomes.append(stepper.backward(loss))
        per_micro.append(counter.take())
    monkeypatch.undo()
    assert [o.boundary for o in outcomes] == [False, False, True] * 3
    assert all(o.stepped for o in outcomes if o.boundary)
    assert per_micro == [0, 0, 1] * 3  # one read per optimizer step (the combined flag), none in between
    # The counter would have seen a per-micro-batch check (the old code's bool(isfinite(loss))):
    counter = HostReadCounter(monkeypatch)
    bool(torch.isfinite(torch.tensor(1.0)))
    float(outcomes[2].grad_norm)
    assert counter.take() == 2


def test_nan_in_one_micro_batch_of_a_window_skips_the_whole_step():
    model, opt = setup()
    stepper = OptimizerStep(model, opt, accum_steps=3)
    before = copy.deepcopy(list(model.parameters()))
    for i in range(3):
        x = torch.randn(2, 4)
        loss = model(x).pow(2).mean()
        out = stepper.backward(loss * float("nan") if i == 1 else loss)
    assert out.boundary and out.skipped_nonfinite and not out.stepped
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before)) and not opt.state


def test_fp16_overflow_backs_off_the_scale_without_counting_a_nonfinite_skip():
    model, opt = setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127, enabled=True)  # the scaled gradients overflow
    stepper = OptimizerStep(model, opt, scaler=scaler)
    before = copy.deepcopy(list(model.parameters()))
    out = stepper.backward(model(torch.randn(2, 4)).pow(2).mean() * 1e4)
    assert out.boundary and not out.stepped and not out.skipped_nonfinite
    assert stepper.num_overflow == 1 and stepper.num_skipped == 0 and scaler.get_scale() == 2.0 ** 126
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    scaler.update(1.0)
    out = stepper.backward(model(torch.randn(2, 4)).pow(2).mean())
    assert out.stepped and not all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sync_count_per_step():
    import warnings

    torch.manual_seed(0)
    model = nn.Linear(4, 1).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    stepper = OptimizerStep(model, opt, accum_steps=2, grad_clip=1.0)
    data = [torch.randn(2, 4, device="cuda") for _ in range(8)]
    stepper.backward(model(data[0]).pow(2).mean())  # warm-up (lazy state creation)
    stepper.backward(model(data[1]).pow(2).mean())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for x in data[2:]:
                stepper.backward(model(x).pow(2).mean())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= 3  # 6 micro-batches, accum 2 -> 3 optimizer steps, at most one sync each
