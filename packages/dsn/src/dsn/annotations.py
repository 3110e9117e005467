"""Real human annotations: TVSum's raw per-frame scores and SumMe's per-user selections.

- `read_tvsum_mat`: `ydata-tvsum50.mat` (MATLAB v7.3, i.e. HDF5, read with h5py): per video the
  annotators' raw 1-5 importance scores `user_anno` [n_frames x 20].
- `read_summe`: SumMe's per-user ground truth `user_score` [n_frames x n_users] (value > 0 = the
  frame is in that user's summary) from the GT `.mat` files, a `.npz` of `<video>/user_score`
  arrays, or one CSV per video (frames x users).
- `human_rank_agreement` / `random_rank_agreement`: the TVSum rows of Otani et al. (CVPR 2019):
  each annotator's scores against each other annotator's (Kendall tau-b, Spearman rho), averaged
  over the others, then over annotators, then over videos. Random scores against each annotator.
- `human_f_loo`: SumMe's leave-one-out human F: each user's selection against the other users
  (max and mean over them), averaged over users and videos.
- `score_predictions`: per-frame predictions of a method against these annotations with the
  published protocols (TVSum: tau/rho per annotator + F with a 15 % knapsack over shots; SumMe:
  F against each user, max and mean).
"""
from __future__ import annotations

import json
import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from scipy import stats

from trainkit.errors import UserError

from . import metrics as M

log = logging.getLogger(__name__)

SUMME_CSV_MAPPING = "summe_mapping.json"


@dataclass
class Annotation:
    name: str  # TVSum YouTube id / SumMe video name
    dataset: str  # "tvsum" | "summe"
    user_scores: np.ndarray  # float64 [n_users, n_frames]: TVSum raw 1..5; SumMe user_score (> 0 = selected)
    fps: float | None = None
    title: str | None = None

    @property
    def n_frames(self) -> int:
        return int(self.user_scores.shape[1])

    @property
    def n_users(self) -> int:
        return int(self.user_scores.shape[0])


# ----------------------------------------------------------------------------------------------- readers
def _mat_string(f: h5py.File, ref) -> str:
    arr = np.asarray(f[ref][()]).reshape(-1)
    return "".join(chr(int(c)) for c in arr)


def _mat_scalar(f: h5py.File, ref) -> float:
    return float(np.asarray(f[ref][()]).reshape(-1)[0])


def read_tvsum_mat(path) -> dict[str, Annotation]:
    """`ydata-tvsum50.mat` -> {video id: Annotation} in file order (user_scores = raw 1..5 scores)."""
    path = Path(path)
    expected = "TVSum's ydata-tvsum50.mat (MATLAB v7.3 struct 'tvsum50' with video, nframes, user_anno)"
    if not path.is_file():
        raise UserError("TVSum annotation file not found", str(path), expected)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"cannot read as MATLAB v7.3/HDF5 ({' '.join(str(e).split())[:80]})", str(path), expected) from None
    out: dict[str, Annotation] = {}
    with f:
        t = f.get("tvsum50")
        if not isinstance(t, h5py.Group) or not {"video", "user_anno", "nframes"} <= set(t.keys()):
            raise UserError("no struct 'tvsum50' with video/user_anno/nframes", str(path), expected)
        n = t["video"].shape[0]
        for i in range(n):
            name = _mat_string(f, t["video"][i, 0])
            anno = np.asarray(f[t["user_anno"][i, 0]][()], dtype=np.float64)
            n_frames = int(_mat_scalar(f, t["nframes"][i, 0]))
            # MATLAB stores user_anno as nframes x users; HDF5 shows it transposed.
            if anno.shape[1] != n_frames and anno.shape[0] == n_frames:
                anno = anno.T
            if anno.shape[1] != n_frames:
                raise UserError(f"video {i + 1} ({name}): user_anno has shape {anno.shape} for {n_frames} frames",
                                str(path), "user_anno of nframes x annotators")
            fps = None
            if "length" in t:
                length = _mat_scalar(f, t["length"][i, 0])
                fps = n_frames / length if length > 0 else None
            title = _mat_string(f, t["title"][i, 0]) if "title" in t else None
            out[name] = Annotation(name, "tvsum", anno, fps=fps, title=title)
    return out


