"""Scoring videos with a trained policy, and the model vs random vs uniform comparison.

Protocol (see README "Metrics"): the policy's deterministic probabilities are the importance scores.
Keyframes are k = budget_ratio * n_steps steps chosen greedily by score with temporal suppression
(``select_keyframes``; plain top-k on request) for RecErr, Diversity and MS-SWD; the F-score uses
the standard keyshot protocol (shot scores -> knapsack at 15 % -> F against each user). Random and
uniform summaries go through exactly the same code at the same budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from trainkit.checkpoint import load_checkpoint
from trainkit.device import autocast
from trainkit.errors import UserError
from trainkit.runsafety import raise_if_stopped

from . import metrics as M
from .cache import VideoWork, content_hash
from .config import DSNConfig
from .model import DSNAdvanced, DSNBaseline, build_model

# kendall_tau / spearman_rho: the published per-annotator average; *_gtscore: against the mean gtscore.
METRIC_KEYS = ("F", "kendall_tau", "spearman_rho", "kendall_tau_gtscore", "spearman_rho_gtscore", "RecErr",
               "Diversity", "MS_SWD")


# --------------------------------------------------------------------------------------------- batching
def pad_batch(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[T_i, D]`` tensors into ``[B, T_max, D]`` with a validity mask."""
    T = max(f.shape[0] for f in features)
    x = features[0].new_zeros(len(features), T, features[0].shape[1])
    mask = torch.zeros(len(features), T, dtype=torch.bool, device=x.device)
    for i, f in enumerate(features):
        x[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = True
    return x, mask


def collate_pyramids(pyramids: list[list[tuple[torch.Tensor, torch.Tensor]]]):
    """Per-video pooled inputs (from the cache) -> batched, padded levels matching ``pool_pyramid``."""
    levels = []
    for level in zip(*pyramids):
        xs = [x for x, _ in level]
        ms = [m for _, m in level]
        x, _ = pad_batch(xs)
        mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        for i, m in enumerate(ms):
            mask[i, : m.shape[0]] = m
        levels.append((x, mask))
    return levels


def policy_probs(model: nn.Module, feats: list[torch.Tensor], digests: list[str], work: VideoWork,
                 precision: str = "fp32") -> torch.Tensor:
    """Forward a batch of videos (padded, masked); pooled multi-scale inputs come through ``work``."""
    x, mask = pad_batch(feats)
    pyramid = None
    if isinstance(model, DSNAdvanced):
        pyramid = collate_pyramids([work.pyramid(d, f, model.config.num_scales) for d, f in zip(digests, feats)])
    with autocast(x.device, precision):
        probs = model(x, mask, pyramid)
    return probs.float()


# --------------------------------------------------------------------------------------------- checkpoints
def load_policy(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Build the model stored in a ``dsn_checkpoint_ep{N}.pt`` (either format); returns (model, checkpoint)."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("config"), dict) or not ({"model", "encoder"} & set(ckpt)):
        raise UserError("not a dsn checkpoint", str(path),
                        "expected a dsn_checkpoint_ep{N}.pt written by `dsn train` (with 'config' and 'model' or 'encoder')")
    model_type = ckpt.get("model_type", "baseline" if "encoder" in ckpt else "advanced")
    cfg = dict(ckpt["config"])
    cfg["model_type"] = model_type
    try:
        model = build_model(DSNConfig.from_any(cfg))
        if model_type == "baseline":
            model.encoder.load_state_dict(ckpt["encoder"])
            model.policy.load_state_dict(ckpt["policy"])
        else:
            model.load_state_dict(ckpt["model"])
    except UserError as err:  # a config from another tool's checkpoint
        raise UserError("checkpoint does not hold a dsn model", str(path), err.message[:200]) from None
    except (KeyError, RuntimeError) as err:
        raise UserError("checkpoint does not hold a dsn model", str(path), " ".join(str(err).split())[:200]) from None
    return model.to(device).eval(), ckpt


# --------------------------------------------------------------------------------------------- keyframes
def select_keyframes(scores: np.ndarray, budget_ratio: float, method: str = "nms") -> np.ndarray:
    """Exactly ``budget_k`` keyframe steps (sorted) from per-step scores.

    ``topk``: the k highest scores. ``nms``: the same greedy order, but each chosen step suppresses its
    neighbours within half the average keyframe spacing (``n_steps // (2k)``), so that one long
    high-scoring shot cannot take the whole budget (neighbouring steps of a shot have near-identical
    features, hence near-identical scores); if suppression leaves fewer than k, the best suppressed
    steps fill up.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if method == "topk":
        return M.keyframes_topk(s, budget_ratio)
    if method != "nms":
        raise UserError(f"unknown keyframe selection '{method}'", "keyframe_selection", "expected topk or nms")
    k = M.budget_k(len(s), budget_ratio)
    radius = max(1, len(s) // (2 * k))
    order = np.argsort(-s, kind="stable")
    blocked = np.zeros(len(s), dtype=bool)
    chosen: list[int] = []
    for i in order:
        if not blocked[i]:
            chosen.append(int(i))
            blocked[max(0, i - radius) : i + radius + 1] = True
            if len(chosen) == k:
                break
    if len(chosen) < k:
        taken = set(chosen)
        chosen += [int(i) for i in order if int(i) not in taken][: k - len(chosen)]
    return np.sort(np.asarray(chosen, dtype=np.int64))


# --------------------------------------------------------------------------------------------- metrics
def _nanmean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def no_shot_fits(video, proportion: float) -> bool:
    """True when no shot fits the keyshot knapsack (floor(proportion * n_frames) frames): keyshot F is undefined."""
    lengths = np.asarray(video.n_frame_per_seg)
    return lengths.size == 0 or int(lengths.min()) > math.floor(proportion * video.n_frames)


def summary_metrics(video, scores: np.ndarray | None, keyframes: np.ndarray, *, proportion: float, f_mode: str,
                    ms_swd: bool = True, ranked: bool = True) -> dict[str, float | None]:
    """All metrics for one video's summary. ``scores`` drive F (and tau/rho when ``ranked``)."""
    out: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    feats = video.features
    out["RecErr"] = float(M.rec_err(feats, keyframes))
    out["Diversity"] = float(M.diversity(feats, keyframes)) if len(keyframes) > 1 else None
    if ms_swd and video.frames is not None:
        out["MS_SWD"] = float(M.ms_swd(video.frames, keyframes))
    users = M.keyshot_users(video, proportion) if scores is not None else None
    if users is not None and no_shot_fits(video, proportion):
        # Every shot is longer than the knapsack budget (a one-shot real clip): every summary, the users' built
        # from raw scores included, is empty and F would be 0 by construction, not a measurement (audit aud21-7).
        users = None
    if users is not None:
        summary = M.summary_from_scores(scores, video, proportion=proportion)
        out["F"] = float(M.f_score(summary, users, mode=f_mode))
    if scores is not None and ranked and (video.gtscore is not None or video.user_summary is not None
                                          or video.user_scores is not None):
        for suffix, fn in (("", M.rank_correlation), ("_gtscore", M.rank_correlation_gtscore)):
            tau, rho = fn(scores, video)
            out["kendall_tau" + suffix] = None if math.isnan(tau) else float(tau)
            out["spearman_rho" + suffix] = None if math.isnan(rho) else float(rho)
    return out


@torch.no_grad()
def score_videos(model: nn.Module, videos: list, work: VideoWork | None = None, *, device="cpu",
                 precision: str = "fp32", digests: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Deterministic importance scores ``[n_steps]`` per video key (one video at a time)."""
    work = work or VideoWork(None)
    model.eval()
    out = {}
    for v in videos:
        raise_if_stopped()  # a training run's SIGTERM ends validation within one video (issue 24); no-op in evaluate
        f = torch.from_numpy(np.ascontiguousarray(v.features, dtype=np.float32)).to(device)
        digest = digests[v.key] if digests and v.key in digests else content_hash(f)
        out[v.key] = policy_probs(model, [f], [digest], work, precision)[0].cpu().numpy()
    return out


def evaluate_scores(videos: list, scores: dict[str, np.ndarray], *, budget_ratio: float, proportion: float = 0.15,
                    f_mode: str = "avg", ms_swd: bool = True, selection: str = "nms") -> dict[str, float | None]:
    """Mean over videos of the model's metrics."""
    rows = [summary_metrics(v, scores[v.key], select_keyframes(scores[v.key], budget_ratio, selection),
                            proportion=proportion, f_mode=f_mode, ms_swd=ms_swd) for v in videos]
    return {k: _nanmean(r[k] for r in rows) for k in METRIC_KEYS}


def baseline_metrics(videos: list, *, budget_ratio: float, proportion: float = 0.15, f_mode: str = "avg",
                     ms_swd: bool = True, seed: int = 0, random_draws: int = 5, selection: str = "nms") -> dict[str, dict]:
    """Random (mean over ``random_draws`` seeded draws) and uniform summaries at the same budget.

    Random scores go through the same keyframe selection as the model's. Uniform has no ranking, so its
    tau/rho are null; its F uses the uniform keyframes as shot scores.
    """
    rng = np.random.default_rng(seed)
    rand_rows, uni_rows = [], []
    for v in videos:
        draws = []
        for _ in range(random_draws):
            s = M.random_scores(v.n_steps, rng)
            draws.append(summary_metrics(v, s, select_keyframes(s, budget_ratio, selection), proportion=proportion,
                                         f_mode=f_mode, ms_swd=ms_swd))
        rand_rows.append({k: _nanmean(d[k] for d in draws) for k in METRIC_KEYS})
        kf = np.asarray(M.uniform_keyframes(v.n_steps, budget_ratio))
        uni_rows.append(summary_metrics(v, M.uniform_scores(v.n_steps, budget_ratio), kf, proportion=proportion, f_mode=f_mode, ms_swd=ms_swd,
                                        ranked=False))
    return {
        "random": {k: _nanmean(r[k] for r in rand_rows) for k in METRIC_KEYS},
        "uniform": {k: _nanmean(r[k] for r in uni_rows) for k in METRIC_KEYS},
    }


def evaluate_checkpoint(checkpoint: str | Path, dataset_root: str | Path | None, *, split_index: int | None = None,
                        device: str = "cpu", budget_ratio: float | None = None, f_mode: str | None = None,
                        proportion: float | None = None, ms_swd: bool = True, seed: int = 0,
                        selection: str | None = None, precision: str = "fp32",
                        annotations: dict | None = None) -> dict[str, Any]:
    """``{"model": {...}, "random": {...}, "uniform": {...}, "info": {...}}`` on the split's test videos.

    ``annotations`` ({name: dsn.annotations.Annotation}, e.g. from ``--tvsum_mat``/``--summe``) replace the
    dataset's references for the videos they match by name or frame count (``attach_annotations``)."""
    from trainkit.device import check_precision, resolve_device

    from .data import default_dataset_root, ensure_default_dataset, load_splits, load_videos

    dev = resolve_device(device)
    model, ckpt = load_policy(checkpoint, dev)
    train_cfg = ckpt.get("train_config") or {}
    check_precision(precision)
    budget = budget_ratio if budget_ratio is not None else float(train_cfg.get("budget_ratio", 0.06))
    check_budget_ratio(budget)
    f_mode = f_mode or train_cfg.get("f_mode", "avg")
    proportion = proportion if proportion is not None else float(train_cfg.get("summary_proportion", 0.15))
    split_index = split_index if split_index is not None else int(train_cfg.get("split_index", 0))
    selection = selection or train_cfg.get("keyframe_selection", "nms")
    root = Path(dataset_root) if dataset_root else ensure_default_dataset()
    splits = load_splits(root)
    if not 0 <= split_index < len(splits):
        raise UserError(f"split index {split_index} out of range", "--split_index", f"expected 0..{len(splits) - 1}")
    keys = list(splits[split_index]["test_keys"])
    if not keys:
        raise UserError(f"split {split_index} has no test videos", str(root),
                        "a split with test_keys (evaluate scores held-out videos only)")
    videos = load_videos(root, keys=keys)
    check_feature_dim(model, videos, str(root))
    vids = [videos[k] for k in keys]
    notes = []
    if annotations is not None:
        notes.append(attach_annotations(vids, annotations))
    scores = score_videos(model, vids, device=dev, precision=precision)
    result = {"model": evaluate_scores(vids, scores, budget_ratio=budget, proportion=proportion, f_mode=f_mode,
                                       ms_swd=ms_swd, selection=selection)}
    result.update(baseline_metrics(vids, budget_ratio=budget, proportion=proportion, f_mode=f_mode, ms_swd=ms_swd,
                                   seed=seed, selection=selection))
    if all(v.frames is None for v in vids):
        notes.append("MS_SWD skipped: the dataset has no thumbnails ('frames')")
    if all(v.user_summary is None and v.user_scores is None for v in vids):
        notes.append("F skipped: no user_summary annotations")
    elif n_long := sum(no_shot_fits(v, proportion) for v in vids if v.user_summary is not None or v.user_scores is not None):
        notes.append(f"F null for {n_long} of {len(vids)} video(s): no shot is shorter than the {proportion:g} knapsack "
                     "budget (e.g. one KTS shot for the whole clip), so every keyshot summary is empty")
    if result["model"].get("Diversity") is None:  # audit aud21-8: a null metric carries its reason
        notes.append("Diversity null: every test video has fewer than 2 keyframes at this budget (it needs a pair)")
    kinds = sorted({k for v in vids if (k := M.reference_kind(v))})
    if kinds:
        notes.append("kendall_tau/spearman_rho against " + " and ".join(kinds)
                     + ("" if kinds == ["raw annotator scores"] else
                        " (binary keyshots give lower values than the published raw-score protocol: "
                        "pass --tvsum_mat for TVSum's raw scores)"))
    result["info"] = {"checkpoint": str(checkpoint), "dataset_root": str(root), "split_index": split_index,
                      "num_videos": len(vids), "budget_ratio": budget, "f_mode": f_mode,
                      "summary_proportion": proportion, "keyframe_selection": selection,
                      "model_type": ckpt.get("model_type"), "notes": notes}
    return result


def attach_annotations(videos: list, annotations: dict) -> str:
    """Give each video the real annotations matching it by ``video_name``/key (file stem) or by a unique
    frame count: raw per-annotator scores (TVSum) become ``user_scores`` (tau/rho use them; F uses their
    keyshots over the video's own shots), SumMe selections become ``user_summary``. Returns a note."""
    from .annotations import match_annotation

    matched = []
    for v in videos:
        a = match_annotation(v.video_name or v.key, v.n_frames, annotations)
        if a is None:
            continue
        if a.n_frames != v.n_frames:
            raise UserError(f"video '{v.key}' has {v.n_frames} frames but annotation '{a.name}' has {a.n_frames}",
                            "--tvsum_mat/--summe", "annotations of the same video (same frame count)")
        if a.dataset == "tvsum":
            v.user_scores, v.user_summary = a.user_scores.astype(np.float32), None
        else:
            v.user_summary, v.user_scores = (a.user_scores > 0).astype(np.uint8), None
        v.gtscore = None  # the dataset's own mean reference would not describe these annotations
        matched.append(f"{v.key}={a.name}")
    if not matched:
        raise UserError(f"none of the {len(videos)} test videos matches an annotated video by name or frame count",
                        "--tvsum_mat/--summe", "a dataset whose video_name (or frame count) matches the annotations")
    return f"real annotations attached to {len(matched)}/{len(videos)} test videos: " + ", ".join(matched[:8]) + \
        (" ..." if len(matched) > 8 else "")


def check_budget_ratio(budget: float) -> None:
    if not 0 < budget < 1:
        raise UserError(f"bad budget ratio {budget}", "--budget_ratio", "expected 0 < ratio < 1")


def check_feature_dim(model: nn.Module, videos: dict, where: str) -> None:
    """Every video has the model's feature size, and fits a learned positional table (checked up front,
    so a long video fails with one line before any work rather than mid-training)."""
    want = model.config.in_dim
    for key, v in videos.items():
        if v.features.shape[1] != want:
            raise UserError(f"video '{key}' has {v.features.shape[1]}-d features", where,
                            f"expected {want}-d features, as the checkpoint's model was trained on")
    check_sequence_length(model.config, videos, where)


def check_sequence_length(config: DSNConfig, videos: dict, where: str) -> None:
    """A learned positional table covers ``max_len`` steps; longer videos cannot be scored."""
    if config.model_type != "advanced" or config.pos_encoding_type != "learned":
        return
    key, longest = max(((k, v.n_steps) for k, v in videos.items()), key=lambda kv: kv[1], default=(None, 0))
    if longest > config.max_len:
        raise UserError(f"video '{key}' has {longest} steps, more than the learned positional table's "
                        f"model.max_len={config.max_len}", where,
                        f"--set model.max_len={longest} (or more), or --pos_encoding_type sinusoidal")


def format_table(result: dict[str, Any]) -> str:
    """Side-by-side Markdown table of model / random / uniform."""
    cols = [c for c in ("model", "random", "uniform") if c in result]
    lines = ["| metric | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for k in METRIC_KEYS:
        cells = []
        for c in cols:
            v = result[c].get(k)
            cells.append("n/a" if v is None else f"{v:.4f}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
