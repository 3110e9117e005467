"""The guide's ablation: five configurations trained the same way, then one results table.

1. baseline               BiLSTM encoder + policy head
2. attention_only         self-attention, one temporal scale, no LSTM
3. multiscale_only        multi-scale branches, no attention, no LSTM
4. attn_multiscale_nocache  attention + multi-scale, cache off
5. full_advanced          attention + multi-scale, cache on (same model as 4: the cache changes speed only)

Each run is a folder under ``save_dir`` with its TensorBoard events; the table (Markdown + CSV) gives
the test-split metrics, the random/uniform baselines at the same budget, parameters, training time
(sum of the epochs' wall time) and the final cache hit rate.
"""
from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from typing import Any, Callable

from .config import TrainConfig
from .evaluate import METRIC_KEYS, evaluate_checkpoint

CONFIGS: list[tuple[str, dict[str, Any], bool]] = [
    # name, model overrides, use_cache
    ("baseline", {"model_type": "baseline"}, False),
    ("attention_only", {"model_type": "advanced", "num_scales": 1, "use_lstm_in_advanced": False}, True),
    ("multiscale_only", {"model_type": "advanced", "num_attn_layers": 0, "use_lstm_in_advanced": False}, True),
    ("attn_multiscale_nocache", {"model_type": "advanced", "use_lstm_in_advanced": False}, False),
    ("full_advanced", {"model_type": "advanced", "use_lstm_in_advanced": False}, True),
]


def ablation_configs(base: TrainConfig, save_dir: str | Path) -> list[tuple[str, TrainConfig]]:
    out = []
    for name, model_over, use_cache in CONFIGS:
        cfg = copy.deepcopy(base)
        for k, v in model_over.items():
            setattr(cfg.model, k, v)
        if cfg.model.num_scales < 2 and name in ("multiscale_only", "attn_multiscale_nocache", "full_advanced"):
            cfg.model.num_scales = 3
        if cfg.model.num_attn_layers < 1 and name in ("attention_only", "attn_multiscale_nocache", "full_advanced"):
            cfg.model.num_attn_layers = 2
        cfg.model.__post_init__()
        cfg.use_cache = use_cache
        cfg.save_dir = str(Path(save_dir) / name)
        out.append((name, cfg))
    return out


def _train_time(run_dir: Path) -> float:
    total = 0.0
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                total += float(json.loads(line).get("time/epoch_s", 0.0))
    return total


def run_ablation(base: TrainConfig, save_dir: str | Path, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) every configuration, evaluate the checkpoint training chose (best.pt), write the tables."""
    from .train import train

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    rows, baselines = [], None
    for name, cfg in ablation_configs(base, save_dir):
        log(f"== {name}: {cfg.model.model_type}, attn layers {cfg.model.num_attn_layers if cfg.model.model_type == 'advanced' else '-'}, "
            f"scales {cfg.model.num_scales if cfg.model.model_type == 'advanced' else '-'}, cache {int(cfg.use_cache)}")
        # "auto" continues an interrupted ablation instead of refusing the existing run folder.
        summary = train(cfg, resume="auto", log=log if not cfg.quiet else (lambda m: None))
        if summary.get("stopped"):
            raise SystemExit(f"ablation interrupted during {name}; rerun the same command to continue")
        result = evaluate_checkpoint(summary["checkpoint"], cfg.dataset_root, split_index=cfg.split_index,
                                     device=cfg.device, budget_ratio=cfg.budget_ratio, f_mode=cfg.f_mode,
                                     proportion=cfg.summary_proportion, ms_swd=cfg.eval_ms_swd, seed=cfg.seed,
                                     selection=cfg.keyframe_selection)
        baselines = baselines or {"random": result["random"], "uniform": result["uniform"]}
        cache = summary.get("cache") or {}
        rows.append({"config": name, **result["model"], "params": summary["num_params"],
                     "train_time_s": round(_train_time(Path(cfg.save_dir)), 2),
                     "cache_hit_rate": cache.get("cache/hit_rate")})
    for name in ("random", "uniform"):
        rows.append({"config": f"({name} summary)", **baselines[name], "params": None, "train_time_s": None,
                     "cache_hit_rate": None})
    ref = rows[0]["train_time_s"] or None
    for r in rows:
        r["time_vs_baseline"] = round(r["train_time_s"] / ref, 2) if ref and r["train_time_s"] else None
    columns = ["config", *METRIC_KEYS, "params", "train_time_s", "time_vs_baseline", "cache_hit_rate"]
    csv_path = save_dir / "results.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in columns})

    def cell(v):
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(cell(r.get(k)) for k in columns) + " |" for r in rows]
    markdown = "\n".join(md)
    md_path = save_dir / "results.md"
    md_path.write_text(f"# DSN ablation (split {base.split_index}, {base.epochs} epochs, budget {base.budget_ratio})\n\n"
                       + markdown + "\n")
    return {"rows": rows, "markdown": markdown, "md_path": str(md_path), "csv_path": str(csv_path)}
