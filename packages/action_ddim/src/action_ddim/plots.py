"""Matplotlib figures for the run's ``samples/`` folder and TensorBoard / W&B."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_reconstructions(orig: np.ndarray, noised: np.ndarray, recon: np.ndarray, t_star: int, steps: int):
    """One row per sequence: x(t), y(t), press(t) for original / noised at t* / reconstructed, and the 2-D path."""
    n = len(orig)
    fig, axes = plt.subplots(n, 4, figsize=(16, 2.8 * n), squeeze=False)
    steps_axis = np.arange(orig.shape[1])
    for i in range(n):
        for c, name in enumerate(("x", "y", "press")):
            ax = axes[i, c]
            ax.plot(steps_axis, orig[i, :, c], "k-", lw=1.5, label="original")
            ax.plot(steps_axis, noised[i, :, c], color="0.7", lw=0.8, label=f"noised (t*={t_star})")
            ax.plot(steps_axis, recon[i, :, c], "r--", lw=1.2, label=f"reconstructed ({steps}+{steps} DDIM)")
            ax.set_ylim(-0.25, 1.25)
            ax.set_title(f"seq {i}: {name}(t)", fontsize=9)
            if i == 0 and c == 0:
                ax.legend(fontsize=7, loc="best")
        ax = axes[i, 3]
        for seq, style, label in ((orig[i], "k-", "original"), (recon[i], "r--", "reconstructed")):
            ax.plot(seq[:, 0], seq[:, 1], style, lw=1, label=label)
            pressed = seq[:, 2] > 0.5
            ax.scatter(seq[pressed, 0], seq[pressed, 1], s=10, c=style[0], marker="o")
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)  # screen coordinates: y grows downwards
        ax.set_aspect("equal")
        ax.set_title("path (dots: pressed)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_samples(samples: np.ndarray, title: str = "samples"):
    """A grid of 2-D paths with presses marked, plus press(t) as a strip under each."""
    n = len(samples)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= n:
            ax.axis("off")
            continue
        s = samples[k]
        ax.plot(s[:, 0], s[:, 1], "-", color="tab:blue", lw=1)
        pressed = s[:, 2] > 0.5
        ax.scatter(s[pressed, 0], s[pressed, 1], s=12, c="tab:red", zorder=3)
        ax.scatter(s[:1, 0], s[:1, 1], s=25, c="k", marker="x", zorder=4)
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)
        ax.set_aspect("equal")
        ax.set_title(f"#{k}: {int(pressed.sum())} pressed steps", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
