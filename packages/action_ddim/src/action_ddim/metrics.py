"""Pure metric functions. Inputs are arrays in data units: ``[N, seq_len, 3]`` with x, y in [0, 1].

``orig`` holds the validation sequences (press in {0, 1}); ``recon`` the decoded reconstructions
with press still continuous (data units, i.e. (z + 1) / 2 of the model-space value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


# --- fidelity: higher-order kinematics, gesture kinds, floors, classifier two-sample test ---------
# How far generated sequences are from indistinguishable. Every distance is reported beside its
# real-vs-real floor: the same distance between held-out real sequences (as many as there are
# samples) and the same reference set, so "ratio 1" means "as close as another draw of real data".

DEFAULT_RATE_HZ = 30.0   # the generator's sampling rate; gesture durations are rules in seconds

GESTURE_KINDS = ("tap", "long_press", "swipe", "drag", "idle")


@dataclass(frozen=True)
class GestureRule:
    """The documented rule that names the gestures in a sequence (applied alike to data and samples).

    A *contact* is a maximal run of pressed steps. Its travel is the largest distance of the pointer
    from where the contact landed (sensor jitter accumulates in a path length, not in this).
    - travel < ``still_travel`` (screen fraction): ``tap`` if it lasts < ``long_press_s``, else ``long_press``;
    - otherwise ``swipe`` if it lasts <= ``swipe_max_s`` (a flick), else ``drag``.
    An *idle* is a maximal run of >= ``idle_min_s`` released steps during which the pointer moves
    less than ``idle_speed`` (screen fraction per second) between consecutive steps.
    """

    still_travel: float = 0.02
    long_press_s: float = 0.3
    swipe_max_s: float = 0.37
    idle_min_s: float = 0.1
    idle_speed: float = 0.15


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every maximal run of True along the last axis of ``mask [N, L]``: (row, start, end) arrays, end exclusive."""
    m = np.atleast_2d(mask).astype(np.int8)
    d = np.diff(np.pad(m, ((0, 0), (1, 1))), axis=1)
    rows, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    return rows, starts, ends


def _contacts(s: np.ndarray, rate_hz: float, rule: "GestureRule"):
    """Contacts of ``s [N, L, 3]``: (row, start, end, travel, kind index) with kinds from ``GESTURE_KINDS``."""
    xy, pressed = s[..., :2], s[..., 2] > 0.5
    rows, a, b = _runs(pressed)
    n, L = pressed.shape
    # The landing step of the contact each pressed position belongs to, then the max distance from it.
    start_mark = np.zeros((n, L), dtype=np.int64)
    start_mark[rows, a] = a
    landing = np.maximum.accumulate(start_mark, axis=1)
    dist = np.linalg.norm(xy - np.take_along_axis(xy, landing[..., None], axis=1), axis=-1) * pressed
    travel = np.maximum.reduceat(dist.ravel(), rows * L + a) if len(a) else np.zeros(0)
    dur = (b - a) / rate_hz
    still = travel < rule.still_travel
    kind = np.where(still, np.where(dur < rule.long_press_s, 0, 1), np.where(dur <= rule.swipe_max_s, 2, 3))
    return rows, a, b, travel, kind


def _idles(s: np.ndarray, rate_hz: float, rule: "GestureRule"):
    """Idle runs of ``s [N, L, 3]``: (row, start, end)."""
    step = np.linalg.norm(np.diff(s[..., :2], axis=1), axis=-1)  # step[:, i]: move from i to i+1
    slow = step * rate_hz < rule.idle_speed
    ones = np.ones((len(s), 1), dtype=bool)
    # A released step is still when the moves into and out of it are both slow.
    still = (s[..., 2] <= 0.5) & np.concatenate([ones, slow], axis=1) & np.concatenate([slow, ones], axis=1)
    rows, a, b = _runs(still)
    keep = b - a >= max(1, int(math.ceil(rule.idle_min_s * rate_hz - 1e-9)))
    return rows[keep], a[keep], b[keep]


def detect_gestures(seq, rate_hz: float = DEFAULT_RATE_HZ, rule: GestureRule = GestureRule()) -> list[str]:
    """Gesture kinds found in one ``[L, 3]`` sequence by ``rule``, in the order they start."""
    s = _np(seq)[None]
    _, a, _, _, kind = _contacts(s, rate_hz, rule)
    _, ia, _ = _idles(s, rate_hz, rule)
    found = [(int(x), GESTURE_KINDS[k]) for x, k in zip(a, kind)] + [(int(x), "idle") for x in ia]
    return [k for _, k in sorted(found)]


def gesture_counts(seqs, rate_hz: float = DEFAULT_RATE_HZ, rule: GestureRule = GestureRule()) -> np.ndarray:
    """``[N, len(GESTURE_KINDS)]`` counts of each kind per sequence."""
    s = _np(seqs)
    out = np.zeros((len(s), len(GESTURE_KINDS)))
    rows, _, _, _, kind = _contacts(s, rate_hz, rule)
    np.add.at(out, (rows, kind), 1)
    irows, _, _ = _idles(s, rate_hz, rule)
    np.add.at(out, (irows, GESTURE_KINDS.index("idle")), 1)
    return out


