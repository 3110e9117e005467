"""Pure metric functions (arrays in, numbers out). Exact definitions: docs/data-and-metrics.md.

Keyframe metrics (no annotations needed):
- `rec_err`: mean over steps of the (plain, not squared) Euclidean distance to the nearest keyframe.
- `diversity`: mean over ordered keyframe pairs i != j of 1 - cos; 0.0 for fewer than 2 keyframes.
- `ms_swd`: multi-scale sliced Wasserstein distance between the Lab patch distributions of the
  keyframes' thumbnails and of all thumbnails.

Summary metrics (need `user_summary` / `gtscore`), the eccv16 protocol of DSN/DSNet:
scores -> frames (`upsample_scores`) -> shot means -> 0/1 knapsack at floor(15 % of frames)
(`summary_from_scores`) -> `f_score` against every user (max or mean), and `rank_correlation`
(Kendall tau / Spearman rho averaged over annotators, as published) / `rank_correlation_gtscore`
(against the mean reference).
"""
from __future__ import annotations

import hashlib
import math
from collections import OrderedDict

import numpy as np
import torch
from scipy import stats

__all__ = [
    "rec_err", "diversity", "ms_swd", "upsample_scores", "knapsack", "summary_from_scores", "f_score",
    "rank_correlation", "rank_correlation_gtscore", "annotator_scores", "keyframes_topk", "random_scores", "uniform_keyframes", "uniform_scores", "budget_k",
]


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _idx(keyframe_idx, n: int) -> np.ndarray:
    idx = np.unique(_np(keyframe_idx).astype(np.int64).reshape(-1))
    if idx.size and (idx[0] < 0 or idx[-1] >= n):
        raise IndexError(f"keyframe index out of range [0, {n})")
    return idx


# ----------------------------------------------------------------------------- keyframe metrics
def rec_err(features, keyframe_idx) -> float:
    """Mean over all steps of the Euclidean (not squared) distance to the nearest keyframe's
    feature; lower is better. NaN when there are no keyframes."""
    x = _np(features).astype(np.float64)
    idx = _idx(keyframe_idx, len(x))
    if idx.size == 0:
        return float("nan")
    k = x[idx]
    d2 = (x * x).sum(1)[:, None] + (k * k).sum(1)[None, :] - 2.0 * x @ k.T
    return float(np.sqrt(np.maximum(d2, 0.0)).min(axis=1).mean())


def diversity(features, keyframe_idx) -> float:
    """Mean over ordered pairs i != j of keyframes of 1 - cos(x_i, x_j); higher is better.
    0.0 with fewer than 2 keyframes (as in DSN's reward). No temporal cutoff (unlike the reward)."""
    x = _np(features).astype(np.float64)
    idx = _idx(keyframe_idx, len(x))
    k = len(idx)
    if k < 2:
        return 0.0
    f = x[idx]
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    d = 1.0 - f @ f.T
    return float((d.sum() - np.trace(d)) / (k * (k - 1)))


# ----------------------------------------------------------------------------- MS-SWD
_SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=np.float32,
)
_D65 = np.array([0.95047, 1.0, 1.08883], dtype=np.float32)


def _rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB [N,H,W,3] in [0,1] -> CIELAB (D65), as in MS-SWD: sRGB -> linear -> XYZ -> Lab."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4).astype(np.float32)
    xyz = (lin @ _SRGB_TO_XYZ.T) / _D65
    eps = 216.0 / 24389.0
    f = np.where(xyz > eps, np.cbrt(xyz), (24389.0 / 27.0 * xyz + 16.0) / 116.0)
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1).astype(np.float32)


_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32) / 16.0


def _pyr_down(x: np.ndarray) -> np.ndarray:
    """5x5 binomial blur (separable, reflect padded) then stride-2 subsampling; x [N,H,W,C]."""
    h, w = x.shape[1:3]
    xp = np.pad(x, ((0, 0), (2, 2), (0, 0), (0, 0)), mode="reflect")
    x = sum(_BINOMIAL[i] * xp[:, i : i + h] for i in range(5))
    xp = np.pad(x, ((0, 0), (0, 0), (2, 2), (0, 0)), mode="reflect")
    x = sum(_BINOMIAL[i] * xp[:, :, i : i + w] for i in range(5))
    return np.ascontiguousarray(x[:, ::2, ::2])


