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


def _draw_path(ax, s: np.ndarray, title: str) -> None:
    """One sequence as a 2-D path in screen coordinates: pressed steps red, start marked x."""
    ax.plot(s[:, 0], s[:, 1], "-", color="tab:blue", lw=1)
    pressed = s[:, 2] > 0.5
    ax.scatter(s[pressed, 0], s[pressed, 1], s=12, c="tab:red", zorder=3)
    ax.scatter(s[:1, 0], s[:1, 1], s=25, c="k", marker="x", zorder=4)
    ax.set_xlim(0, 1)
    ax.set_ylim(1, 0)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=8)


def plot_samples(samples: np.ndarray, title: str = "samples"):
    """A grid of 2-D paths with presses marked."""
    n = len(samples)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= n:
            ax.axis("off")
            continue
        _draw_path(ax, samples[k], f"#{k}: {int((samples[k][:, 2] > 0.5).sum())} pressed steps")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_samples_vs_real(samples: np.ndarray, real: np.ndarray, rate_hz: float = 30.0,
                         title: str = "generated (left) | real (right)"):
    """Generated and real sequences side by side in the same layout, so the eye can compare them.

    Each block is a grid of 2-D paths (4 per row) titled with the gestures found by
    ``metrics.detect_gestures``; under each path its speed (screen fraction per second) over time,
    shaded where pressed.
    """
    from .metrics import detect_gestures

    n = max(len(samples), len(real))
    cols = 4
    rows = (n + cols - 1) // cols
    fig = plt.figure(figsize=(2.6 * 2 * cols + 0.6, 3.4 * rows))
    outer = fig.add_gridspec(1, 2, wspace=0.08)
    short = {"tap": "tap", "long_press": "long", "swipe": "swipe", "drag": "drag", "idle": "idle"}
    # The speed axis: the 99th percentile of both sides' speeds (x 1.2), not the maximum, so one
    # teleport-like step does not flatten every other trace (audit LOW); faster steps run off the top.
    speeds = [np.linalg.norm(np.diff(b[..., :2], axis=1), axis=-1).ravel() * rate_hz for b in (samples, real) if len(b)]
    vmax = 1.2 * float(np.quantile(np.concatenate(speeds), 0.99)) if speeds and sum(map(len, speeds)) else 0.0
    vmax = vmax or 1.0
    for block, (seqs, name) in enumerate(((samples, "generated"), (real, "real"))):
        grid = outer[block].subgridspec(rows * 2, cols, height_ratios=[3, 1] * rows, hspace=0.55, wspace=0.25)
        for k in range(rows * cols):
            ax = fig.add_subplot(grid[2 * (k // cols), k % cols])
            ax_v = fig.add_subplot(grid[2 * (k // cols) + 1, k % cols])
            if k >= len(seqs):
                ax.axis("off")
                ax_v.axis("off")
                continue
            s = seqs[k]
            found = [short[g] for g in detect_gestures(s, rate_hz)]
            # At most 4 kinds in a title: long lists overran the neighbouring panels (audit LOW).
            kinds = (", ".join(found[:4]) + (f" +{len(found) - 4}" if len(found) > 4 else "")) or "-"
            _draw_path(ax, s, f"{name} #{k}\n{kinds}")
            ax.title.set_fontsize(7)
            speed = np.linalg.norm(np.diff(s[:, :2], axis=0), axis=-1) * rate_hz
            t = np.arange(len(speed)) / rate_hz
            ax_v.plot(t, speed, color="tab:blue", lw=0.8)
            ax_v.fill_between(np.arange(len(s)) / rate_hz, 0, vmax, where=s[:, 2] > 0.5, color="tab:red",
                              alpha=0.15, step="post")
            ax_v.set_ylim(0, vmax)
            ax_v.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=10)
    return fig


def save_samples_vs_real(path, samples: np.ndarray, real: np.ndarray, rate_hz: float = 30.0, title: str | None = None):
    """``plot_samples_vs_real`` written to ``path`` (PNG)."""
    fig = plot_samples_vs_real(samples, real, rate_hz, **({"title": title} if title else {}))
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_distributions(samples: np.ndarray, real: np.ndarray, rate_hz: float = 30.0,
                       title: str = "generated vs real"):
    """Speed, pause-length and press-run distributions of samples beside real data (issue 20).

    Speed: per step, screen fractions per second (log axis; still steps at the left edge). Pause: runs of
    steps slower than the gesture rule's idle speed, in seconds. Press run: runs of press = 1, in seconds.
    Runs are cut by the window, as everywhere in the metrics.
    """
    from .metrics import GestureRule, press_run_lengths

    def stats(s):
        step = np.linalg.norm(np.diff(s[..., :2], axis=1), axis=-1) * rate_hz
        still = (step < GestureRule.idle_speed).astype(np.float32)
        return (np.maximum(step.ravel(), 1e-4), press_run_lengths(still) / rate_hz,
                press_run_lengths(s[..., 2]) / rate_hz)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    names = ("speed (screens/s)", "pause length (s)", "press run (s)")
    for seqs, label, color in ((real, "real", "tab:gray"), (samples, "generated", "tab:red")):
        for ax, values in zip(axes, stats(seqs)):
            if len(values):
                bins = np.logspace(-4, 2, 40) if ax is axes[0] else np.linspace(0, seqs.shape[1] / rate_hz, 30)
                ax.hist(values, bins=bins, density=True, histtype="step", color=color, label=f"{label} ({len(values)})")
    axes[0].set_xscale("log")
    for ax, name in zip(axes, names):
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