def gesture_distribution(seqs, rate_hz: float = DEFAULT_RATE_HZ, rule: GestureRule = GestureRule()) -> np.ndarray:
    """Fraction of each kind among all gestures detected in ``seqs`` (zeros when none)."""
    c = gesture_counts(seqs, rate_hz, rule).sum(axis=0)
    return c / c.sum() if c.sum() else c


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """0.5 * sum |p - q| between two discrete distributions (0 = equal, 1 = disjoint)."""
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())


def step_accelerations(seqs) -> np.ndarray:
    """Pooled |p_{t+1} - 2 p_t + p_{t-1}| (screen fraction per step^2)."""
    return np.linalg.norm(np.diff(_np(seqs)[..., :2], n=2, axis=1), axis=-1).ravel()


def step_jerks(seqs) -> np.ndarray:
    """Pooled magnitude of the third difference of position (screen fraction per step^3)."""
    return np.linalg.norm(np.diff(_np(seqs)[..., :2], n=3, axis=1), axis=-1).ravel()


def _summary(seqs: np.ndarray, rate_hz: float) -> dict[str, np.ndarray]:
    """What the distances compare, computed once per set of sequences."""
    return {"speed": step_speeds(seqs), "path": path_lengths(seqs), "run": press_run_lengths(seqs[..., 2]),
            "accel": step_accelerations(seqs), "jerk": step_jerks(seqs),
            "gestures": gesture_distribution(seqs, rate_hz)}


def _distances(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """Every distance that gets a floor and a ratio, between two ``_summary`` results."""
    return {
        "gen/speed_w1": _w1(a["speed"], b["speed"]),
        "gen/path_length_w1": _w1(a["path"], b["path"]),
        "gen/press_run_length_w1": _w1(a["run"], b["run"]),
        "gen/accel_w1": _w1(a["accel"], b["accel"]),
        "gen/jerk_w1": _w1(a["jerk"], b["jerk"]),
        "gen/gesture_tv": total_variation(a["gestures"], b["gestures"]),
    }


FLOORED = ("gen/speed_w1", "gen/path_length_w1", "gen/press_run_length_w1", "gen/accel_w1", "gen/jerk_w1",
           "gen/gesture_tv")


def sequence_features(seqs, rate_hz: float = DEFAULT_RATE_HZ) -> np.ndarray:
    """The fixed per-sequence feature set of the classifier two-sample test, ``[N, 24]``.

    Pressing: pressed fraction, contacts, mean contact length, travel while pressed, mean step length
    into a landing and out of a lift-off. Motion: path length and its log, mean / 90th-percentile / max
    step length, still fraction, log mean |acceleration|, log mean |jerk|, straightness (net
    displacement / path length), mean and std of x and y. Gestures: the count of each kind
    (``GESTURE_KINDS``).
    """
    s = _np(seqs)
    n, L, _ = s.shape
    xy, pressed = s[..., :2], s[..., 2] > 0.5
    step = np.linalg.norm(np.diff(xy, axis=1), axis=-1)
    rows, a, b, travel, _ = _contacts(s, rate_hz, GestureRule())
    contacts = np.bincount(rows, minlength=n).astype(np.float64)
    lengths = np.bincount(rows, weights=b - a, minlength=n)

    def row_mean(r, v):
        c = np.bincount(r, minlength=n)
        return np.where(c > 0, np.bincount(r, weights=v, minlength=n) / np.maximum(c, 1), 0.0)

    land, lift = a > 0, b < L
    path = step.sum(axis=1)
    acc = np.linalg.norm(np.diff(xy, n=2, axis=1), axis=-1).mean(axis=1)
    jerk = np.linalg.norm(np.diff(xy, n=3, axis=1), axis=-1).mean(axis=1)
    feats = [
        pressed.mean(axis=1), contacts, np.where(contacts > 0, lengths / np.maximum(contacts, 1), 0.0),
        np.bincount(rows, weights=travel, minlength=n),
        row_mean(rows[land], step[rows[land], a[land] - 1]), row_mean(rows[lift], step[rows[lift], b[lift] - 1]),
        path, np.log(path + 1e-4), step.mean(axis=1), np.quantile(step, 0.9, axis=1), step.max(axis=1),
        np.mean(step * rate_hz < GestureRule.idle_speed, axis=1), np.log(acc + 1e-6), np.log(jerk + 1e-6),
        np.linalg.norm(xy[:, -1] - xy[:, 0], axis=-1) / (path + 1e-9),
        xy[..., 0].mean(axis=1), xy[..., 1].mean(axis=1), xy[..., 0].std(axis=1), xy[..., 1].std(axis=1),
    ]
    return np.hstack([np.stack(feats, axis=1), gesture_counts(s, rate_hz)])


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iters: int = 25) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method; returns weights with the bias last."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    reg = np.full(xb.shape[1], l2)
    reg[-1] = 0.0  # the bias is not penalised
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(xb @ w, -30, 30)))
        grad = xb.T @ (p - y) + reg * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg + 1e-9)
        delta = np.linalg.solve(hess, grad)
        w -= delta
        if np.abs(delta).max() < 1e-8:
            break
    return w


