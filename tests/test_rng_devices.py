"""Issue 23 audit: wubu_gan's explicit-generator draws on the meta device inside strict_rng_devices.

action_ddim and worldmodel have such tests in their packages; wubu_gan's files are being moved today, so its
check lives here. On ``meta`` a CPU ``torch.Generator()`` would raise RngDeviceMismatch: exactly the draw that
crashes on CUDA. (dsn and amt draw only from the global per-device RNG: dropout, Bernoulli.sample.)
"""
import pytest
import torch

from trainkit.device import make_generator
from trainkit.testing import RngDeviceMismatch, strict_rng_devices

wubu_train = pytest.importorskip("wubu_gan.train")
wubu_eval = pytest.importorskip("wubu_gan.evaluate")

META = torch.device("meta")


def test_wubu_augmentation_draws_with_a_generator_of_the_frames_device():
    frames = torch.empty(2, 4, 3, 8, 8, device=META)
    flow = torch.empty(2, 3, 2, 8, 8, device=META)
    with strict_rng_devices():
        out, oflow = wubu_train.augment_clips(frames, flow, True, True, make_generator(META, 0))
        assert out.shape == frames.shape and oflow.shape == flow.shape
        with pytest.raises(RngDeviceMismatch):  # the check is live: a CPU generator is caught
            wubu_train.augment_clips(frames, flow, True, True, torch.Generator().manual_seed(0))


def test_wubu_fixed_noise_is_drawn_on_the_target_device():
    with strict_rng_devices():
        z = wubu_eval.fixed_noise(3, 8, seed=1, device=META)
    assert z.device.type == "meta" and z.shape == (3, 8)
