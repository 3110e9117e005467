"""Pure metric functions. Inputs are arrays in data units: ``[N, seq_len, 3]`` with x, y in [0, 1].

``orig`` holds the validation sequences (press in {0, 1}); ``recon`` the decoded reconstructions
with press still continuous (data units, i.e. (z + 1) / 2 of the model-space value).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import wasserstein_distance

SNR_CAP_DB = 100.0  # reported for a sequence reconstructed exactly (zero error energy)


def _np(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def press_decoded(recon_press) -> np.ndarray:
    """Threshold at 0.5 in data units (= 0 in model space)."""
    return (_np(recon_press) > 0.5).astype(np.float64)


def mse(orig, recon) -> float:
    """All three channels; press as the continuous decoded value clipped to [0, 1]."""
    o, r = _np(orig), _np(recon).copy()
    r[..., 2] = np.clip(r[..., 2], 0.0, 1.0)
    return float(np.mean((o - r) ** 2))


def coord_mse(orig, recon) -> float:
    o, r = _np(orig), _np(recon)
    return float(np.mean((o[..., :2] - r[..., :2]) ** 2))


def press_accuracy(orig, recon) -> float:
    return float(np.mean(press_decoded(_np(recon)[..., 2]) == _np(orig)[..., 2]))


def press_majority_rate(orig) -> float:
    """Accuracy of always answering the more common press state: the trivial baseline."""
    p = float(np.mean(_np(orig)[..., 2]))
    return max(p, 1.0 - p)


def press_f1(orig, recon) -> float:
    """F1 of the pressed class; 1.0 when neither side has any press."""
    o = _np(orig)[..., 2] > 0.5
    r = press_decoded(_np(recon)[..., 2]) > 0.5
    tp = float(np.sum(o & r))
    denom = 2 * tp + float(np.sum(~o & r)) + float(np.sum(o & ~r))
    return 1.0 if denom == 0 else 2 * tp / denom


def snr_db_per_sequence(orig, recon) -> np.ndarray:
    """10 log10(sum (c - mean_t c)^2 / sum (c - c_hat)^2) over x and y; NaN for motionless sequences."""
    o, r = _np(orig)[..., :2], _np(recon)[..., :2]
    signal = np.sum((o - o.mean(axis=1, keepdims=True)) ** 2, axis=(1, 2))
    noise = np.sum((o - r) ** 2, axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = 10 * np.log10(signal / noise)
    snr = np.where(noise == 0, SNR_CAP_DB, snr)
    return np.where(signal > 0, snr, np.nan)


def mean_snr_db(orig, recon) -> float:
    """Mean of the per-sequence SNR over sequences with non-zero motion."""
    s = snr_db_per_sequence(orig, recon)
    return float(np.nanmean(s)) if np.any(~np.isnan(s)) else float("nan")


def variance_ratio(orig, recon, channel: int) -> float:
    """Mean over sequences of the temporal variance of ``recon`` / the same for ``orig``."""
    o, r = _np(orig)[..., channel], _np(recon)[..., channel]
    return float(np.mean(r.var(axis=1)) / np.mean(o.var(axis=1)))


def smoothness_ratio(orig, recon, channel: int) -> float:
    """Mean |second difference in time| of ``recon`` / the same for ``orig``."""
    o, r = _np(orig)[..., channel], _np(recon)[..., channel]
    return float(np.mean(np.abs(np.diff(r, n=2, axis=1))) / np.mean(np.abs(np.diff(o, n=2, axis=1))))


def reconstruction_metrics(orig, recon) -> dict[str, float]:
    """Every guide reconstruction metric (tags without the ``val/`` prefix)."""
    return {
        "mse": mse(orig, recon),
        "coord_mse": coord_mse(orig, recon),
        "press_accuracy": press_accuracy(orig, recon),
        "press_majority_rate": press_majority_rate(orig),
        "press_f1": press_f1(orig, recon),
        "mean_snr_db": mean_snr_db(orig, recon),
        "variance_ratio_x": variance_ratio(orig, recon, 0),
        "variance_ratio_y": variance_ratio(orig, recon, 1),
        "smoothness_ratio_x": smoothness_ratio(orig, recon, 0),
        "smoothness_ratio_y": smoothness_ratio(orig, recon, 1),
    }


# --- generation quality (unconditional samples vs data) ----------------------------------------
def step_speeds(seqs) -> np.ndarray:
    """Pooled per-step pointer displacement |p_{t+1} - p_t| (x, y units per step)."""
    s = _np(seqs)
    return np.linalg.norm(np.diff(s[..., :2], axis=1), axis=-1).ravel()


def path_lengths(seqs) -> np.ndarray:
    """Per-sequence path length: sum over steps of |p_{t+1} - p_t|."""
    s = _np(seqs)
    return np.linalg.norm(np.diff(s[..., :2], axis=1), axis=-1).sum(axis=1)


def press_run_lengths(press) -> np.ndarray:
    """Lengths of every maximal run of press = 1 (pooled over sequences; runs cut by the window count)."""
    p = (_np(press) > 0.5).astype(np.int8)
    p = p.reshape(-1, p.shape[-1])
    padded = np.pad(p, ((0, 0), (1, 1)))
    d = np.diff(padded, axis=1)
    starts = np.argwhere(d == 1)
    ends = np.argwhere(d == -1)
    return (ends[:, 1] - starts[:, 1]).astype(np.float64)


def _w1(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) == 0 and len(b) == 0:
        return 0.0
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    return float(wasserstein_distance(a, b))


def generation_metrics(data, samples) -> dict[str, float]:
    """Distances between unconditional samples and data, both in the dataset format (press in {0,1})."""
    d, s = _np(data), _np(samples)
    return {
        "gen/speed_w1": _w1(step_speeds(d), step_speeds(s)),
        "gen/path_length_w1": _w1(path_lengths(d), path_lengths(s)),
        "gen/press_run_length_w1": _w1(press_run_lengths(d[..., 2]), press_run_lengths(s[..., 2])),
        "gen/press_rate": float(np.mean(s[..., 2] > 0.5)),
        "gen/press_rate_data": float(np.mean(d[..., 2] > 0.5)),
    }