def _summe_from_mat(p: Path) -> np.ndarray:
    import scipy.io

    try:
        m = scipy.io.loadmat(str(p), variable_names=["user_score"])
        us = m.get("user_score")
    except NotImplementedError:  # v7.3
        with h5py.File(p, "r") as f:
            us = np.asarray(f["user_score"][()]).T if "user_score" in f else None
    except (ValueError, OSError, scipy.io.matlab.MatReadError) as e:  # MatReadError is no ValueError (audit aud21-3)
        raise UserError(f"cannot read SumMe GT file ({' '.join(str(e).split())[:80]})", str(p),
                        "a SumMe GT .mat with 'user_score'") from None
    if us is None:
        raise UserError("no 'user_score' in SumMe GT file", str(p), "a SumMe GT .mat with 'user_score' (frames x users)")
    return np.asarray(us, dtype=np.float64)


def _summe_from_csv(p: Path) -> np.ndarray:
    try:
        a = np.loadtxt(p, delimiter=",", encoding="utf-8-sig", ndmin=2)
    except ValueError as e:
        raise UserError(f"not a numeric CSV ({' '.join(str(e).split())[:80]})", str(p),
                        "one row per frame, one column per user (SumMe user_score)") from None
    return a.astype(np.float64)


def read_summe(folder) -> dict[str, Annotation]:
    """SumMe per-user ground truth from a folder -> {video name: Annotation} (user_scores [users, frames]).

    Looks, in this order, for GT `.mat` files (in the folder or its `GT/`), a `.npz` with
    `<video>/user_score` arrays, or per-video CSVs (frames x users; in the folder or a `superframes_*`
    subfolder; named through `summe_mapping.json` when present). Byte-identical matrices under two
    names (a known defect of one public CSV export) are dropped with a warning: a copy is not a video.
    """
    folder = Path(folder)
    expected = ("a SumMe folder with GT/*.mat (user_score), *.npz of '<video>/user_score' or per-video CSVs; "
                "or one such .npz / GT .mat file")
    single = folder.is_file() and folder.suffix.lower() in (".npz", ".mat")
    if not folder.is_dir() and not single:
        raise UserError("SumMe folder not found", str(folder), expected)
    raw: dict[str, np.ndarray] = {}
    if single:  # the converted summe_user_score.npz (or one GT .mat) given directly (audit aud21-2)
        mats = [folder] if folder.suffix.lower() == ".mat" else []
        npzs = [folder] if folder.suffix.lower() == ".npz" else []
    else:
        mats = sorted(folder.glob("*.mat")) or sorted((folder / "GT").glob("*.mat"))
        npzs = sorted(folder.glob("*.npz"))
    if mats:
        for p in mats:
            raw[p.stem] = _summe_from_mat(p).T
    elif npzs:
        for p in npzs:
            try:
                with np.load(p) as z:
                    for k in z.files:
                        if k.endswith("/user_score"):
                            raw[k.rsplit("/", 1)[0]] = np.asarray(z[k], dtype=np.float64).T
            except (ValueError, OSError, zipfile.BadZipFile) as e:
                raise UserError(f"cannot read SumMe .npz ({' '.join(str(e).split())[:80]})", str(p),
                                "a .npz of '<video>/user_score' arrays (frames x users)") from None
    else:
        csvs = sorted(folder.glob("*.csv")) or sorted(c for d in sorted(folder.glob("superframes_*")) for c in d.glob("*.csv"))
        mapping = {}
        for cand in (folder / SUMME_CSV_MAPPING, folder.parent / SUMME_CSV_MAPPING):
            if cand.is_file():
                mapping = {m["file"]: m for m in json.loads(cand.read_text())}
                break
        for p in csvs:
            m = mapping.get(p.name, {})
            if m and not m.get("valid", True):
                log.warning("%s: skipped (marked invalid in %s)", p, SUMME_CSV_MAPPING)
                continue
            raw[m.get("video", p.stem)] = _summe_from_csv(p).T
    if not raw:
        raise UserError("no SumMe annotations found", str(folder), expected)
    for name, us in raw.items():
        # raw is users x frames here. More "users" than frames means the file was stored users x frames (the
        # keyframe CSVs of user_summaries/ are): read as it was, the leave-one-out loop ran over thousands of
        # "users" and never ended (audit aud21-1). SumMe has 15-18 users and thousands of frames.
        if us.shape[0] > us.shape[1]:
            log.warning("SumMe '%s': %d x %d read as users x frames (more columns than rows); transposed",
                        name, us.shape[1], us.shape[0])
            raw[name] = us.T
    out: dict[str, Annotation] = {}
    seen: dict[bytes, str] = {}
    for name, us in raw.items():
        digest = us.tobytes()
        if digest in seen:
            log.warning("SumMe: '%s' is an exact copy of '%s'; dropped", name, seen[digest])
            continue
        seen[digest] = name
        out[name] = Annotation(name, "summe", us)
    return out


