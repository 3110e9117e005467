"""Run several action-ddim fidelity training variants side by side (one CPU thread each) and evaluate
each with the package's own fidelity metrics (256 samples vs the held-out validation set).

    python tools/fidelity_sweep_action_ddim.py --data /tmp/d0 --out OUTDIR --train_timeout 400 \
        NAME='--set model.increment_features=true --num_epochs 6' ...

Every job's CPU time (user+sys of its processes, from wait4) is recorded, so budgets are stated in
CPU seconds. Results: OUTDIR/results.json and a table on stdout.
"""
import argparse, json, os, resource, subprocess, sys, time, shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
           PYTHONPATH=f"{ROOT}/packages/action_ddim/src:{ROOT}/shared/src", PYTHONUNBUFFERED="1")
CONFIG = ROOT / "packages/action_ddim/src/action_ddim/configs/fidelity.yaml"


def run(cmd, log, timeout=None):
    """(returncode, cpu seconds) of ``cmd`` and its children."""
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n"); f.flush()
        p = subprocess.Popen(["timeout", "-s", "INT", str(timeout)] + cmd if timeout else cmd,
                             stdout=f, stderr=subprocess.STDOUT, env=ENV)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, ru.ru_utime + ru.ru_stime


def job(name, extra, a):
    run_dir = Path(a.out) / name
    log = Path(a.out) / f"{name}.log"
    rc, cpu = run([sys.executable, "-m", "action_ddim", "train", "--config", str(CONFIG),
                   "--data_dir", f"{a.data}/train", "--val_data_dir", f"{a.data}/val", "--save_dir", str(run_dir),
                   "--quiet", "--device", "cpu", "--set", "train.threads=1", "--set", "train.save_every=1",
                   "--set", "train.keep_last=30", "--set", "train.val_every=100", "--set", "train.plot_every=100",
                   "--set", "train.val_full_at_end=false", "--set", "train.num_gen_samples=0",
                   "--set", "train.val_subset=8"] + shlex.split(extra), log, a.train_timeout)
    ckpts = sorted((run_dir / "checkpoints").glob("epoch*.pt"))
    res = {"name": name, "extra": extra, "train_rc": rc, "train_cpu_s": round(cpu, 1), "evals": {}}
    if not ckpts:
        return res
    eval_ckpts = ckpts[-1:] if not a.all_epochs else ckpts[1::2] + ([ckpts[-1]] if len(ckpts) % 2 else [])
    for ck in eval_ckpts:
        for ev in a.eval:
            key = f"{ck.stem}|{ev}"
            out = Path(a.out) / f"{name}_{ck.stem}_{ev.replace(' ', '').replace('=', '')[:40]}.json"
            cmd = [sys.executable, "-m", "action_ddim", "evaluate", "--checkpoint", str(ck), "--data_dir",
                   f"{a.data}/val", "--real_dir", f"{a.data}/train", "--num_gen_samples", "256", "--gen_only",
                   "--json", "--device", "cpu"] + shlex.split(ev)
            with open(out, "w") as f:
                p = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, env=ENV, text=True)
            try:
                m = json.loads(out.read_text())
            except Exception:
                m = {"error": p.stderr[-500:]}
            res["evals"][key] = m
    return res


RATIOS = ["speed_w1_ratio", "path_length_w1_ratio", "press_run_length_w1_ratio", "accel_w1_ratio",
          "jerk_w1_ratio", "gesture_tv_ratio"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train_timeout", type=int, default=400)
    ap.add_argument("--eval", action="append", default=None)
    ap.add_argument("--all_epochs", action="store_true")
    ap.add_argument("jobs", nargs="+")
    a = ap.parse_args()
    a.eval = a.eval or [""]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    jobs = [j.split("=", 1) for j in a.jobs]
    with ThreadPoolExecutor(len(jobs)) as ex:
        results = list(ex.map(lambda j: job(j[0], j[1], a), jobs))
    Path(a.out, "results.json").write_text(json.dumps(results, indent=1))
    print("name | ckpt|eval | train_cpu_s | " + " ".join(r.split("_")[0][:6] for r in RATIOS) + " | c2st")
    for r in results:
        for key, m in r["evals"].items():
            g = lambda k: m.get(f"val/gen/{k}", m.get(k, float("nan")))
            print(f"{r['name']} | {key} | {r['train_cpu_s']} | " + " ".join(f"{g(k):6.2f}" for k in RATIOS)
                  + f" | {g('c2st_accuracy'):.3f}")


if __name__ == "__main__":
    main()
