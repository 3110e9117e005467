"""Pure image metrics. Convention: images are float tensors in [0, 1], shape [N, 3, H, W].

- PSNR = 10 log10(1 / MSE) per image (data_range 1), then averaged over images; identical images are capped
  at 100 dB. Matches ``skimage.metrics.peak_signal_noise_ratio(gt, pred, data_range=1)``.
- SSIM is Wang et al. 2004: 11-tap Gaussian window (sigma 1.5), population covariance, K1 0.01, K2 0.03,
  valid region only (no padding), mean over pixels and channels per image, then averaged over images.
  Matches ``skimage.metrics.structural_similarity(gt, pred, data_range=1, channel_axis=-1,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` (checked in tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PSNR_CAP_DB = 100.0


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mse = ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).clamp(max=PSNR_CAP_DB)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(psnr_per_image(pred, target).mean())


def _gaussian_window(channels: int, device, dtype, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    # skimage builds the Gaussian with truncate=3.5 -> radius int(3.5 * 1.5 + 0.5) = 5 -> 11 taps
    coords = torch.arange(size, device=device, dtype=dtype) - size // 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    w2 = torch.outer(g, g)
    return w2.expand(channels, 1, size, size).contiguous()


def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Differentiable SSIM map [N, C, H-10, W-10] (usable as a loss: 1 - mean), always in fp32: under a bf16/fp16
    autocast the variances E[x^2] - mu^2 cancel catastrophically, so autocast is switched off here."""
    with torch.autocast(pred.device.type, enabled=False):
        return _ssim_map(pred.float(), target.float(), data_range)


def _ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    c = pred.shape[1]
    win = _gaussian_window(c, pred.device, pred.dtype)
    k = win.shape[-1]
    if pred.shape[-1] < k or pred.shape[-2] < k:
        raise ValueError(f"SSIM needs frames of at least {k}x{k} pixels, got {tuple(pred.shape[-2:])}")

    def filt(x):
        return F.conv2d(x, win, groups=c)

    mu_x, mu_y = filt(pred), filt(target)
    sxx = filt(pred * pred) - mu_x ** 2
    syy = filt(target * target) - mu_y ** 2
    sxy = filt(pred * target) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ssim_map(pred, target).flatten(1).mean(1)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(ssim_per_image(pred, target).mean())