# ----------------------------------------------------------------------------------------------- human rows
def _tau_b_from_table(c: np.ndarray, n: int) -> float:
    """Kendall's tau-b from the joint count table c[a, b] of two rankings (values ascending)."""
    rows_gt = np.zeros_like(c)
    rows_gt[:-1] = c[::-1].cumsum(0)[::-1][1:]  # pairs with x strictly greater
    below_right = np.zeros_like(c)
    below_right[:, :-1] = rows_gt[:, ::-1].cumsum(1)[:, ::-1][:, 1:]  # ... and y strictly greater
    below_left = np.zeros_like(c)
    below_left[:, 1:] = rows_gt.cumsum(1)[:, :-1]  # ... and y strictly smaller
    p = float((c * below_right).sum())
    q = float((c * below_left).sum())
    n0 = n * (n - 1) / 2.0
    tx, ty = c.sum(1), c.sum(0)
    denom = math.sqrt((n0 - float((tx * (tx - 1)).sum()) / 2.0) * (n0 - float((ty * (ty - 1)).sum()) / 2.0))
    return (p - q) / denom if denom > 0 else float("nan")


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b, equal to scipy's; computed from the joint count table when both sides take few
    distinct values (TVSum's 1-5 scores: far faster than scipy, which matters for 9,500 annotator pairs)."""
    ux, ix = np.unique(x, return_inverse=True)
    uy, iy = np.unique(y, return_inverse=True)
    if len(ux) * len(uy) > 4096:
        return float(stats.kendalltau(x, y).statistic)
    c = np.bincount(ix.ravel() * len(uy) + iy.ravel(), minlength=len(ux) * len(uy)).reshape(len(ux), len(uy))
    return _tau_b_from_table(c.astype(np.float64), len(x))


def _pairwise_tau_rho(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All annotator pairs' tau-b and rho ([n, n], NaN on the diagonal and for constant annotators)."""
    n, t = users.shape
    const = np.ptp(users, axis=1) == 0
    # Spearman's rho = Pearson's r of the (average-tied) ranks: one matrix product for all pairs.
    ranks = np.stack([stats.rankdata(u) for u in users])
    z = ranks - ranks.mean(1, keepdims=True)
    z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    rho = z @ z.T
    codes = [np.unique(u, return_inverse=True) for u in users]
    tau = np.full((n, n), np.nan)
    for i in range(n):
        ui, ii = codes[i]
        for j in range(i + 1, n):
            uj, ij = codes[j]
            if len(ui) * len(uj) > 4096:
                tau[i, j] = tau[j, i] = stats.kendalltau(users[i], users[j]).statistic
                continue
            c = np.bincount(ii.ravel() * len(uj) + ij.ravel(), minlength=len(ui) * len(uj)).reshape(len(ui), len(uj))
            tau[i, j] = tau[j, i] = _tau_b_from_table(c.astype(np.float64), t)
    bad = const[:, None] | const[None, :] | np.eye(n, dtype=bool)
    tau[bad] = np.nan
    rho[bad] = np.nan
    return tau, rho


def human_rank_agreement(annotations: dict[str, Annotation], *, subsample: int = 1) -> dict[str, float]:
    """TVSum human row (Otani et al. 2019): each annotator vs each other annotator, mean over the others,
    over annotators, over videos. ``subsample`` takes every k-th frame (CA-SUM uses 15)."""
    taus, rhos = [], []
    for a in annotations.values():
        users = a.user_scores[:, ::subsample]
        tau, rho = _pairwise_tau_rho(users)
        taus.append(np.nanmean(np.nanmean(tau, axis=1)))
        rhos.append(np.nanmean(np.nanmean(rho, axis=1)))
    return {"kendall_tau": float(np.mean(taus)), "spearman_rho": float(np.mean(rhos)), "videos": len(taus)}


def _per_annotator(scores: np.ndarray, users: np.ndarray) -> tuple[float, float]:
    pairs = [(kendall_tau_b(scores, u), stats.spearmanr(scores, u).statistic) for u in users if np.ptp(u) > 0]
    if not pairs or np.ptp(scores) == 0:
        return float("nan"), float("nan")
    return float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs]))