def _patch_size(size: int, max_patch: int) -> int:
    # Reflect padding needs pad < size; keep odd sizes so patches are centred.
    p = min(max_patch, size if size % 2 else size - 1)
    return max(1, p)


_MSSWD_CACHE: "OrderedDict[tuple, list]" = OrderedDict()
_MSSWD_CACHE_SIZE = 8
_MSSWD_CACHE_BYTES = 512 * 2**20


def _cache_bytes() -> int:
    return sum(v.nbytes + q.nbytes for levels in _MSSWD_CACHE.values() for v, q in levels)


def _projected_levels(frames: np.ndarray, num_scales: int, num_projections: int, patch_size: int,
                      positions: int, seed: int, q: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per scale: projected patch values [T, P, n_pos] of every frame, and the quantiles [P, M]
    of all frames' values.

    Memoised on the frames' content hash and the parameters: evaluation scores several keyframe
    sets (model, random, uniform) of the same video, and the all-frames side is the expensive part.
    Plain numpy: torch's CPU im2col and sort were ~10x slower at these sizes.
    """
    key = (hashlib.blake2b(frames.tobytes(), digest_size=16).hexdigest(), frames.shape, num_scales, num_projections,
           patch_size, positions, seed, len(q))
    if key in _MSSWD_CACHE:
        _MSSWD_CACHE.move_to_end(key)
        return _MSSWD_CACHE[key]
    x = frames.astype(np.float32) / np.float32(255.0)
    out = []
    for s in range(num_scales):
        if s > 0:
            if min(x.shape[1:3]) < 6:  # too small to blur and subsample meaningfully
                break
            x = _pyr_down(x)
        t, h, w = x.shape[:3]
        p = _patch_size(min(h, w), patch_size)
        lab = _rgb_to_lab(x)
        rng = np.random.default_rng([seed, s])
        proj = rng.standard_normal((num_projections, p * p * 3))
        proj = (proj / np.linalg.norm(proj, axis=1, keepdims=True)).astype(np.float32)
        r = p // 2
        if r:
            lab = np.pad(lab, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
        # Patch centres on a regular grid, ~`positions` per frame, bound the cost at scale 0.
        stride = max(1, int(math.ceil(math.sqrt(h * w / positions))))
        win = np.lib.stride_tricks.sliding_window_view(lab, (p, p), axis=(1, 2))[:, ::stride, ::stride]
        n_pos = win.shape[1] * win.shape[2]
        patches = np.ascontiguousarray(win).reshape(t * n_pos, 3 * p * p)
        # One 2-D BLAS matmul; a stacked 3-D one with a transposed operand takes numpy's slow loop.
        v = (patches @ np.ascontiguousarray(proj.T)).reshape(t, n_pos, num_projections)
        v = np.ascontiguousarray(v.transpose(0, 2, 1))  # [T, P, n_pos]
        all_vals = v.transpose(1, 0, 2).reshape(num_projections, -1)
        out.append((v, _quantiles(all_vals, q)))
    _MSSWD_CACHE[key] = out
    # Bounded by count and by memory (long real videos give ~100 MB entries).
    while len(_MSSWD_CACHE) > 1 and (len(_MSSWD_CACHE) > _MSSWD_CACHE_SIZE or _cache_bytes() > _MSSWD_CACHE_BYTES):
        _MSSWD_CACHE.popitem(last=False)
    return out


def ms_swd(frames_all, keyframe_idx, *, num_scales: int = 4, num_projections: int = 64, patch_size: int = 11,
           num_quantiles: int = 256, positions: int = 64, seed: int = 0) -> float:
    """Multi-scale sliced Wasserstein distance between the keyframes' thumbnails and all thumbnails.

    frames_all: uint8 [T, H, W, 3]. At each of `num_scales` Gaussian-pyramid levels (5x5 binomial
    blur + stride 2, as MS-SWD), frames are converted to CIELAB and patches (`patch_size` x
    `patch_size`, shrunk to the largest odd size that fits small levels; reflect padded; centres on
    a regular grid of ~`positions` per frame) are projected on `num_projections` fixed unit
    directions drawn from `seed`. For each direction the keyframes' values and all frames' values
    form two 1-D distributions of different sizes; their W1 distance is approximated by the mean
    absolute difference of their quantile functions (inverse empirical CDFs) at the
    `num_quantiles` levels (i + 0.5) / num_quantiles. The
    result is the mean over directions, then over scales (Lab units; lower is better; exactly 0
    when the keyframes are all frames). NaN with no keyframes.
    """
    frames = _np(frames_all)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"ms_swd expects uint8 frames [T, H, W, 3], got {frames.shape} {frames.dtype}")
    idx = _idx(keyframe_idx, len(frames))
    if idx.size == 0:
        return float("nan")
    q = (np.arange(num_quantiles, dtype=np.float64) + 0.5) / num_quantiles
    levels = _projected_levels(np.ascontiguousarray(frames), num_scales, num_projections, patch_size, positions, seed, q)
    per_scale = []
    for v, qa in levels:
        qk = _quantiles(v[idx].transpose(1, 0, 2).reshape(v.shape[1], -1), q)
        per_scale.append(np.abs(qa - qk).mean())
    return float(np.mean(per_scale))


def _quantiles(values: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise empirical quantile function (inverse CDF, no interpolation) at levels q, float64.

    Without interpolation, two samples of the same distribution in different sizes (a video
    and a keyframe set covering it in the same proportions) give exactly the same quantiles."""
    s = np.sort(values, axis=1).astype(np.float64)
    n = s.shape[1]
    return s[:, np.minimum((q * n).astype(np.int64), n - 1)]


# ----------------------------------------------------------------------------- eccv16 protocol
def upsample_scores(step_scores, picks, n_frames: int) -> np.ndarray:
    """Step scores -> frame scores: score i covers frames [picks[i], picks[i+1]), the last one up
    to n_frames; frames before picks[0] (never the case in eccv16 files) stay 0, as in DSN."""
    s = _np(step_scores).astype(np.float64).reshape(-1)
    p = _np(picks).astype(np.int64).reshape(-1)
    if len(s) != len(p):
        raise ValueError(f"{len(s)} scores for {len(p)} picks")
    out = np.zeros(int(n_frames), dtype=np.float64)
    bounds = np.append(p, int(n_frames))
    for i in range(len(p)):
        out[bounds[i] : bounds[i + 1]] = s[i]
    return out


def knapsack(values, weights, capacity) -> list[int]:
    """Exact 0/1 knapsack by dynamic programming (O(n * capacity)); integer weights.

    Returns the sorted indices of the chosen items. Among equal-value solutions the DP keeps the
    earlier decision (an item is taken only when it strictly improves the value).
    """
    v = _np(values).astype(np.float64).reshape(-1)
    w = _np(weights).astype(np.int64).reshape(-1)
    cap = int(capacity)
    n = len(v)
    if n == 0 or cap <= 0:
        return []
    if (w < 0).any():
        raise ValueError("knapsack weights must be non-negative")
    best = np.zeros(cap + 1)
    take = np.zeros((n, cap + 1), dtype=bool)
    for i in range(n):
        wi = w[i]
        if wi > cap:
            continue
        cand = np.full(cap + 1, -np.inf)
        cand[wi:] = best[: cap + 1 - wi] + v[i]
        better = cand > best
        take[i] = better
        best = np.where(better, cand, best)
    chosen = []
    c = cap
    for i in range(n - 1, -1, -1):
        if take[i, c]:
            chosen.append(i)
            c -= w[i]
    return sorted(chosen)


def summary_from_scores(step_scores, video, proportion: float = 0.15) -> np.ndarray:
    """The eccv16 keyshot protocol: upsample step scores to frames, score each KTS segment by its
    mean frame score, pick segments by 0/1 knapsack (weights n_frame_per_seg, capacity
    floor(proportion * n_frames)), and mark the chosen segments' frames. uint8 [n_frames]."""
    frame_scores = upsample_scores(step_scores, video.picks, video.n_frames)
    cps = np.asarray(video.change_points, dtype=np.int64)
    seg_scores = np.array([frame_scores[s : e + 1].mean() for s, e in cps])
    chosen = knapsack(seg_scores, video.n_frame_per_seg, math.floor(proportion * video.n_frames))
    summary = np.zeros(video.n_frames, dtype=np.uint8)
    for i in chosen:
        s, e = cps[i]
        summary[s : e + 1] = 1
    return summary


def keyshot_users(video, proportion: float = 0.15) -> np.ndarray | None:
    """Binary per-user summaries for F: ``user_summary``, else each annotator's raw ``user_scores`` turned
    into keyshots over the video's shots (shot means, knapsack at floor(proportion * n_frames)), which is
    how the eccv16 TVSum user_summary was built from the raw annotations."""
    if video.user_summary is not None:
        return np.asarray(video.user_summary)
    raw = getattr(video, "user_scores", None)
    if raw is None:
        return None
    cps = np.asarray(video.change_points, dtype=np.int64)
    out = np.zeros((len(raw), video.n_frames), dtype=np.uint8)
    for u, scores in enumerate(np.asarray(raw, dtype=np.float64)):
        seg = np.array([scores[s : e + 1].mean() for s, e in cps])
        for i in knapsack(seg, video.n_frame_per_seg, math.floor(proportion * video.n_frames)):
            out[u, cps[i, 0] : cps[i, 1] + 1] = 1
    return out


def f_score(summary, user_summary, mode: str = "max") -> float:
    """F-measure (0-100) of a binary frame summary against each user's summary, then the max over
    users ("max", SumMe) or the mean ("avg", TVSum). The summary is zero-padded or trimmed to the
    users' length; F is 0 for a user with no overlap."""
    if mode not in ("max", "avg"):
        raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
    users = _np(user_summary).astype(np.float64)
    if users.ndim == 1:
        users = users[None]
    users = (users > 0).astype(np.float64)
    s = (_np(summary).astype(np.float64).reshape(-1) > 0).astype(np.float64)
    n = users.shape[1]
    s = s[:n] if len(s) >= n else np.concatenate([s, np.zeros(n - len(s))])
    scores = []
    for u in users:
        overlap = float((s * u).sum())
        if overlap == 0:
            scores.append(0.0)
            continue
        p = overlap / s.sum()
        r = overlap / u.sum()
        scores.append(2 * p * r / (p + r) * 100.0)
    return float(max(scores)) if mode == "max" else float(np.mean(scores))


def reference_scores(video) -> np.ndarray | None:
    """Per-step reference importance: gtscore, else the annotators' mean raw score, else the users' mean
    summary, at the picks."""
    if video.gtscore is not None:
        return np.asarray(video.gtscore, dtype=np.float64)
    if getattr(video, "user_scores", None) is not None:
        return np.asarray(video.user_scores, dtype=np.float64).mean(axis=0)[np.asarray(video.picks)]
    if video.user_summary is not None:
        return np.asarray(video.user_summary, dtype=np.float64).mean(axis=0)[np.asarray(video.picks)]
    return None


def annotator_scores(video) -> np.ndarray | None:
    """Each annotator's per-step reference ``[n_users, n_steps]`` at the picks: their raw importance
    scores (``user_scores``, e.g. TVSum's 1-5) when the data carry them, which is the published protocol;
    otherwise their binary keyshot summary, which the eccv16 h5 files keep and which gives lower,
    non-comparable values (``reference_kind`` says which)."""
    raw = getattr(video, "user_scores", None)
    if raw is not None:
        return np.asarray(raw, dtype=np.float64)[:, np.asarray(video.picks)]
    if video.user_summary is None:
        return None
    return np.asarray(video.user_summary, dtype=np.float64)[:, np.asarray(video.picks)]


def reference_kind(video) -> str | None:
    """What ``rank_correlation`` compares against: "raw annotator scores", "binary keyshots" or None."""
    if getattr(video, "user_scores", None) is not None:
        return "raw annotator scores"
    return "binary keyshots" if video.user_summary is not None else None


def _tau_rho(s: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    if np.ptp(s) == 0 or np.ptp(ref) == 0:
        return float("nan"), float("nan")
    return float(stats.kendalltau(s, ref).statistic), float(stats.spearmanr(s, ref).statistic)


def _scores(step_scores, n: int) -> np.ndarray:
    s = _np(step_scores).astype(np.float64).reshape(-1)
    if len(s) != n:
        raise ValueError(f"{len(s)} scores for {n} steps")
    return s


def rank_correlation(step_scores, video) -> tuple[float, float]:
    """(Kendall's tau-b, Spearman's rho) per annotator (Otani et al., CVPR 2019; CA-SUM's evaluation code):
    the coefficient between the step scores and **each annotator's** reference, averaged over annotators
    (annotators whose reference is constant are skipped). The published protocol needs raw scores
    (``video.user_scores``); with only binary ``user_summary`` the value is "tau vs binary keyshots"
    (0.126/0.136 instead of 0.177/0.204 for TVSum's humans). NaN when the video has no per-annotator
    reference or the scores are constant. See ``rank_correlation_gtscore`` for the other variant."""
    users = annotator_scores(video)
    if users is None:
        return float("nan"), float("nan")
    s = _scores(step_scores, users.shape[1])
    pairs = [_tau_rho(s, u) for u in users]
    pairs = [p for p in pairs if not math.isnan(p[0])]
    if not pairs:
        return float("nan"), float("nan")
    return float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs]))


