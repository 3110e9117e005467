"""Benchmarks for the dsn package; prints one JSON object per part (figures go in packages/dsn/README.md).

    uv run python tools/bench_dsn.py reward      # batched reward vs a per-episode loop (5 episodes, T = 1000)
    uv run python tools/bench_dsn.py cache       # advanced-model epoch time with vs without the cache (held frames)
    uv run python tools/bench_dsn.py overhead    # trainkit's OptimizerStep vs a hand-written step
    uv run python tools/bench_dsn.py quality --seeds 11 12    # both models on synthetic datasets x all splits vs random
    uv run python tools/bench_dsn.py validate --set model.pos_scale=0.1   # tuning: folds of split 0's TRAIN keys
    uv run python tools/bench_dsn.py headroom --combine Q.json --out DIR  # oracle F and model agreement (no training)
    uv run python tools/bench_dsn.py shots_clip --out runs/clip   # a made 16-s clip, 4 panning shots (README picture)

Everything runs on one CPU thread (``--threads``) so that figures are comparable on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _timeit(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_reward(args) -> dict:
    from dsn.reward import batched_reward, reward_loop, reward_matrices

    g = torch.Generator().manual_seed(0)
    out = {"part": "reward", "T": args.T, "episodes": args.episodes, "budget": 0.06, "cases": []}
    for D in args.dims:
        x = torch.nn.functional.normalize(torch.randn(args.T, D, generator=g), dim=1)
        actions = (torch.rand(args.episodes, args.T, generator=g) < 0.06).float()
        mats = reward_matrices(x)
        loop = _timeit(lambda: reward_loop(x, actions), args.repeat)
        batched = _timeit(lambda: batched_reward(*reward_matrices(x), actions), args.repeat)
        cached = _timeit(lambda: batched_reward(*mats, actions), args.repeat)
        diff = (reward_loop(x, actions) - batched_reward(*mats, actions)).abs().max().item()
        out["cases"].append({
            "D": D, "loop_ms": round(loop * 1e3, 3), "batched_ms": round(batched * 1e3, 3),
            "batched_cached_matrices_ms": round(cached * 1e3, 3), "speedup_batched": round(loop / batched, 2),
            "speedup_batched_cached": round(loop / cached, 2), "max_abs_diff": diff,
        })
    return out


def _held_dataset(src_root: Path, out: Path, hold: int) -> Path:
    """The default videos re-sampled as if each step were held for ``hold`` steps (animation on threes)."""
    from dsn.data import load_splits, load_videos, write_dataset

    videos = load_videos(src_root)
    held = []
    for v in videos.values():
        rep = lambda a: None if a is None else np.repeat(a, hold, axis=0)
        n_frames = int(v.n_frames)
        picks = np.repeat(v.picks, hold) + np.tile(np.arange(hold), v.n_steps) * max(1, int(np.min(np.diff(v.picks))) // hold)
        v.features, v.frames, v.picks = rep(v.features), rep(v.frames), np.minimum(picks, n_frames - 1)
        v.gtscore = rep(v.gtscore)
        held.append(v)
    return write_dataset(out, held, load_splits(src_root))


def bench_cache(args) -> dict:
    """Epoch time of the advanced model with vs without the cache, on the default videos held on threes.

    Epochs of the two settings are interleaved (same process, own model/optimizer each) so that load
    from other jobs on a shared machine hits both alike; the figure is the median over rounds after the
    first (which fills the cache). Two full ``train`` runs check that the parameters come out identical.
    """
    from dsn.cache import LRUCache, VideoWork, content_hash
    from dsn.config import DSNConfig, TrainConfig
    from dsn.data import ensure_default_dataset, load_splits, load_videos
    from dsn.model import build_model
    from dsn.train import reinforce_step, train
    from trainkit.step import OptimizerStep

    src = Path(args.dataset_root) if args.dataset_root else ensure_default_dataset()
    work_dir = Path(tempfile.mkdtemp(prefix="bench-dsn-"))
    root = _held_dataset(src, work_dir / "held", args.hold) if args.hold > 1 else src
    videos = load_videos(root)
    keys = load_splits(root)[0]["train_keys"]
    feats = {k: torch.from_numpy(videos[k].features) for k in keys}
    digests = {k: content_hash(f) for k, f in feats.items()}
    cfg = TrainConfig(model=DSNConfig(model_type="advanced", in_dim=next(iter(feats.values())).shape[1]))
    setups = {}
    for mode in ("without_cache", "with_cache"):
        torch.manual_seed(0)
        model = build_model(cfg.model, init_prob=cfg.budget_ratio)
        stepper = OptimizerStep(model, torch.optim.Adam(model.parameters(), lr=cfg.lr), grad_clip=cfg.grad_clip)
        work = VideoWork(LRUCache(cfg.cache_size) if mode == "with_cache" else None)
        setups[mode] = (model, stepper, work, dict.fromkeys(keys, 0.0), [])
    for _ in range(args.epochs + 1):
        for mode, (model, stepper, work, baselines, times) in setups.items():
            t0 = time.perf_counter()
            for k in keys:
                with stepper.micro_batch():
                    loss, _ = reinforce_step(model, [k], feats, digests, work, baselines, cfg)
                    stepper.backward(loss)
            times.append(time.perf_counter() - t0)
    res = {"part": "cache", "dataset": str(src), "hold": args.hold, "train_videos": len(keys),
           "mean_steps": round(float(np.mean([f.shape[0] for f in feats.values()])), 1), "rounds": args.epochs}
    for mode, (_, _, work, _, times) in setups.items():
        res[mode] = {"epoch_s": [round(t, 3) for t in times], "median_epoch_s_after_first": round(statistics.median(times[1:]), 3)}
        if work.cache is not None:
            res[mode].update({k.split("/")[1]: v for k, v in work.stats().items()})
    res["speedup"] = round(res["without_cache"]["median_epoch_s_after_first"] / res["with_cache"]["median_epoch_s_after_first"], 3)
    # Where the time goes: the cacheable work vs one policy forward/backward, on the longest video.
    x = max(feats.values(), key=len)
    direct = VideoWork(None)
    model = setups["with_cache"][0]
    res["longest_video_steps"] = int(x.shape[0])
    res["cacheable_work_ms"] = round(1e3 * _timeit(lambda: (direct.reward_matrices("k", x, 20, True), direct.pyramid("k", x, 3)), 5), 2)
    res["policy_forward_backward_ms"] = round(1e3 * _timeit(lambda: model(x[None]).sum().backward(), 5), 2)
    params = {}
    for use_cache in (False, True):
        tcfg = TrainConfig(model=DSNConfig(model_type="advanced"), dataset_root=str(root), save_dir=str(work_dir / f"run{int(use_cache)}"),
                           epochs=2, device="cpu", use_cache=use_cache, eval_every=0, quiet=True)
        params[use_cache] = torch.load(train(tcfg, log=lambda m: None)["checkpoint"], weights_only=True)["model"]
    res["identical_parameters_after_training"] = all(torch.equal(params[True][k], params[False][k]) for k in params[True])
    return res


def bench_overhead(args) -> dict:
    from dsn.cache import LRUCache, VideoWork, content_hash
    from dsn.config import DSNConfig, TrainConfig
    from dsn.model import build_model
    from dsn.train import reinforce_step
    from trainkit.step import OptimizerStep

    g = torch.Generator().manual_seed(0)
    feats = {f"v{i}": torch.nn.functional.normalize(torch.randn(args.T_overhead, 484, generator=g), dim=1) for i in range(4)}
    digests = {k: content_hash(f) for k, f in feats.items()}
    cfg = TrainConfig(model=DSNConfig(in_dim=484))
    work = VideoWork(LRUCache(100))

    def run(use_trainkit: bool) -> float:
        torch.manual_seed(0)
        model = build_model(cfg.model, init_prob=cfg.budget_ratio)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        stepper = OptimizerStep(model, opt, grad_clip=cfg.grad_clip)
        baselines = dict.fromkeys(feats, 0.0)
        keys = list(feats)

        def one_epoch():
            for k in keys:
                if use_trainkit:
                    with stepper.micro_batch():
                        loss, _ = reinforce_step(model, [k], feats, digests, work, baselines, cfg)
                        stepper.backward(loss)
                else:
                    loss, _ = reinforce_step(model, [k], feats, digests, work, baselines, cfg)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                    opt.zero_grad(set_to_none=True)

        return _timeit(one_epoch, args.repeat)

    # Interleave to spread machine noise over both.
    raw, tk = [], []
    for _ in range(3):
        raw.append(run(False))
        tk.append(run(True))
    raw_s, tk_s = statistics.median(raw), statistics.median(tk)
    return {"part": "overhead", "steps_per_epoch": len(feats), "T": args.T_overhead, "raw_epoch_s": round(raw_s, 4),
            "trainkit_epoch_s": round(tk_s, 4), "overhead_ratio": round(tk_s / raw_s, 4)}


def _t95(n: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1)) if n > 1 else float("nan")


def _describe(values: list[float]) -> dict:
    """mean, std (ddof 1), worst, and a 95 % t-interval of the mean."""
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    sd = float(a.std(ddof=1)) if a.size > 1 else 0.0
    half = _t95(a.size) * sd / np.sqrt(a.size) if a.size > 1 else float("nan")
    return {"n": int(a.size), "mean": round(float(a.mean()), 4), "std": round(sd, 4), "min": round(float(a.min()), 4),
            "ci95": [round(float(a.mean() - half), 4), round(float(a.mean() + half), 4)]}


def _quality_run(root: Path, run_dir: Path, split: int, model_type: str, args) -> dict:
    """Train one model on one split (resuming a finished run is free), then per-video metrics on the test videos
    for the chosen checkpoint and for random / uniform summaries at the same budget."""
    from dsn.config import TrainConfig
    from dsn.data import load_splits, load_videos
    from dsn.evaluate import baseline_metrics, load_policy, score_videos, select_keyframes, summary_metrics
    from dsn.train import train
    from trainkit.config import load_config

    cfg = load_config(TrainConfig, None, [f"model.model_type={model_type}", *args.set],
                      {"dataset_root": str(root), "save_dir": str(run_dir), "split_index": split, "epochs": args.epochs,
                       "device": "cpu", "quiet": True, "seed": args.train_seed, "eval_every": 0, "eval_ms_swd": False})
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    summary = train(cfg, resume="auto", log=lambda m: None)
    model, _ = load_policy(summary["checkpoint"])
    keys = load_splits(root)[split]["test_keys"]
    videos = load_videos(root, keys=keys)
    vids = [videos[k] for k in keys]
    scores = score_videos(model, vids)
    per_video = []
    for v in vids:
        m = summary_metrics(v, scores[v.key], select_keyframes(scores[v.key], cfg.budget_ratio, cfg.keyframe_selection),
                            proportion=cfg.summary_proportion, f_mode=cfg.f_mode, ms_swd=False)
        b = baseline_metrics([v], budget_ratio=cfg.budget_ratio, proportion=cfg.summary_proportion, f_mode=cfg.f_mode,
                             ms_swd=False, seed=0, selection=cfg.keyframe_selection)
        per_video.append({"key": v.key, "model": m, "random": b["random"], "uniform": b["uniform"]})
    select = {}
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.exists() and summary.get("best_epoch"):
        rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        best = [r for r in rows if r.get("step") == summary["best_epoch"]]
        if best:
            select = {k: v for k, v in best[-1].items() if k.startswith("select/")}
    return {"split": split, "model_type": model_type, "best_epoch": summary.get("best_epoch"), "select": select,
            "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - cpu0, 1),
            "per_video": per_video}


def bench_quality(args) -> dict:
    """Baseline and advanced on several synthetic dataset seeds x all their splits, against random/uniform.

    For each seed a dataset of ``--num_videos`` videos is built (once) under ``--out``; every split trains both
    models (``best.pt`` is chosen on the split's held-out training videos, never the test videos) and scores the
    test videos. Printed: per seed and pooled, mean +- std over splits, the worst split, and paired differences
    (model - random, advanced - baseline) with 95 % t-intervals over the seed x split units; plus the measured
    per-video spread, which sets how many test videos a split needs.
    """
    from dsn.data import load_splits
    from dsn.synthetic import make_dataset

    if args.combine:
        # Re-summarise saved results (quality_*.json of earlier invocations) without training anything.
        runs = []
        for path in args.combine:
            saved = json.loads(Path(path).read_text())
            if "per_video_runs" in saved:
                runs += saved["per_video_runs"]
            else:  # the first format: run records and per-video rows side by side
                meta = {(r["seed"], r["split"], r["model_type"]): r for r in saved["runs"]}
                runs += [{**meta.get((r["seed"], r["split"], r["model_type"]), {}), **r} for r in saved["per_video"]]
        return summarise_quality(runs, sorted({r["seed"] for r in runs}), args, save=False)
    out_dir = Path(args.out)
    seeds = args.seeds if args.seeds else [0]
    runs = []
    for seed in seeds:
        root = Path(args.dataset_root) if args.dataset_root else out_dir / f"data_n{args.num_videos}_seed{seed}"
        if not args.dataset_root and not (root / "splits.json").exists():
            make_dataset(root, num_videos=args.num_videos, seed=seed)
        n_splits = len(load_splits(root))
        for k in range(n_splits if args.splits is None else min(args.splits, n_splits)):
            for model_type in args.models:
                tag = "_".join(args.set).replace("/", "-") or "defaults"
                r = _quality_run(root, out_dir / tag / f"seed{seed}" / f"{model_type}_split{k}", k, model_type, args)
                r["seed"] = seed
                runs.append(r)
                mean = lambda name, m: _describe([v[name][m] for v in r["per_video"]]).get("mean")
                print(json.dumps({"seed": seed, "split": k, "model": model_type, "best_epoch": r["best_epoch"],
                                  "wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "F": mean("model", "F"),
                                  "tau": mean("model", "kendall_tau"), "random_F": mean("random", "F"),
                                  **r["select"]}), file=sys.stderr, flush=True)
    if args.baseline_from:
        # A variant of one model is compared with the *same* baseline runs (same seeds, splits, test videos and
        # random draws) that an earlier defaults invocation saved, so advanced - baseline stays a paired difference.
        have = {(r["seed"], r["split"], r["model_type"]) for r in runs}
        saved = json.loads(Path(args.baseline_from).read_text())["per_video_runs"]
        runs += [r for r in saved if r["model_type"] == "baseline" and r["seed"] in seeds
                 and (r["seed"], r["split"], "baseline") not in have]
        result = summarise_quality(runs, seeds, args)
        # And the variant against the saved (default) runs of the same model, paired per seed x split.
        unit = lambda r, m: float(np.mean([v["model"][m] for v in r["per_video"] if v["model"][m] is not None]))
        ref = {(r["seed"], r["split"], r["model_type"]): r for r in saved}
        result["variant - saved same model"] = {}
        for model_type in args.models:
            pairs = [(r, ref[(r["seed"], r["split"], model_type)]) for r in runs[:len(have)]  # the variant's own runs
                     if r["model_type"] == model_type and (r["seed"], r["split"], model_type) in ref]
            result["variant - saved same model"][model_type] = {
                m: _describe([unit(a, m) - unit(b, m) for a, b in pairs]) for m in ("F", "kendall_tau")}
        print("variant - saved same model: " + json.dumps(result["variant - saved same model"]), file=sys.stderr)
        return result
    return summarise_quality(runs, seeds, args)


SUMMARY_METRICS = ("F", "kendall_tau", "spearman_rho", "kendall_tau_gtscore", "RecErr", "Diversity")


def summarise_quality(runs: list[dict], seeds: list[int], args, save: bool = True) -> dict:
    """Split-level table (units: seed x split) and paired comparisons; also the per-video spread."""
    def split_mean(r, who, m):
        vals = [v[who][m] for v in r["per_video"] if v[who][m] is not None]
        return float(np.mean(vals)) if vals else None

    def units(seed_set, model_type, who, m):
        return {(r["seed"], r["split"]): split_mean(r, who, m) for r in runs
                if r["seed"] in seed_set and r["model_type"] == model_type}

    def table(seed_set):
        rows = {}
        for name, model_type, who in (("baseline", "baseline", "model"), ("advanced", "advanced", "model"),
                                      ("random", "baseline", "random"), ("uniform", "baseline", "uniform")):
            rows[name] = {}
            for m in SUMMARY_METRICS:
                u = units(seed_set, model_type, who, m)
                d = _describe(list(u.values()))
                if d.get("n"):
                    worst = min(u, key=lambda key: u[key] if u[key] is not None else np.inf) if m not in ("RecErr",) else \
                        max(u, key=lambda key: u[key] if u[key] is not None else -np.inf)
                    d["worst_unit"] = {"seed": worst[0], "split": worst[1], "value": round(u[worst], 4)}
                rows[name][m] = d
        paired = {}
        for label, (a_type, a_who), (b_type, b_who) in (
                ("baseline - random", ("baseline", "model"), ("baseline", "random")),
                ("advanced - random", ("advanced", "model"), ("baseline", "random")),
                ("advanced - baseline", ("advanced", "model"), ("baseline", "model"))):
            paired[label] = {}
            for m in ("F", "kendall_tau", "spearman_rho"):
                a, b = units(seed_set, a_type, a_who, m), units(seed_set, b_type, b_who, m)
                diffs = [a[k] - b[k] for k in a if k in b and a[k] is not None and b[k] is not None]
                paired[label][m] = _describe(diffs)
        return {"seeds": sorted(seed_set), "table": rows, "paired": paired}

    result = {"part": "quality", "epochs": args.epochs, "num_videos": args.num_videos, "set": args.set,
              "per_seed": {str(s): table({s}) for s in seeds}, "pooled": table(set(seeds))}
    # The spread that sizes the benchmark: per-video std of (model - random) within a split, and the split std
    # it implies for n test videos (std / sqrt(n)).
    spread = {}
    for model_type in ("baseline", "advanced"):
        for m in ("F", "kendall_tau"):
            d = [v["model"][m] - v["random"][m] for r in runs if r["model_type"] == model_type for v in r["per_video"]
                 if v["model"][m] is not None and v["random"][m] is not None]
            if len(d) > 1:
                spread[f"{model_type} {m} (model - random)"] = {"per_video_std": round(float(np.std(d, ddof=1)), 4),
                                                               "mean": round(float(np.mean(d)), 4), "videos": len(d)}
    result["per_video_spread"] = spread
    result["time"] = {"wall_s": round(sum(r.get("wall_s", 0) for r in runs), 1),
                      "cpu_s": round(sum(r.get("cpu_s", 0) for r in runs), 1)}
    result["runs"] = [{k: v for k, v in r.items() if k != "per_video"} for r in runs]
    if save and args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        models = "" if list(getattr(args, "models", ["baseline", "advanced"])) == ["baseline", "advanced"] else \
            "_" + "-".join(args.models)
        name = f"quality_{'_'.join(args.set).replace('/', '-') or 'defaults'}{models}_seeds{'-'.join(map(str, seeds))}.json"
        (Path(args.out) / name).write_text(json.dumps({**result, "per_video_runs": runs}))
    print(format_quality(result), file=sys.stderr)
    return result


def format_quality(result: dict) -> str:
    """Markdown: mean +- std over splits and the worst split, then paired differences with 95 % intervals."""
    lines = []
    for label, block in [*((f"seed {s}", b) for s, b in result["per_seed"].items()), ("pooled", result["pooled"])]:
        lines.append(f"\n{label} ({len(block['seeds'])} seed(s); units = splits)\n")
        lines.append("| summary | F | worst F | kendall_tau | worst tau | spearman_rho | kendall_tau_gtscore |")
        lines.append("|---|---|---|---|---|---|---|")
        for name, row in block["table"].items():
            def cell(m, worst=False):
                d = row.get(m, {})
                if not d.get("n"):
                    return "n/a"
                if worst:
                    w = d["worst_unit"]
                    return f"{w['value']:.3f} (s{w['seed']}/{w['split']})" if m != "F" else f"{w['value']:.1f} (s{w['seed']}/{w['split']})"
                return f"{d['mean']:.1f} ± {d['std']:.1f}" if m == "F" else f"{d['mean']:.3f} ± {d['std']:.3f}"
            lines.append(f"| {name} | {cell('F')} | {cell('F', True)} | {cell('kendall_tau')} | {cell('kendall_tau', True)} | "
                         f"{cell('spearman_rho')} | {cell('kendall_tau_gtscore')} |")
        lines.append("\n| paired difference | F (95 % CI) | kendall_tau (95 % CI) | worst split F | worst split tau |")
        lines.append("|---|---|---|---|---|")
        for label2, row in block["paired"].items():
            f, t = row["F"], row["kendall_tau"]
            if not f.get("n"):
                continue
            ci = lambda d, fmt: f"{d['mean']:{fmt}} [{d['ci95'][0]:{fmt}}, {d['ci95'][1]:{fmt}}]" if d["n"] > 1 else f"{d['mean']:{fmt}}"
            lines.append(f"| {label2} | {ci(f, '.1f')} | {ci(t, '.3f')} | {f['min']:.1f} | {t['min']:.3f} |")
    lines.append("\nper-video spread (model - random): " + json.dumps(result["per_video_spread"]))
    return "\n".join(lines)


def bench_validate(args) -> dict:
    """Hyper-parameter check without the test videos: 4 folds (12 train / 4 validation) of split 0's train keys.

    The folds live in their own dataset folder (a link to the h5 + a splits.json), so training and
    scoring are the package's own ``train`` and ``evaluate_checkpoint``; split 0's test videos are never read.
    """
    import random

    from dsn.data import ensure_default_dataset, find_h5, load_splits
    from dsn.evaluate import evaluate_checkpoint
    from dsn.train import train
    from trainkit.config import load_config
    from dsn.config import TrainConfig

    src = Path(args.dataset_root) if args.dataset_root else ensure_default_dataset()
    out_dir = Path(args.out if args.out != "runs/bench_dsn_quality" else "runs/bench_dsn_validate")
    data = out_dir / "folds"
    data.mkdir(parents=True, exist_ok=True)
    h5 = find_h5(src)
    if not (data / h5.name).exists():
        (data / h5.name).symlink_to(h5.resolve())
    keys = sorted(load_splits(src)[0]["train_keys"])
    random.Random(123).shuffle(keys)
    folds = [keys[i::4] for i in range(4)]
    (data / "splits.json").write_text(json.dumps([{"train_keys": [k for k in keys if k not in f], "test_keys": f}
                                                  for f in folds], indent=1))
    rows = []
    for k in range(len(folds)):
        cfg = load_config(TrainConfig, None, args.set, {"seed": args.seed})
        cfg.dataset_root, cfg.split_index, cfg.device, cfg.quiet = str(data), k, "cpu", True
        cfg.eval_every, cfg.eval_ms_swd = 0, False
        cfg.epochs = args.epochs
        cfg.save_dir = str(out_dir / f"{'_'.join(args.set) or 'defaults'}_seed{args.seed}_fold{k}")
        summary = train(cfg, resume="auto", log=lambda m: None)
        r = evaluate_checkpoint(summary["checkpoint"], data, split_index=k, ms_swd=False)
        rows.append({"fold": k, "F": r["model"]["F"], "kendall_tau": r["model"]["kendall_tau"], "random_F": r["random"]["F"]})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"part": "validate", "set": args.set, "seed": args.seed, "epochs": args.epochs,
            "model_type": cfg.model.model_type,
            "mean": {m: round(float(np.mean([r[m] for r in rows])), 4) for m in ("F", "kendall_tau", "random_F")},
            "folds": rows}


def bench_headroom(args) -> dict:
    """Why advanced - baseline is small, without training: from saved quality_*.json runs (``--combine``), per
    seed x split unit (the same test videos and knapsack protocol):
    - the ceiling: F of the annotation itself (the mean gtscore as the scores), against each model's F;
    - how alike the two trained models rank steps: Kendall tau between their scores on each test video;
    Checkpoints are read from the runs' folders (``--out``/TAG/seedS/MODEL_splitK/best.pt)."""
    from scipy import stats

    from dsn.data import load_splits, load_videos
    from dsn.evaluate import load_policy, score_videos, select_keyframes, summary_metrics

    runs = []
    for path in args.combine:
        runs += json.loads(Path(path).read_text())["per_video_runs"]
    by_unit: dict = {}
    for r in runs:
        by_unit.setdefault((r["seed"], r["split"]), {})[r["model_type"]] = r
    out_dir, tag = Path(args.out), "_".join(args.set).replace("/", "-") or "defaults"
    units = []
    for (seed, split), pair in sorted(by_unit.items()):
        if set(pair) != {"baseline", "advanced"}:
            continue
        root = out_dir / f"data_n{args.num_videos}_seed{seed}"
        keys = load_splits(root)[split]["test_keys"]
        videos = load_videos(root, keys=keys)
        oracle = [summary_metrics(videos[k], videos[k].gtscore, select_keyframes(videos[k].gtscore, 0.06),
                                  proportion=0.15, f_mode="avg", ms_swd=False)["F"] for k in keys]
        scores = {}
        for m in ("baseline", "advanced"):
            ckpt = out_dir / tag / f"seed{seed}" / f"{m}_split{split}" / "best.pt"
            model, _ = load_policy(ckpt if ckpt.exists() else ckpt.with_name("latest.pt"))
            scores[m] = score_videos(model, [videos[k] for k in keys])
        agree = [stats.kendalltau(scores["baseline"][k], scores["advanced"][k])[0] for k in keys]
        f = {m: float(np.mean([v["model"]["F"] for v in pair[m]["per_video"]])) for m in pair}
        units.append({"seed": seed, "split": split, "oracle_F": float(np.mean(oracle)), "baseline_F": f["baseline"],
                      "advanced_F": f["advanced"], "random_F": float(np.mean([v["random"]["F"] for v in pair["baseline"]["per_video"]])),
                      "tau_models": float(np.nanmean(agree))})
    col = lambda name: [u[name] for u in units]
    result = {"part": "headroom", "units": units,
              "oracle_F": _describe(col("oracle_F")), "baseline_F": _describe(col("baseline_F")),
              "advanced_F": _describe(col("advanced_F")), "random_F": _describe(col("random_F")),
              "oracle - baseline F": _describe([u["oracle_F"] - u["baseline_F"] for u in units]),
              "oracle - advanced F": _describe([u["oracle_F"] - u["advanced_F"] for u in units]),
              "baseline share of the random-to-oracle gap": _describe(
                  [(u["baseline_F"] - u["random_F"]) / (u["oracle_F"] - u["random_F"]) for u in units]),
              "advanced share of the random-to-oracle gap": _describe(
                  [(u["advanced_F"] - u["random_F"]) / (u["oracle_F"] - u["random_F"]) for u in units]),
              "kendall tau between the two models' scores": _describe(col("tau_models"))}
    print("\n".join(f"{k}: {json.dumps(v)}" for k, v in result.items() if k not in ("units", "part")), file=sys.stderr)
    return result


def bench_shots_clip(args) -> dict:
    """A 16-s, 24-fps clip of four panning colour-texture shots with sensor noise (cuts at 4, 8, 12 s): a
    stand-in for real footage that can be shown in the README (real clips' images are never committed)."""
    from fractions import Fraction

    import av
    from scipy.ndimage import gaussian_filter

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "shots.mp4"
    rng = np.random.default_rng(args.seed - 1)
    fps, w, h, n_shots, shot_s = 24, 320, 180, 4, 4.0
    with av.open(str(path), "w") as c:
        st = c.add_stream("mpeg4", rate=fps)
        st.width, st.height, st.pix_fmt, st.bit_rate = w, h, "yuv420p", 2_000_000
        st.codec_context.time_base = Fraction(1, fps)
        for _ in range(n_shots):
            base = gaussian_filter(rng.random((h * 2, w * 3, 3)), sigma=(12, 12, 0))
            tex = np.clip((base - base.min()) / (np.ptp(base) + 1e-9) * (rng.random(3) * 0.5 + 0.5) * 255, 0, 255)
            n = int(shot_s * fps)
            for i in range(n):
                x, y = int(i * (w * 2 - 1) / n), int(h * 0.5 * np.sin(i / n * np.pi))
                img = np.clip(tex[y : y + h, x : x + w] + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
                for packet in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(packet)
        for packet in st.encode():
            c.mux(packet)
    return {"part": "shots_clip", "path": str(path), "fps": fps, "size": [w, h], "cuts_s": [4.0, 8.0, 12.0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("parts", nargs="*", default=["reward", "cache", "overhead"],
                   choices=["reward", "cache", "overhead", "quality", "validate", "shots_clip", "headroom"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--dims", type=int, nargs="+", default=[484, 1024])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--dataset_root", default=None)
    p.add_argument("--hold", type=int, default=3, help="cache part: repeat each step this many times (held frames)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--T_overhead", type=int, default=250)
    p.add_argument("--splits", type=int, default=None, help="quality part: first N splits (default all)")
    p.add_argument("--eval_every", type=int, default=0)
    p.add_argument("--seed", type=int, default=1, help="validate part: training seed")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="quality part: synthetic dataset seeds (each builds --num_videos videos under --out)")
    p.add_argument("--num_videos", type=int, default=40, help="quality part: videos per synthetic dataset")
    p.add_argument("--train_seed", type=int, default=1, help="quality part: training seed of every run")
    p.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                   help="quality part: summarise saved quality_*.json files together instead of training")
    p.add_argument("--out", default="runs/bench_dsn_quality")
    p.add_argument("--models", nargs="+", default=["baseline", "advanced"], choices=["baseline", "advanced"],
                   help="quality part: which models to train (a variant of one model: see --baseline_from)")
    p.add_argument("--baseline_from", default=None, metavar="JSON",
                   help="quality part: take the baseline runs from this saved quality_*.json (same seeds)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="quality/validate parts: TrainConfig override, e.g. lr=3e-4 (repeatable)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for part in args.parts:
        if args.epochs is None:
            args.epochs = {"quality": 8, "validate": 20}.get(part, 3)
        fn = {"reward": bench_reward, "cache": bench_cache, "overhead": bench_overhead, "quality": bench_quality,
              "validate": bench_validate, "shots_clip": bench_shots_clip, "headroom": bench_headroom}[part]
        print(json.dumps(fn(args)), flush=True)


if __name__ == "__main__":
    main()