def random_rank_agreement(annotations: dict[str, Annotation], *, subsample: int = 1, seed: int = 0,
                          draws: int = 1) -> dict[str, float]:
    """Uniform random per-frame scores against each annotator (the paper's random row, ~0 / ~0)."""
    rng = np.random.default_rng(seed)
    taus, rhos = [], []
    for a in annotations.values():
        users = a.user_scores[:, ::subsample]
        for _ in range(draws):
            t, r = _per_annotator(rng.random(users.shape[1]), users)
            taus.append(t)
            rhos.append(r)
    return {"kendall_tau": float(np.nanmean(taus)), "spearman_rho": float(np.nanmean(rhos)), "videos": len(annotations)}


def human_f_loo(annotations: dict[str, Annotation]) -> dict[str, float]:
    """Leave-one-out human F (SumMe): each user's selection against the others, max and mean over them;
    averaged over users, then videos."""
    f_max, f_avg = [], []
    for a in annotations.values():
        sel = (a.user_scores > 0).astype(np.uint8)
        if sel.shape[0] < 2:
            continue
        mx, av = [], []
        for i in range(sel.shape[0]):
            others = np.delete(sel, i, axis=0)
            mx.append(M.f_score(sel[i], others, mode="max"))
            av.append(M.f_score(sel[i], others, mode="avg"))
        f_max.append(np.mean(mx))
        f_avg.append(np.mean(av))
    return {"F_max": float(np.mean(f_max)), "F_avg": float(np.mean(f_avg)), "videos": len(f_max)}


# ----------------------------------------------------------------------------------------------- predictions
def uniform_segments(n_frames: int, fps: float | None, seconds: float = 2.0) -> np.ndarray:
    """Inclusive frame ranges of equal ~`seconds` shots: the stand-in when no KTS shots are given
    (the annotation files carry no video to segment)."""
    length = max(1, int(round((fps or 30.0) * seconds)))
    starts = np.arange(0, n_frames, length)
    return np.stack([starts, np.minimum(starts + length, n_frames) - 1], axis=1).astype(np.int64)


def keyshot_summary(frame_scores: np.ndarray, change_points: np.ndarray, proportion: float = 0.15) -> np.ndarray:
    """Frame scores -> 0/1 keyshot summary: shot means, 0/1 knapsack at floor(proportion * n_frames)."""
    n = len(frame_scores)
    cps = np.asarray(change_points, dtype=np.int64)
    seg = np.array([frame_scores[s : e + 1].mean() for s, e in cps])
    chosen = M.knapsack(seg, cps[:, 1] - cps[:, 0] + 1, math.floor(proportion * n))
    out = np.zeros(n, dtype=np.uint8)
    for i in chosen:
        out[cps[i, 0] : cps[i, 1] + 1] = 1
    return out


def user_summaries(a: Annotation, change_points: np.ndarray | None = None, proportion: float = 0.15) -> np.ndarray:
    """Binary per-user summaries [n_users, n_frames]: SumMe's selections as they are; for TVSum each
    annotator's raw scores turned into keyshots (shot means + knapsack at 15 %), as the eccv16
    TVSum user_summary was built."""
    if a.dataset == "summe":
        return (a.user_scores > 0).astype(np.uint8)
    cps = change_points if change_points is not None else uniform_segments(a.n_frames, a.fps)
    return np.stack([keyshot_summary(u, cps, proportion) for u in a.user_scores])


