"""Every package on one GPU for a handful of steps: the guides' GPU commands, precisions, checkpointing,
compile, save -> resume and torchrun. Prints one JSON report (and writes it with --out).

    uv run python tools/gpu_check.py                          # on a CUDA machine: the whole check, <= 8 min
    uv run python tools/gpu_check.py --device cpu --dry-run   # the same code paths at tiny shapes (CI)
    uv run python tools/gpu_check.py --plan                   # list the commands, run nothing
    uv run python tools/gpu_check.py --only action_ddim:fp32,amt:resume

Each case runs the package's own CLI (``python -m <pkg> train ...``) in a subprocess under
``tools/gpu/probe.py``, which counts optimizer steps, sends SIGTERM after ``--steps`` of them (every package's
loop then finishes the step, saves a checkpoint and exits), and reports steps/s, peak memory, host syncs per
optimizer step and FLOPs per step. The guide's command is otherwise unchanged: it is shrunk only in steps.
``--dry-run`` appends each package's tiny-shape flags (later flags win) so the same cases run on a CPU.

A case's status is ``pass``, ``fail`` (with the first error line), ``timeout`` or ``skipped`` (with why:
not applicable to the package/device, or the total budget was spent).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "tools" / "gpu" / "probe.py"
SCHEMA = "gpu_check/1"

# Dense peak FLOP/s for the MFU estimate: (name substring, {precision: FLOP/s}); "fp32" is without TF32,
# "tf32" when torch allows TF32 matmuls. Unknown devices give mfu null with a reason.
PEAK_FLOPS = [
    ("H200", {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12, "fp32": 67e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    ("3090", {"bf16": 71e12, "fp16": 71e12, "tf32": 35.6e12, "fp32": 35.6e12}),
]


@dataclasses.dataclass
class Package:
    name: str                       # python module (python -m name)
    guide: list[str]                # the guide's GPU command after the program name; {device} is filled in
    tiny: list[str]                 # --dry-run: appended flags that shrink shapes (later flags win)
    save_flag: str                  # the run-directory flag
    samples_per_step: int           # samples per optimizer step of the guide command (batch x accumulation)
    tiny_samples_per_step: int
    precision: dict                 # precision -> flags, or a string: why that precision is not applicable
    default_precision: str          # what the guide command runs in
    extra_cases: dict = dataclasses.field(default_factory=dict)  # case name -> flags (gc, compile)
    ok_codes: tuple = (0, 3)        # exit codes of a run stopped by SIGTERM after saving (3: trainkit EXIT_STOPPED)
    note: str = ""


def _flag_precision(p):
    return ["--precision", p]


PACKAGES = [
    Package(
        "action_ddim",
        ["train", "--batch_size", "16", "--num_epochs", "5", "--lr", "2e-4", "--d_model", "128", "--num_layers",
         "4", "--nhead", "4", "--device", "{device}", "--quiet"],
        ["--batch_size", "4", "--d_model", "16", "--num_layers", "1", "--nhead", "2"],
        "--save_dir", 16, 4,
        {p: _flag_precision(p) for p in ("fp32", "bf16", "fp16")}, "fp32",
        note="guide 'GPU test' on the built-in synthetic data instead of test_data_mini; W&B left off",
    ),
    Package(
        "dsn",
        ["train", "--model_type", "advanced", "--epochs", "20", "--device", "{device}:0", "--num_attn_heads", "4",
         "--num_attn_layers", "2", "--num_scales", "3", "--use_cache", "1", "--cache_size", "1000", "--quiet"],
        ["--enc_hidden", "32", "--num_episodes", "1"],
        "--save_dir", 1, 1,
        {p: _flag_precision(p) for p in ("fp32", "bf16", "fp16")}, "fp32",
        note="guide manual command on the synthetic dataset; one sample = one video (batch_size 1)",
    ),
    Package(
        "worldmodel",
        ["train", "--config", "configs/training/base.yaml", "--device", "{device}", "--quiet"],
        ["--config", "synthetic_cpu", "--batch-size", "2"],
        "--save-dir", 64, 2,
        {"fp32": ["--set", "training.use_amp=false"],
         "fp16": {"cuda": ["--set", "training.use_amp=true"],
                  "cpu": "worldmodel's use_amp is bf16 on CPU; fp16 + GradScaler only on CUDA"},
         "bf16": {"cuda": "worldmodel's use_amp is fp16 + GradScaler on CUDA; no bf16 switch there",
                  "cpu": ["--set", "training.use_amp=true"]}},
        "fp16",
        extra_cases={"gc": ["--set", "training.use_gradient_checkpointing=true"]},
        note="guide base model (configs/training/base.yaml: batch 16 x accumulation 4); dry-run uses the "
             "synthetic_cpu recipe",
    ),
    Package(
        "wubu_gan",
        ["train", "--config", "phase1", "--device", "{device}", "--quiet"],
        ["--image_h", "16", "--image_w", "16", "--latent_dim", "16", "--batch_size", "2", "--num_workers", "0",
         "--gaad_num_regions", "4", "--gaad_motion_num_regions", "4", "--encoder_initial_tangent_dim", "16",
         "--wubu_s_hyperbolic_dims", "16", "8", "--wubu_m_hyperbolic_dims", "8", "--wubu_t_hyperbolic_dims", "16",
         "--disc_base_disc_channels", "16", "--disc_max_disc_channels", "32", "--encoder_pixel_patch_size", "4",
         "--max_val_clips", "4"],
        "--checkpoint_dir", 4, 2,
        {p: _flag_precision(p) for p in ("fp32", "bf16", "fp16")}, "fp16",
        ok_codes=(0, 3),
        note="guide phase 1 (configs/phase1.yaml) on the generated demo video; exit code 3 = stopped after saving",
    ),
    Package(
        "amt",
        ["train", "--config", "configs/default_config.yaml", "--device", "{device}", "--quiet"],
        ["--config", "configs/cpu.yaml", "--set", "data.image_size=32", "--set", "model.hidden_dim=32",
         "--set", "training.batch_size=4"],
        "--output_dir", 64, 4,
        {p: _flag_precision(p) for p in ("fp32", "bf16", "fp16")}, "bf16",
        extra_cases={"gc_off": ["--set", "optimizations.memory.gradient_checkpointing=false"],
                     "compile": ["--set", "optimizations.use_compile=true"]},
        note="guide default_config.yaml (H200: batch 32 x accumulation 2, bf16, gradient checkpointing on); "
             "torch.compile as the guide's speed tip; DINOv2 weights absent offline -> the package's fallback",
    ),
]


@dataclasses.dataclass
class Case:
    package: Package
    name: str
    flags: list[str]                 # appended to the guide (+ tiny) command
    precision: str
    skip: str | None = None
    runs: int = 1                    # resume: 2 runs into one save dir
    torchrun: bool = False
    count_flops: bool = True

    @property
    def id(self):
        return f"{self.package.name}:{self.name}"


def _precision_flags(pkg: Package, precision: str, device: str):
    spec = pkg.precision.get(precision)
    if isinstance(spec, dict):
        spec = spec.get(device, spec.get("cuda"))
    if isinstance(spec, str):
        return None, spec
    return list(spec), None


def build_cases(device: str) -> list[Case]:
    """Every case passes its precision flags explicitly, so the report's precision is what ran."""
    cases = []
    for pkg in PACKAGES:
        default = pkg.default_precision
        dflags, why = _precision_flags(pkg, default, device)
        if why:  # e.g. worldmodel's use_amp is bf16 on CPU: the guide case runs what the device gives
            default = next(p for p in ("bf16", "fp16", "fp32") if not _precision_flags(pkg, p, device)[1])
            dflags, _ = _precision_flags(pkg, default, device)
        cases.append(Case(pkg, "guide", list(dflags), default))
        for p in ("fp32", "bf16", "fp16"):
            if p == default:
                continue  # the guide case already runs it
            flags, why = _precision_flags(pkg, p, device)
            cases.append(Case(pkg, p, flags or [], p, skip=why))
        for name, flags in pkg.extra_cases.items():
            compile_ = name == "compile"
            cases.append(Case(pkg, name, dflags + list(flags), default, count_flops=not compile_))
        cases.append(Case(pkg, "resume", list(dflags), default, runs=2))
        cases.append(Case(pkg, "torchrun", list(dflags), default, torchrun=True))
    # Every package's guide command first, then the rest kind by kind: if the budget runs out, what is
    # skipped is the least important case of each package, not a whole package.
    order = ("guide", "resume", "torchrun", "fp16", "bf16", "fp32", "gc", "gc_off", "compile")
    return sorted(cases, key=lambda c: order.index(c.name))


