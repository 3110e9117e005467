"""Summarise a quality_cpu.sh run folder: per phase, model (h = 1 prediction) vs copy-last-frame on every evaluated set (mean +- std
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
        # h = 1 prediction (evaluate's avg_val_* averages every horizon of its rollout); older JSON: avg_val_*
        h1 = lambda x, k: x[k]["1"] if isinstance(x.get(k), dict) else x[f"avg_val_{k}"]  # noqa: E731
        sets[f.stem[5:]] = {"model_psnr": h1(m, "psnr"), "model_ssim": h1(m, "ssim"),
                            "copy_last_psnr": h1(b, "psnr"), "copy_last_ssim": h1(b, "ssim"),
                            "delta_psnr": h1(m, "psnr") - h1(b, "psnr"),
                            "delta_ssim": h1(m, "ssim") - h1(b, "ssim"), "clips": m["num_clips"]}
        if "constant_velocity" in r:
            sets[f.stem[5:]]["delta_psnr_vs_constant_velocity"] = h1(m, "psnr") - h1(r["constant_velocity"], "psnr")
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