def rank_correlation_gtscore(step_scores, video) -> tuple[float, float]:
    """(Kendall's tau-b, Spearman's rho) against the **mean** reference (``gtscore``, else the users' mean
    summary at the picks): one coefficient per video. Usually larger than the per-annotator average, since
    averaging removes the annotators' disagreement. NaN when unannotated or either side is constant."""
    ref = reference_scores(video)
    if ref is None:
        return float("nan"), float("nan")
    return _tau_rho(_scores(step_scores, len(ref)), ref)


# ----------------------------------------------------------------------------- keyframe selection and baselines
def budget_k(n_steps: int, budget_ratio: float) -> int:
    """Number of keyframes for a budget: max(1, round(budget_ratio * n_steps)), at most n_steps."""
    return int(min(n_steps, max(1, round(budget_ratio * n_steps))))


def keyframes_topk(step_scores, budget_ratio: float) -> np.ndarray:
    """Indices (sorted, int64) of the top-k scoring steps, k = budget_k(n_steps, budget_ratio);
    ties go to the earlier step."""
    s = _np(step_scores).astype(np.float64).reshape(-1)
    k = budget_k(len(s), budget_ratio)
    order = np.argsort(-s, kind="stable")
    return np.sort(order[:k]).astype(np.int64)


def random_scores(n_steps: int, rng) -> np.ndarray:
    """Uniform [0, 1) scores: the random-summary baseline (rng: np.random.Generator or a seed)."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return rng.random(int(n_steps))


def uniform_keyframes(n_steps: int, budget_ratio: float) -> np.ndarray:
    """k = budget_k(...) keyframes evenly spaced: the centre step of each of k equal chunks."""
    k = budget_k(n_steps, budget_ratio)
    return np.floor((np.arange(k) + 0.5) * n_steps / k).astype(np.int64)


def uniform_scores(n_steps: int, budget_ratio: float) -> np.ndarray:
    """Scores that are 1 at `uniform_keyframes` and 0 elsewhere (so top-k gives exactly those
    keyframes, and the F-score protocol sees an evenly spread importance)."""
    s = np.zeros(int(n_steps))
    s[uniform_keyframes(n_steps, budget_ratio)] = 1.0
    return s
