import torch

from trainkit.ema import EMA


def test_ema_warmup_and_average():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9, warmup=True, inv_gamma=1.0, power=1.0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay_1 = 1 - 2^-1 = 0.5
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.5))
    for _ in range(100):
        ema.update(model)
    assert ema.current_decay == 0.9  # capped
    assert not ema.module.weight.requires_grad
    other = EMA(model, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 101 and torch.equal(other.module.weight, ema.module.weight)


def test_ema_matches_the_formula_for_params_and_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.8, warmup=False)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        model.train()
        model(torch.randn(5, 3)).sum().backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        ema.update(model)
        for k, v in model.state_dict().items():
            expected[k] = v.clone() if not v.dtype.is_floating_point else 0.8 * expected[k] + 0.2 * v
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-7)
    assert ema.module.state_dict()["1.num_batches_tracked"].item() == 3  # integer buffer copied
