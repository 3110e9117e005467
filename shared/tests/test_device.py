import pytest
import torch

from trainkit.device import autocast, make_grad_scaler, resolve_device, seed_everything
from trainkit.errors import UserError


def test_resolve_cpu_and_auto_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_cuda_is_user_error(monkeypatch, spec):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device(spec)


def test_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(UserError, match="cuda:0..cuda:0"):
        resolve_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"


def test_unknown_device():
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_bf16_autocast_on_cpu_and_fp32_noop():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast("cpu", "bf16"):
        assert lin(x).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert lin(x).dtype == torch.float32
    with pytest.raises(UserError, match="unknown precision"):
        autocast("cpu", "fp8")


def test_scaler_only_for_fp16_cuda():
    assert not make_grad_scaler("cpu", "fp16").is_enabled()
    assert not make_grad_scaler("cpu", "bf16").is_enabled()


def test_seed_everything_reproducible():
    seed_everything(3)
    a = torch.rand(3)
    seed_everything(3)
    assert torch.equal(a, torch.rand(3))


def test_make_generator_matches_the_device_type():
    from trainkit.device import TargetedGenerator, make_generator

    g = make_generator("cpu", 7)
    assert isinstance(g, torch.Generator) and g.device.type == "cpu"
    assert torch.equal(torch.randn(5, generator=g), torch.randn(5, generator=make_generator(torch.device("cpu"), 7)))
    meta = make_generator("meta", 7)
    assert isinstance(meta, TargetedGenerator) and meta.target_device.type == "meta"
    assert torch.randn(3, generator=meta, device="meta").device.type == "meta"


def test_make_generator_asks_torch_for_a_cuda_generator(monkeypatch):
    """Without a GPU, check that a CUDA device gets a CUDA generator requested (not a CPU one)."""
    from trainkit import device as tk_device

    asked = []

    class FakeGenerator:
        def __init__(self, device="cpu"):
            asked.append(torch.device(device))

        def manual_seed(self, seed):
            asked.append(seed)
            return self

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch, "Generator", FakeGenerator)
    tk_device.make_generator("cuda:1", 3)
    assert asked == [torch.device("cuda", 1), 3]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_make_generator_on_real_cuda():
    from trainkit.device import make_generator

    g = make_generator("cuda", 0)
    assert g.device.type == "cuda"
    assert torch.randn(3, generator=g, device="cuda").device.type == "cuda"
