"""The guide's loss terms, each returned separately so each can be logged.

total = recon_weight * MSE(reconstruction, frame)
      + pred_weight * MSE(1-step prediction, next frame)
      + perceptual_weight * perceptual(both of the above)
      + latent_reg_weight * mean(z^2)                         (keeps latents bounded)
      + temporal_weight * MSE(open-loop rollout from the first frame, frames 1..T-1)   (multi-step loss)

The perceptual term is LPIPS (AlexNet) only when torchvision's AlexNet weights are already in the local
torch hub cache (nothing downloads); otherwise the weights-free "ssim_grad" loss: (1 - SSIM) plus the
L1 difference of horizontal/vertical image gradients (Mathieu et al. 2015).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainkit.errors import UserError

from .metrics import ssim_map

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def alexnet_weights_cached() -> Path | None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    return path if path.is_file() else None


def gradient_difference(pred, target):
    def grads(x):
        return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]

    (px, py), (tx, ty) = grads(pred), grads(target)
    return (px - tx).abs().mean() + (py - ty).abs().mean()


class SsimGradLoss(nn.Module):
    name = "ssim_grad"

    def forward(self, pred, target):  # images in [0, 1]; fp32 even inside an AMP autocast (see ssim_map)
        with torch.autocast(pred.device.type, enabled=False):
            pred, target = pred.float(), target.float()
            return (1 - ssim_map(pred, target).mean()) + gradient_difference(pred, target)


class LpipsLoss(nn.Module):
    name = "lpips"

    def __init__(self):
        super().__init__()
        import lpips

        self.net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=False, verbose=False)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.eval()

    def forward(self, pred, target):  # images in [0, 1]
        with torch.autocast(pred.device.type, enabled=False):
            return self.net(pred.float(), target.float(), normalize=True).mean()

    def train(self, mode: bool = True):  # the frozen network always stays in eval mode
        return super().train(False)


LPIPS_MIN_SIDE = 32   # AlexNet's strides and max-pools leave no feature map below this (27 px -> 0x1)


def build_perceptual(kind: str, image_size: tuple[int, int] | None = None, log=None) -> nn.Module:
    """``auto``: LPIPS if its backbone weights are cached and the frames are large enough for AlexNet, else
    ssim_grad. ``lpips`` without cached weights (it would download) or on too-small frames is a one-line error.
    ``image_size`` is (width, height)."""
    small = image_size is not None and min(image_size) < LPIPS_MIN_SIDE
    if kind == "lpips" and small:
        raise UserError(f"loss.perceptual=lpips on {image_size[0]}x{image_size[1]} frames", "loss.perceptual",
                        f"frames of at least {LPIPS_MIN_SIDE} px on each side for AlexNet, or ssim_grad / auto")
    if kind in ("auto", "lpips") and alexnet_weights_cached() is not None:
        if not small:
            return LpipsLoss()
        if log:
            log(f"perceptual loss: ssim_grad (frames {image_size[0]}x{image_size[1]} are below LPIPS/AlexNet's "
                f"{LPIPS_MIN_SIDE} px minimum)")
    if kind == "lpips":
        raise UserError("loss.perceptual=lpips but the AlexNet weights are not in the torch cache",
                        str(Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE),
                        "place the file there (nothing is downloaded), or use loss.perceptual=ssim_grad or auto")
    return SsimGradLoss()


def compute_losses(out: dict, frames: torch.Tensor, weights, perceptual: nn.Module) -> dict[str, torch.Tensor]:
    """``out`` from WorldModel.forward; ``frames`` [B, T, 3, H, W] in [0, 1]. Returns every term and ``loss``."""
    target = frames * 2 - 1
    recon, pred = out["reconstructed"].float(), out["predicted"].float()
    terms = {"recon_loss": F.mse_loss(recon, target), "pred_loss": F.mse_loss(pred, target[:, 1:])}
    if weights.perceptual_weight > 0:
        unit = lambda x: ((x + 1) * 0.5).clamp(0, 1).flatten(0, 1)  # noqa: E731
        terms["perceptual_loss"] = 0.5 * (perceptual(unit(recon), frames.flatten(0, 1))
                                          + perceptual(unit(pred), frames[:, 1:].flatten(0, 1)))
    else:
        terms["perceptual_loss"] = torch.zeros((), device=frames.device)
    z = out["latents"].float()
    terms["latent_reg_loss"] = (z ** 2).mean()
    if "rollout" in out:
        terms["temporal_loss"] = F.mse_loss(out["rollout"].float(), target[:, 1:])
    else:
        terms["temporal_loss"] = torch.zeros((), device=frames.device)
    terms["loss"] = (weights.recon_weight * terms["recon_loss"] + weights.pred_weight * terms["pred_loss"]
                     + weights.perceptual_weight * terms["perceptual_loss"]
                     + weights.latent_reg_weight * terms["latent_reg_loss"]
                     + weights.temporal_weight * terms["temporal_loss"])
    return terms
