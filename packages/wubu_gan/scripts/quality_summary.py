"""Summarise a quality_cpu.sh run folder: per phase, model vs copy-last-frame on every evaluated set (mean +- std
over the sets, worst set), and the fraction of logged training steps with D_total in the guide's healthy band
(0.3-0.65), and with D in the guide's whole healthy picture (that band and D_real, D_fake both below 0.7). Each
logged value is the mean over its logging interval (train.py)."""
import json
import statistics
import sys
from pathlib import Path

BAND = (0.3, 0.65)


def summarise(phase_dir: Path) -> dict:
    sets = {}
    for f in sorted(phase_dir.glob("eval_*.json")):
        r = json.loads(f.read_text())
        m, b = r["model"], r["copy_last_frame"]
        sets[f.stem[5:]] = {"model_psnr": m["avg_val_psnr"], "model_ssim": m["avg_val_ssim"],
                            "copy_last_psnr": b["avg_val_psnr"], "copy_last_ssim": b["avg_val_ssim"],
                            "delta_psnr": m["avg_val_psnr"] - b["avg_val_psnr"],
                            "delta_ssim": m["avg_val_ssim"] - b["avg_val_ssim"], "clips": m["num_clips"]}
    out = {"sets": sets}
    for key in ("model_psnr", "model_ssim", "delta_psnr", "delta_ssim"):
        vals = [s[key] for s in sets.values()]
        if vals:
            out[key] = {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                        "worst": min(vals)}
    cpu = phase_dir / "cpu_seconds.txt"  # "user sys" of the training command (quality_cpu.sh)
    if cpu.is_file():
        out["train_cpu_seconds"] = sum(float(v) for v in cpu.read_text().split()[:2])
    out.update(d_band(logged_d(phase_dir)))
    return out


def logged_d(phase_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (phase_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "train/loss_d_total" in r]


def d_band(rows: list[dict]) -> dict:
    if not rows:
        return {}
    d = [r["train/loss_d_total"] for r in rows]
    healthy = [BAND[0] <= r["train/loss_d_total"] <= BAND[1] and r["train/loss_d_real"] < 0.7
               and r["train/loss_d_fake"] < 0.7 for r in rows]
    return {"d_total_in_band_fraction": sum(BAND[0] <= v <= BAND[1] for v in d) / len(d),
            "d_total_median": statistics.median(d), "d_total_logged_steps": len(d),
            "d_healthy_fraction": sum(healthy) / len(healthy)}


if __name__ == "__main__":
    root = Path(sys.argv[1])
    phases = [p for p in sorted(root.iterdir()) if (p / "metrics.jsonl").is_file()]
    summary = {p.name: summarise(p) for p in phases}
    if len(phases) > 1:  # the D band over the whole run, every phase's logged steps together
        summary["all_phases"] = d_band([r for p in phases for r in logged_d(p)])
    print(json.dumps(summary, indent=2))