def c2st_accuracy(real, fake, rate_hz: float = DEFAULT_RATE_HZ, folds: int = 5, seed: int = 0,
                  l2: float = 1.0, features_given: bool = False) -> float:
    """Classifier two-sample test: cross-validated accuracy of telling ``fake`` from ``real`` sequences.

    Logistic regression (L2, Newton) on ``sequence_features`` standardised with each training
    fold's statistics; ``folds``-fold cross-validation over a seeded, class-balanced shuffle
    (the larger side is subsampled to the smaller one's size). 0.5 = indistinguishable, 1 = always told apart.
    With ``features_given``, ``real`` and ``fake`` are already ``sequence_features`` rows.
    """
    fr = real if features_given else sequence_features(real, rate_hz)
    ff = fake if features_given else sequence_features(fake, rate_hz)
    rng = np.random.default_rng(seed)
    m = min(len(fr), len(ff))
    if m < folds:
        return float("nan")
    fr, ff = fr[rng.permutation(len(fr))[:m]], ff[rng.permutation(len(ff))[:m]]
    x = np.vstack([fr, ff])
    y = np.concatenate([np.zeros(m), np.ones(m)])
    # Fold k holds every folds-th item of each class, so every fold is balanced.
    fold_of = np.concatenate([rng.permutation(m) % folds, rng.permutation(m) % folds])
    correct = 0
    for k in range(folds):
        tr, te = fold_of != k, fold_of == k
        mu, sd = x[tr].mean(axis=0), x[tr].std(axis=0)
        sd[sd < 1e-12] = 1.0
        w = _fit_logistic((x[tr] - mu) / sd, y[tr], l2)
        xt = np.hstack([(x[te] - mu) / sd, np.ones((te.sum(), 1))])
        correct += int(np.sum((xt @ w > 0) == (y[te] > 0.5)))
    return correct / len(y)


def fidelity_metrics(reference, samples, heldout_draws, rate_hz: float = DEFAULT_RATE_HZ,
                     seed: int = 0) -> dict[str, float]:
    """Generated ``samples`` against the real ``reference`` set, beside the real-vs-real floor.

    ``heldout_draws`` is a list of arrays of real sequences not in ``reference``, each as many as
    ``samples`` (e.g. disjoint slices of the training set). For every distance ``D``:
    ``D`` (samples vs reference), ``D_floor`` (mean over the draws of held-out vs reference) and
    ``D_ratio`` = D / D_floor. The C2ST compares the samples with as many reference sequences, and its
    floor does the same for each held-out draw. Also: the gesture-kind fractions of samples and data.
    """
    ref, smp = _np(reference), _np(samples)
    out = generation_metrics(ref, smp)
    ref_stats = _summary(ref, rate_hz)
    out.update(_distances(ref_stats, _summary(smp, rate_hz)))
    draws = [_np(d) for d in heldout_draws]
    rng = np.random.default_rng(seed)
    ref_sub = ref[np.sort(rng.permutation(len(ref))[:len(smp)])]
    ref_feats = sequence_features(ref_sub, rate_hz)
    out["gen/c2st_accuracy"] = c2st_accuracy(ref_feats, sequence_features(smp, rate_hz), seed=seed,
                                             features_given=True)
    if draws:
        floors = [_distances(ref_stats, _summary(d, rate_hz)) for d in draws]
        for k in FLOORED:
            floor = float(np.mean([f[k] for f in floors]))
            out[f"{k}_floor"] = floor
            out[f"{k}_ratio"] = out[k] / floor if floor > 0 else float("nan")
        out["gen/c2st_accuracy_floor"] = float(np.mean([
            c2st_accuracy(ref_feats, sequence_features(d, rate_hz), seed=seed, features_given=True) for d in draws]))
    for name, ps, pd in zip(GESTURE_KINDS, gesture_distribution(smp, rate_hz), ref_stats["gestures"]):
        out[f"gen/gesture_frac/{name}"] = float(ps)
        out[f"gen/gesture_frac_data/{name}"] = float(pd)
    return out


def fidelity_goal_met(m: dict[str, float], max_ratio: float = 2.0, max_c2st: float = 0.65) -> bool:
    """Issue 11's goal: every floored distance <= ``max_ratio`` x its floor and C2ST <= ``max_c2st``."""
    ratios = [m.get(f"{k}_ratio", float("nan")) for k in FLOORED]
    return all(np.isfinite(r) and r <= max_ratio for r in ratios) and m.get("gen/c2st_accuracy", 1.0) <= max_c2st