def command(case: Case, device: str, dry_run: bool, save_dir: str, report: str, steps: int,
            resume: bool = False, nproc: int = 1) -> list[str]:
    pkg = case.package
    args = [a.replace("{device}", device) for a in pkg.guide]
    if device == "cpu":
        args = [a.replace("cpu:0", "cpu") for a in args]
    if dry_run:
        args += pkg.tiny
    args += case.flags + [pkg.save_flag, save_dir]
    if resume:
        args += ["--resume", "auto"]
    probe = [str(PROBE), "--report", report, "--stop-after", str(steps)]
    if case.count_flops:
        probe.append("--count-flops")
    if device == "cpu":
        probe.append("--cpu")
    if case.torchrun:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    else:
        launcher = [sys.executable]
    return launcher + probe + ["--", pkg.name] + args


def first_error_line(stderr: str) -> str | None:
    """The line that says what went wrong: a CLI 'error:' line, else the last exception line of a traceback."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("error:"):
            return ln
    exc = [ln for ln in lines if ln.split(":", 1)[0].endswith(("Error", "Exception", "Interrupt"))
           and " " not in ln.split(":", 1)[0]]
    if exc:
        return exc[-1]
    return lines[-1] if lines else None


def peak_flops(device_name: str, precision: str, tf32: bool) -> float | None:
    key = "tf32" if precision == "fp32" and tf32 else precision
    for sub, table in PEAK_FLOPS:
        if sub in device_name:
            return table.get(key)
    return None


def run_once(case: Case, device, dry_run, save_dir, report_path, steps, timeout, resume=False, nproc=1) -> dict:
    cmd = command(case, device, dry_run, save_dir, report_path, steps, resume, nproc)
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline")
    t0 = time.perf_counter()
    res = {"command": cmd, "rc": None}
    # Own session: on a timeout the whole group goes (torchrun's workers too, not only the launcher).
    proc = subprocess.Popen(cmd, cwd=Path(save_dir).parent, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
        res["rc"] = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        res["status"] = "timeout"
        res["error"] = f"timed out after {timeout:.0f} s (per-case limit)"
    res["wall_s"] = round(time.perf_counter() - t0, 2)
    probe = {}
    if Path(report_path).exists():
        probe = json.loads(Path(report_path).read_text())
    res["probe"] = probe
    if "status" not in res:
        ok = res["rc"] in case.package.ok_codes and probe.get("exit_code") in case.package.ok_codes
        if ok and probe.get("steps", 0) < 1:
            ok, res["error"] = False, "no optimizer step was taken"
        res["status"] = "pass" if ok else "fail"
        if not ok and not res.get("error"):
            res["error"] = probe.get("error") or first_error_line(stderr) or f"exit code {res['rc']}"
    if res["status"] != "pass":
        res["stderr_tail"] = stderr[-2000:]
    return res


def summarise(case: Case, run: dict, device_name: str, samples_per_step: int) -> dict:
    p = run.get("probe", {})
    sps = p.get("steps_per_s")
    out = {
        "status": run["status"], "error": run.get("error"), "rc": run["rc"], "wall_s": run["wall_s"],
        "steps": p.get("steps"), "steps_per_s": sps,
        "samples_per_step": samples_per_step,
        "samples_per_s": sps * samples_per_step if sps else None,
        "peak_mem_bytes": p.get("peak_mem_bytes"), "peak_mem_reason": p.get("peak_mem_reason"),
        "cpu_max_rss_bytes": p.get("cpu_max_rss_bytes"),
        "syncs_per_step": p.get("syncs_per_step"), "syncs_reason": p.get("syncs_reason"),
        "flops_per_step": p.get("flops_per_step"), "flops_reason": p.get("flops_reason"),
        "backend": p.get("backend"), "state_step_at_first_step": p.get("state_step_at_first_step"),
        "mfu": None, "mfu_reason": None,
    }
    if not case.count_flops:
        out["flops_reason"] = "not counted for torch.compile (the FLOP counter and dynamo do not mix)"
    peak = peak_flops(device_name, case.precision, bool(p.get("tf32_matmul")))
    if out["flops_per_step"] and sps and peak:
        out["mfu"] = out["flops_per_step"] * sps / peak
    else:
        out["mfu_reason"] = ("no CUDA device" if device_name == "cpu" else
                             "no peak FLOP/s known for this device" if not peak else
                             "no FLOP count or no timing")
    for key in ("command", "stderr_tail"):
        if key in run:
            out[key] = run[key]
    return out


def resume_verdict(first: dict, second: dict) -> tuple[dict, str | None]:
    """Did the second run continue the first? Its optimizer state's ``step`` after its first step must be the
    first run's steps + 1 (a run that ignored the checkpoint shows 1). Returns (figures, error or None)."""
    restored = second.get("state_step_at_first_step")
    expected = float(first.get("steps", 0) + 1)
    figures = {"first_run_steps": first.get("steps"), "state_step_after_resume": restored,
               "expected": expected, "resumed": restored == expected}
    if restored == expected:
        return figures, None
    return figures, (f"resume did not restore the optimizer state: step {restored} after the first resumed "
                     f"step, expected {expected:.0f}")