def read_predictions(path) -> dict[str, dict[str, np.ndarray]]:
    """A predictions file -> {video name: {"scores": per-frame scores, "change_points"?: [n_seg, 2]}}.

    `.json`: {name: [scores...]} or {name: {"scores": [...], "change_points": [[s, e], ...]}};
    `.npz`: arrays `<name>` or `<name>/scores` (+ optional `<name>/change_points`)."""
    path = Path(path)
    expected = ".json {video: [per-frame scores]} or .npz of '<video>' / '<video>/scores' arrays"
    if not path.is_file():
        raise UserError("predictions file not found", str(path), expected)
    out: dict[str, dict[str, np.ndarray]] = {}
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path) as z:
                for k in z.files:
                    name, _, field = k.partition("/")
                    out.setdefault(name, {})[field or "scores"] = np.asarray(z[k], dtype=np.float64)
        else:
            raw = json.loads(path.read_text())
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            for name, v in raw.items():
                v = v if isinstance(v, dict) else {"scores": v}
                out[name] = {k: np.asarray(x, dtype=np.float64) for k, x in v.items()}
    except (ValueError, OSError, TypeError) as e:
        raise UserError(f"cannot read predictions ({' '.join(str(e).split())[:80]})", str(path), expected) from None
    for name, d in out.items():
        if "scores" not in d or d["scores"].ndim != 1:
            raise UserError(f"video '{name}' has no 1-D per-frame 'scores'", str(path), expected)
    return out


def match_annotation(name: str, n_frames: int, annotations: dict[str, Annotation]) -> Annotation | None:
    """By name (file stem, case-insensitive), else by a unique frame count."""
    stem = Path(name).stem.lower()
    for k, a in annotations.items():
        if k.lower() == stem:
            return a
    same = [a for a in annotations.values() if a.n_frames == n_frames]
    return same[0] if len(same) == 1 else None


def score_predictions(predictions: dict[str, dict[str, np.ndarray]], annotations: dict[str, Annotation], *,
                      proportion: float = 0.15, subsample: int = 1) -> dict[str, object]:
    """Mean metrics of per-frame predictions over the annotated videos they match (published protocols)."""
    rows, unmatched = [], []
    for name, pred in predictions.items():
        a = match_annotation(name, len(pred["scores"]), annotations)
        if a is None:
            unmatched.append(name)
            continue
        s = pred["scores"]
        if len(s) != a.n_frames:
            raise UserError(f"'{name}' has {len(s)} frame scores but {a.name} has {a.n_frames} frames", "--predictions",
                            "one score per annotated frame")
        cps = pred.get("change_points")
        cps = np.asarray(cps, dtype=np.int64) if cps is not None else uniform_segments(a.n_frames, a.fps)
        summary = keyshot_summary(s, cps, proportion)
        users = user_summaries(a, cps, proportion)
        row = {"video": a.name, "dataset": a.dataset,
               "F_max": M.f_score(summary, users, mode="max"), "F_avg": M.f_score(summary, users, mode="avg")}
        if a.dataset == "tvsum":
            row["kendall_tau"], row["spearman_rho"] = _per_annotator(s[::subsample], a.user_scores[:, ::subsample])
        rows.append(row)
    if not rows:  # audit aud21-5: all-null means with exit 0 read as a result; `dsn evaluate` refuses the same
        raise UserError(f"none of the {len(predictions)} predicted videos matches the annotations "
                        f"({', '.join(list(predictions)[:3])}{', ...' if len(predictions) > 3 else ''})", "--predictions",
                        "video names (or unique frame counts) of the given annotation files")
    keys = ("F_max", "F_avg", "kendall_tau", "spearman_rho")
    mean = {k: (float(np.nanmean(v)) if (v := [r[k] for r in rows if k in r]) else None) for k in keys}
    return {"mean": mean, "videos": rows, "unmatched": unmatched}


def agreement(tvsum_mat=None, summe_dir=None, *, subsample: int = 1, seed: int = 0) -> dict[str, object]:
    """The `dsn agreement` table: TVSum human and random rows, SumMe leave-one-out human F."""
    out: dict[str, object] = {}
    if tvsum_mat is not None:
        tv = read_tvsum_mat(tvsum_mat)
        out["human"] = human_rank_agreement(tv, subsample=subsample)
        out["random"] = random_rank_agreement(tv, subsample=subsample, seed=seed)
        out["tvsum"] = {"videos": len(tv), "annotators": sorted({a.n_users for a in tv.values()}),
                        "frames": int(sum(a.n_frames for a in tv.values())), "subsample": subsample}
    if summe_dir is not None:
        sm = read_summe(summe_dir)
        out["summe"] = {"human_loo": human_f_loo(sm), "videos": len(sm)}
    return out
