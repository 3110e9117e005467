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
