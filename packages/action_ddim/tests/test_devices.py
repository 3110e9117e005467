"""Device paths checked on a CPU-only machine (issue 13, item 1).

A CPU ``torch.Generator`` passed to a draw on CUDA/MPS crashes there, and MPS has no float64; CI has
neither device. The sampling, loss and plot paths therefore run here on the ``meta`` device (shapes
only, no data) with

- ``trainkit.testing.strict_rng_devices()``: a draw whose generator stands for another device type
  than the tensor it fills raises (``make_generator("meta")`` gives a generator standing for meta, a
  stray ``torch.Generator()`` is CPU), and
- a dispatch mode recording every float64 tensor created on a non-CPU device (what MPS rejects, e.g.
  the float64 schedule table moved to the device on every call).
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import action_ddim.diffusion as D
import action_ddim.evaluate as E
import action_ddim.train as T
from action_ddim.config import Config
from trainkit.device import make_generator
from trainkit.testing import strict_rng_devices


class NoFloat64OnDevice(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.problems: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor) and o.device.type != "cpu" and o.dtype == torch.float64:
                self.problems.append(f"{func}: float64 tensor on {o.device}")
        return out


def _meta_setup(eta=1.0):
    cfg = Config()
    cfg.model.d_model, cfg.model.nhead, cfg.model.num_layers = 16, 2, 1
    cfg.diffusion.num_inference_steps, cfg.diffusion.eta = 4, eta
    model = T.build_model(cfg, 12).to("meta").eval()
    return cfg, model, T.build_diffusion(cfg), torch.zeros(3, 12, 3, device="meta")


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sampling_loss_and_plot_paths_on_meta_keep_generators_and_tables_on_the_device(eta):
    cfg, model, diffusion, x0 = _meta_setup(eta)
    with strict_rng_devices(), NoFloat64OnDevice() as mode:
        loss = diffusion.loss(model, x0)                                           # training step
        val = E.seeded_loss_sum(model, diffusion, x0, make_generator("meta", 0))   # val/loss
        gen = E.draw_samples(model, diffusion, 5, 12, 4, cfg.diffusion, "meta", seed=1)  # val/gen, `sample`
        noised, rec, samples, _ = T.plot_tensors(model, diffusion, x0, cfg)        # the plots
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
