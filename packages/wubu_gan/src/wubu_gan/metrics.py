"""Pure metric functions: PSNR/SSIM on [0, 1] with scikit-image's conventions, LPIPS only with cached weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clipped."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def psnr_per_frame(pred01: torch.Tensor, target01: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (N,) PSNR in dB per frame, data_range 1 (= skimage.metrics.peak_signal_noise_ratio)."""
    mse = (pred01.double() - target01.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def ssim_per_frame(pred01: torch.Tensor, target01: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N,) SSIM per frame with scikit-image (7x7 window, data_range 1, channel_axis)."""
    from skimage.metrics import structural_similarity

    p = pred01.permute(0, 2, 3, 1).cpu().double().numpy()
    t = target01.permute(0, 2, 3, 1).cpu().double().numpy()
    win = min(7, p.shape[1], p.shape[2])
    win -= (win + 1) % 2  # odd
    return np.array([structural_similarity(a, b, channel_axis=-1, data_range=1.0, win_size=win) for a, b in zip(p, t)])


LPIPS_MIN_SIDE = 32  # AlexNet's third max-pool has no output below ~31 px


def lpips_model(device, image_hw: tuple[int, int] | None = None):
    """(LPIPS-alex model, None) when the AlexNet trunk weights are in the local torch cache, else (None, reason).
    Frames smaller than LPIPS_MIN_SIDE give (None, reason) too: AlexNet cannot score them.

    lpips builds ``torchvision.models.alexnet(pretrained=True)``, which downloads when the file is missing;
    we check for the file first so nothing is ever fetched, and never report a random-trunk number.
    """
    if image_hw is not None and min(image_hw) < LPIPS_MIN_SIDE:
        return None, f"LPIPS unavailable: frames of {image_hw[0]}x{image_hw[1]} are below AlexNet's {LPIPS_MIN_SIDE} px"
    path = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    if not path.is_file():
        return None, f"LPIPS unavailable: AlexNet weights not in the local torch cache ({path})"
    try:
        import lpips

        model = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
        model.requires_grad_(False)
        return model, None
    except Exception as err:  # noqa: BLE001 - report, never crash validation
        return None, f"LPIPS unavailable: {type(err).__name__}: {err}"


@torch.no_grad()
def lpips_per_frame(model, pred01: torch.Tensor, target01: torch.Tensor) -> torch.Tensor:
    return model(pred01 * 2 - 1, target01 * 2 - 1).flatten()
