"""Skeleton overlays (prediction vs ground truth) on hand crops, and dataset previews."""
from __future__ import annotations

import matplotlib.pyplot as plt  # headless sessions get Agg automatically; notebooks keep their inline backend
import numpy as np

from .data import BONES, IMAGENET_MEAN, IMAGENET_STD

FINGER_COLOURS = ["#e63c32", "#3cc846", "#3c6eeb", "#ebd732", "#d246d2"]


def denormalize(image_chw) -> np.ndarray:
    img = np.asarray(image_chw, dtype=np.float32).transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(img, 0, 1)


def draw_skeleton(ax, uv, style="-", alpha=1.0, lw=1.5):
    for i, (a, b) in enumerate(BONES):
        ax.plot([uv[a, 0], uv[b, 0]], [uv[a, 1], uv[b, 1]], style, color=FINGER_COLOURS[i // 4], lw=lw, alpha=alpha)
    ax.scatter(uv[:, 0], uv[:, 1], s=6, c="white", edgecolors="black", linewidths=0.3, alpha=alpha, zorder=3)


def overlay_figure(images, gt_uv, pred_uv=None, titles=None, ncols: int = 4):
    """Crops with the ground-truth skeleton (dashed) and the prediction (solid), all in crop pixels."""
    n = len(images)
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.6 * nrows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= n:
            continue
        img = denormalize(images[k])
        ax.imshow(img)
        draw_skeleton(ax, np.asarray(gt_uv[k]), style="--", alpha=0.9, lw=1.0)
        if pred_uv is not None:
            draw_skeleton(ax, np.asarray(pred_uv[k]), style="-", lw=1.8)
        ax.set_xlim(0, img.shape[1] - 1)
        ax.set_ylim(img.shape[0] - 1, 0)
        if titles is not None:
            ax.set_title(titles[k], fontsize=7)
    fig.suptitle("dashed: ground truth, solid: prediction" if pred_uv is not None else "ground truth", fontsize=8)
    fig.tight_layout()
    return fig


def loss_curve_figure(history: dict[str, list[float]], title: str = "training loss"):
    fig, ax = plt.subplots(figsize=(5, 3))
    for k, v in history.items():
        ax.plot(v, label=k)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    return fig
