"""Device paths checked on a CPU-only machine (issue 13, item 1).

A CPU ``torch.Generator`` passed to a draw on CUDA/MPS crashes there, and MPS has no float64; CI has
neither device. The sampling, loss and plot paths therefore run here on the ``meta`` device (shapes
only, no data) under a dispatch mode that records

- every tensor created on a non-CPU device as float64 (what MPS rejects), and
- every random draw whose generator was not made (by ``make_generator``) for the device it fills.

No real meta generator exists, so ``make_generator`` is replaced by a spy that hands out a CPU
generator with a fresh seed and remembers, by that seed, which device it was asked for; torch
itself lets a CPU generator fill meta tensors, so only the spy's record can tell a right generator
from a wrong one.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import action_ddim.diffusion as D
import action_ddim.evaluate as E
import action_ddim.train as T
from action_ddim.config import Config


class StrictDevices(TorchDispatchMode):
    def __init__(self, made_for: dict):
        super().__init__()
        self.made_for = made_for
        self.problems: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        gen = kwargs.get("generator")
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(o, torch.Tensor):
                continue
            if o.device.type != "cpu" and o.dtype == torch.float64:
                self.problems.append(f"{func}: float64 tensor on {o.device}")
            if gen is not None:
                made = self.made_for.get(gen.initial_seed(), f"{gen.device.type} (not from make_generator)")
                if made != o.device.type:
                    self.problems.append(f"{func}: generator made for {made} fills a {o.device.type} tensor")
        return out


@pytest.fixture
def made_for(monkeypatch):
    registry = {}

    def spy(device, seed):
        # A stand-in (torch has no meta generators), told apart by its seed: values on meta are moot.
        g = torch.Generator().manual_seed(10**12 + len(registry))
        registry[g.initial_seed()] = torch.device(device).type
        return g

    def check(generator, device):
        if generator is not None and registry.get(generator.initial_seed()) != torch.device(device).type:
            raise ValueError(f"generator made for {registry.get(generator.initial_seed())} draws on {device}")

    for module in (D, E, T):
        monkeypatch.setattr(module, "make_generator", spy)
    monkeypatch.setattr(D, "check_generator", check)
    return registry


def _meta_setup(eta=1.0):
    cfg = Config()
    cfg.model.d_model, cfg.model.nhead, cfg.model.num_layers = 16, 2, 1
    cfg.diffusion.num_inference_steps, cfg.diffusion.eta = 4, eta
    model = T.build_model(cfg, 12).to("meta").eval()
    return cfg, model, T.build_diffusion(cfg), torch.zeros(3, 12, 3, device="meta")


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sampling_loss_and_plot_paths_on_meta_keep_generators_and_tables_on_the_device(made_for, eta):
    cfg, model, diffusion, x0 = _meta_setup(eta)
    with StrictDevices(made_for) as mode:
        loss = diffusion.loss(model, x0)                                       # training step
        val = E.seeded_loss_sum(model, diffusion, x0, E.make_generator("meta", 0))   # val/loss
        gen = E.draw_samples(model, diffusion, 5, 12, 4, cfg.diffusion, "meta", seed=1)  # val/gen, `sample`
        noised, rec, samples, _ = T.plot_tensors(model, diffusion, x0, cfg)    # the plots
    assert mode.problems == []
    assert loss.device.type == val.device.type == gen.device.type == samples.device.type == "meta"
    assert gen.shape == (5, 12, 3) and samples.shape == (8, 12, 3) and rec.shape == noised.shape == x0.shape


def test_a_generator_of_another_device_fails_fast_on_cpu():
    cfg, model, diffusion, x0 = _meta_setup()
    with pytest.raises(ValueError, match="cpu generator cannot draw on meta"):
        diffusion.sample(model, x0.shape, 4, eta=1.0, generator=torch.Generator().manual_seed(0), device="meta")
    with pytest.raises(ValueError, match="cpu generator cannot draw on meta"):
        diffusion.loss(model, x0, generator=torch.Generator())


def test_schedule_table_is_converted_once_per_device_and_dtype():
    d = D.Diffusion("cosine", 1000, "v")
    table = d.table("meta")
    assert table.dtype == torch.float32 and table.device.type == "meta"
    assert d.table("meta") is table and d.table(torch.device("meta")) is table  # cached, no copy per call
    cpu = d.table("cpu")
    assert torch.equal(cpu, d.alphas_cumprod.float())
    t = torch.tensor([0, 500, 999])
    assert torch.equal(d.abar(t, torch.zeros(3, 2)).flatten(), d.alphas_cumprod[t].float())