def run_case(case: Case, args, workdir: Path, device_name: str, deadline: float) -> dict:
    base = {"package": case.package.name, "case": case.name, "precision": case.precision,
            "torchrun": case.torchrun, "flags": case.flags}
    if case.skip:
        return {**base, "status": "skipped", "reason": case.skip}
    left = deadline - time.perf_counter()
    if left < 10:
        return {**base, "status": "skipped", "reason": f"total budget of {args.budget:.0f} s spent"}
    case_dir = workdir / case.id.replace(":", "__")
    shutil.rmtree(case_dir, ignore_errors=True)
    case_dir.mkdir(parents=True)
    save_dir = str(case_dir / "run")
    sps = case.package.tiny_samples_per_step if args.dry_run else case.package.samples_per_step
    timeout = min(args.case_timeout, left)
    first = run_once(case, args.device, args.dry_run, save_dir, str(case_dir / "probe1.json"), args.steps, timeout,
                     nproc=args.nproc if case.torchrun else 1)
    out = {**base, **summarise(case, first, device_name, sps)}
    if case.runs == 2:
        out["first_run"] = {k: out[k] for k in ("status", "error", "steps", "wall_s")}
        if first["status"] != "pass":
            out["error"] = f"first run: {out['error']}"
            return out
        left = deadline - time.perf_counter()
        second = run_once(case, args.device, args.dry_run, save_dir, str(case_dir / "probe2.json"), args.steps,
                          min(args.case_timeout, max(left, 1)), resume=True)
        out.update(summarise(case, second, device_name, sps))
        out["wall_s"] = round(first["wall_s"] + second["wall_s"], 2)
        out["resume"], why = resume_verdict(first["probe"], second.get("probe", {}))
        if out["status"] == "pass" and why:
            out["status"], out["error"] = "fail", why
    if case.torchrun and out["status"] == "pass":
        want = "nccl" if args.device.startswith("cuda") else "gloo"
        if args.nproc == 1 and out["backend"] is None:
            # trainkit.init_distributed joins no process group at WORLD_SIZE 1 (DDP would be a no-op), so
            # one process checks the torchrun launch and environment only; --nproc 2 checks the backend.
            out["backend_reason"] = ("trainkit joins no process group at WORLD_SIZE 1: the torchrun launch is "
                                     f"checked, {want} and DDP are not (use --nproc 2 on a 2-device machine)")
        elif out["backend"] != want:
            out["status"] = "fail"
            out["error"] = f"torchrun: process-group backend {out['backend']!r}, expected {want!r}"
    return out


