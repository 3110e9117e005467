"""How precise must an action-ddim model be to meet issue 11's fidelity goal? Real generator sequences,
perturbed in one property at a time, scored exactly like model samples (numpy only, ~1 CPU-minute).

    python tools/fidelity_sensitivity_action_ddim.py --data DATA [--n 256] [--clean_draws 10]

DATA holds train/ and val/ from `action-ddim generate-data` (the fidelity recipe's evaluation data).
The reference is DATA/val, the floors come from 5 draws of --n sequences of DATA/train (as `action-ddim
evaluate --real_dir DATA/train` does), and the perturbed sequences are --n fresh generator sequences from
a seed stream that is in neither split. Prints a markdown table: each ratio to its floor and the C2ST.
"""
import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "packages/action_ddim/src"), str(ROOT / "shared/src")]

from action_ddim import metrics as M  # noqa: E402
from action_ddim.augmentation import GeneratorSettings, generate_sequences  # noqa: E402
from action_ddim.data import ActionDataset  # noqa: E402
from action_ddim.evaluate import FLOOR_DRAWS, heldout_draws  # noqa: E402

KEYS = ["speed_w1", "path_length_w1", "press_run_length_w1", "accel_w1", "jerk_w1", "gesture_tv"]


def fresh(n: int, draw: int = 0, **changes) -> np.ndarray:
    """``n`` generator sequences from a stream no generate-data split uses (spawn key 5), with ``changes``."""
    return generate_sequences(n, np.random.SeedSequence(99 + draw, spawn_key=(5,)),
                              dataclasses.replace(GeneratorSettings(), **changes))


def shift_press(s: np.ndarray, steps: int) -> np.ndarray:
    """Every press run one step longer (+1: the step before it pressed too) or shorter (-1: its first step dropped)."""
    s = s.copy()
    p = s[..., 2] > 0.5
    q = p.copy()
    if steps > 0:
        q[:, :-1] |= p[:, 1:]
    else:
        q[:, 1:] &= p[:, :-1]
    s[..., 2] = q
    return s


def smooth(s: np.ndarray) -> np.ndarray:
    """Positions filtered with [1, 2, 1] / 4 (what a model that cannot draw the jitter produces)."""
    s = s.copy()
    xy = s[..., :2]
    pad = np.concatenate([xy[:, :1], xy, xy[:, -1:]], axis=1)
    s[..., :2] = 0.25 * pad[:, :-2] + 0.5 * pad[:, 1:-1] + 0.25 * pad[:, 2:]
    return s


def scale_moves(s: np.ndarray, f: float) -> np.ndarray:
    """Every displacement from the start position times ``f`` (all velocities x f, jitter included)."""
    s = s.copy()
    s[..., :2] = s[:, :1, :2] + f * (s[..., :2] - s[:, :1, :2])
    return s


def add_noise(s: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    s = s.copy()
    s[..., :2] = np.clip(s[..., :2] + np.random.default_rng(seed).normal(0, std, s[..., :2].shape), 0, 1)
    return s


def time_warp(s: np.ndarray, f: float) -> np.ndarray:
    """Played back at ``f`` x speed (linear interpolation of positions, nearest press): slower moves, and
    interpolation also averages neighbouring jitter."""
    L = s.shape[1]
    t = np.arange(L) * f
    out = s.copy()
    for i in range(len(s)):
        for c in range(2):
            out[i, :, c] = np.interp(t, np.arange(L), s[i, :, c])
        out[i, :, 2] = s[i, np.clip(np.round(t).astype(int), 0, L - 1), 2]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--clean_draws", type=int, default=10)
    a = ap.parse_args()
    val = ActionDataset(Path(a.data) / "val")
    reference = val.raw_batch(list(range(len(val))))
    real = ActionDataset(Path(a.data) / "train")
    perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(2)).tolist()  # as evaluate does
    draws = heldout_draws(real.raw_batch(sorted(perm[:FLOOR_DRAWS * a.n])), a.n)
    rate = M.DEFAULT_RATE_HZ

    def score(s):
        m = M.fidelity_metrics(reference, s, draws, rate_hz=rate)
        return [m[f"gen/{k}_ratio"] for k in KEYS] + [m["gen/c2st_accuracy"]]

    print(f"| {a.n} real sequences | speed | path | press-run | accel | jerk | gesture TV | C2ST |")
    print("|---|---|---|---|---|---|---|---|")

    def row(name, vals):
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in vals[:-1]) + f" | {vals[-1]:.3f} |", flush=True)

    clean = np.array([score(fresh(a.n, d)) for d in range(a.clean_draws)])
    row(f"unperturbed: mean of {a.clean_draws} draws", clean.mean(axis=0))
    row(f"unperturbed: worst of {a.clean_draws} draws", np.r_[clean[:, :-1].max(axis=0), clean[:, -1].max()])
    passed = np.mean([np.all(c[:-1] <= 2) and c[-1] <= 0.65 for c in clean])
    print(f"| unperturbed draws meeting the goal (every ratio <= 2, C2ST <= 0.65) | {passed:.0%} | | | | | | |")
    base = fresh(a.n)
    g = GeneratorSettings()
    cases = [(f"sensor jitter x{f}", lambda f=f: fresh(a.n, jitter_std=g.jitter_std * f)) for f in (0, 0.5, 0.8, 0.9, 1.1, 1.25, 1.5, 2)]
    cases += [
        ("aimed moves 10% slower (Fitts a, b x1.1)", lambda: fresh(a.n, fitts_a_s=g.fitts_a_s * 1.1, fitts_b_s=g.fitts_b_s * 1.1)),
        ("aimed moves 10% faster (Fitts a, b x0.9)", lambda: fresh(a.n, fitts_a_s=g.fitts_a_s * 0.9, fitts_b_s=g.fitts_b_s * 0.9)),
        ("swipes one step longer (speed ~x0.87)", lambda: fresh(a.n, swipe_steps=(g.swipe_steps[0] + 1, g.swipe_steps[1] + 1))),
        ("taps one step longer", lambda: fresh(a.n, tap_steps=(g.tap_steps[0] + 1, g.tap_steps[1] + 1))),
        ("paths bow 1.5x more", lambda: fresh(a.n, curvature_std=g.curvature_std * 1.5)),
        ("every press run +1 step (post hoc)", lambda: shift_press(base, 1)),
        ("every press run -1 step (post hoc)", lambda: shift_press(base, -1)),
        ("all velocities x0.95 (post hoc)", lambda: scale_moves(base, 0.95)),
        ("all velocities x0.9 (post hoc)", lambda: scale_moves(base, 0.9)),
        ("positions smoothed [1,2,1]/4", lambda: smooth(base)),
        ("+ white noise std 0.0005", lambda: add_noise(base, 0.0005)),
        ("+ white noise std 0.001", lambda: add_noise(base, 0.001)),
        ("time-warp x0.95 (interpolated)", lambda: time_warp(base, 0.95)),
    ]
    for name, make in cases:
        row(name, score(make()))


if __name__ == "__main__":
    main()
