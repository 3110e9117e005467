import pytest
import torch

from trainkit.device import make_generator
from trainkit.testing import RngDeviceMismatch, strict_rng_devices

META = torch.device("meta")


def sample(shape, device, generator, steps=3):
    """A miniature diffusion sampler: the kind of code whose device handling the check is for."""
    x = torch.randn(shape, generator=generator, device=device)
    for _ in range(steps):
        x = 0.9 * x + 0.1 * torch.randn_like(x)  # global-RNG draws are allowed
        x = x + 0.01 * torch.randn(x.shape, generator=generator, device=x.device)
    return x


def test_cpu_generator_feeding_a_meta_draw_is_caught():
    original = torch.randn
    with strict_rng_devices():
        with pytest.raises(RngDeviceMismatch, match="cpu generator fills a tensor on meta"):
            torch.randn(2, 3, generator=torch.Generator(), device="meta")
        with pytest.raises(RngDeviceMismatch):  # the sampler written with a CPU generator: crashes on CUDA
            sample((2, 4), META, torch.Generator().manual_seed(0))
        out = sample((2, 4), META, make_generator(META, 0))  # the fixed code runs
        assert out.device == META and out.shape == (2, 4)
        assert sample((2, 4), torch.device("cpu"), make_generator("cpu", 0)).device.type == "cpu"
    assert torch.randn is original  # everything restored
    torch.randn(2, generator=torch.Generator(), device="meta")  # torch itself does not complain on meta


@pytest.mark.parametrize("draw", [
    lambda g: torch.rand(3, generator=g, device="meta"),
    lambda g: torch.randint(0, 5, (3,), generator=g, device="meta"),
    lambda g: torch.randperm(5, generator=g, device="meta"),
    lambda g: torch.normal(torch.zeros(3, device="meta"), 1.0, generator=g),
    lambda g: torch.bernoulli(torch.full((3,), 0.5, device="meta"), generator=g),
    lambda g: torch.multinomial(torch.ones(4, device="meta"), 2, generator=g),
    lambda g: torch.rand_like(torch.zeros(3, device="meta"), generator=g),
    lambda g: torch.empty(3, device="meta").normal_(generator=g),
    lambda g: torch.empty(3, device="meta").uniform_(generator=g),
    lambda g: torch.nn.init.normal_(torch.empty(3, device="meta"), generator=g),
])
def test_every_covered_draw_checks_its_generator(draw):
    with strict_rng_devices():
        with pytest.raises(RngDeviceMismatch):
            draw(torch.Generator())
        draw(make_generator(META, 1))


def test_a_device_generator_feeding_a_cpu_draw_is_caught_too():
    # make_generator("meta") stands for an accelerator generator (like torch.Generator("cuda")): using it
    # for a CPU tensor (e.g. a CPU randperm with the GPU generator) also raises on a GPU.
    with strict_rng_devices(), pytest.raises(RngDeviceMismatch, match="meta generator fills a tensor on cpu"):
        torch.randperm(4, generator=make_generator(META, 0))