def select(cases: list[Case], only: str | None) -> list[Case]:
    if not only:
        return cases
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    known = {c.id for c in cases} | {c.package.name for c in cases}
    bad = [w for w in wanted if w not in known]
    if bad:
        raise SystemExit(f"error: unknown case {bad[0]!r} (--only): expected a package or package:case, one of "
                         f"{', '.join(sorted(known))}")
    return [c for c in cases if c.id in wanted or c.package.name in wanted]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (with --dry-run) [cuda]")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes (append each package's tiny flags)")
    ap.add_argument("--plan", action="store_true", help="print the cases and their commands as JSON; run nothing")
    ap.add_argument("--only", help="comma list of packages or package:case (e.g. amt,dsn:resume)")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per run before the SIGTERM stop [6]")
    ap.add_argument("--case-timeout", type=float, default=90.0, help="seconds per run [90]")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for all cases; later ones are skipped [450]")
    ap.add_argument("--nproc", type=int, default=1, help="torchrun processes of the torchrun case [1]")
    ap.add_argument("--workdir", default="/tmp/gpu_check", help="run directories go here [/tmp/gpu_check]")
    ap.add_argument("--out", help="also write the JSON report to this file")
    args = ap.parse_args(argv)
    if args.device not in ("cuda", "cpu"):
        ap.exit(2, f"error: unknown device {args.device!r} (--device): expected cuda or cpu\n")
    if args.steps < 3:
        ap.exit(2, f"error: --steps {args.steps} too small (--steps): expected >= 3 (two warm-up steps + timing)\n")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cases = select(build_cases(args.device), args.only)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    workdir = Path(args.workdir).resolve()
    if args.plan:
        plan = [{"case": c.id, "precision": c.precision, "skip": c.skip, "runs": c.runs,
                 "command": shlex.join(command(c, args.device, args.dry_run,
                                               str(workdir / c.id.replace(':', '__') / "run"), "probe.json",
                                               args.steps, nproc=args.nproc if c.torchrun else 1))} for c in cases]
        print(json.dumps({"schema": SCHEMA, "plan": plan}, indent=1))
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available on this machine (--device): "
              "use --device cpu --dry-run", file=sys.stderr)
        return 2
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    t0 = time.perf_counter()
    deadline = t0 + args.budget
    results = []
    for case in cases:
        r = run_case(case, args, workdir, device_name, deadline)
        results.append(r)
        print(f"[gpu_check] {case.id}: {r['status']}" + (f" ({r.get('error') or r.get('reason')})"
              if r["status"] != "pass" else ""), file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    counts = {s: sum(r["status"] == s for r in results) for s in ("pass", "fail", "timeout", "skipped")}
    report = {"schema": SCHEMA, "device": args.device, "device_name": device_name, "dry_run": args.dry_run,
              "torch": torch.__version__, "steps_per_run": args.steps, "budget_s": args.budget,
              "wall_s": round(wall, 1), "summary": counts,
              "notes": {p.name: p.note for p in PACKAGES if p.note}, "cases": results}
    text = json.dumps(report, indent=1)
    if args.out:
        tmp = args.out + ".tmp"
        Path(tmp).write_text(text)
        os.replace(tmp, args.out)
    print(text)
    return 0 if counts["fail"] == 0 and counts["timeout"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
