"""tools/gpu_check.py and tools/gpu/probe.py on CPU.

Fast tests drive the check through a stand-in package (a real optimizer loop that, like every package,
saves on SIGTERM and resumes with ``--resume auto``), so the report schema, the first-error line and the
resume check are tested in seconds. The real packages' dry runs are ``slow`` (each starts a package CLI).
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


gc = _load("gpu_check", REPO / "tools" / "gpu_check.py")

FAKE_MAIN = textwrap.dedent('''
    """A stand-in package CLI: Adam on a linear layer; SIGTERM -> save and exit 0 (like trainkit's GracefulStop)."""
    import os, signal, sys
    import torch

    args = sys.argv[1:]
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    if "--fail" in args:
        raise ValueError("fake failure in the forward\\nsecond line")
    if "--usage-error" in args:
        print("error: bad value 3 (--nhead): expected a divisor of d_model", file=sys.stderr)
        sys.exit(2)
    save = args[args.index("--save_dir") + 1]
    ck = os.path.join(save, "ck.pt")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.Adam(model.parameters())
    if "--resume" in args and "--ignore-resume" not in args and os.path.exists(ck):
        state = torch.load(ck, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
    for _ in range(10000):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if stop:
            os.makedirs(save, exist_ok=True)
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, ck)
            sys.exit(0)
    sys.exit(0)
''')


@pytest.fixture
def fake(tmp_path, monkeypatch):
    pkg = tmp_path / "mods" / "fakepkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(FAKE_MAIN)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "mods"))
    fake_pkg = gc.Package("fakepkg", ["train", "--device", "{device}"], ["--tiny"], "--save_dir", 8, 2,
                          {"fp32": [], "bf16": ["--fail"], "fp16": ["--usage-error"]}, "fp32")
    monkeypatch.setattr(gc, "PACKAGES", [fake_pkg])
    return tmp_path


def test_plan_lists_every_package_with_guide_resume_and_torchrun_cases(capsys):
    assert gc.main(["--plan"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["schema"] == gc.SCHEMA
    ids = {c["case"] for c in plan["plan"]}
    for pkg in ("action_ddim", "dsn", "worldmodel", "wubu_gan", "amt"):
        for kind in ("guide", "resume", "torchrun"):
            assert f"{pkg}:{kind}" in ids
        # all three precisions are in the plan: run, or skipped with a reason
        assert {c["precision"] for c in plan["plan"] if c["case"].startswith(pkg + ":")} == {"fp32", "bf16", "fp16"}
    assert {"worldmodel:gc", "amt:compile", "amt:gc_off"} <= ids
    cmds = {c["case"]: c["command"] for c in plan["plan"]}
    assert "--device cuda:0" in cmds["dsn:guide"] and "--precision bf16" in cmds["amt:guide"]
    assert "torch.distributed.run --standalone --nproc_per_node 1" in cmds["amt:torchrun"]
    assert "--resume" not in cmds["action_ddim:resume"]  # the second run adds --resume auto
    skip = {c["case"]: c["skip"] for c in plan["plan"]}
    assert "fp16 + GradScaler on CUDA" in skip["worldmodel:bf16"]


def test_dry_run_plan_appends_tiny_flags_and_uses_cpu(capsys):
    assert gc.main(["--plan", "--device", "cpu", "--dry-run", "--only", "dsn:guide,worldmodel"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    dsn = next(c for c in plan if c["case"] == "dsn:guide")
    assert "--device cpu " in dsn["command"] and "--enc_hidden 32" in dsn["command"]
    wm = {c["case"]: c for c in plan if c["case"].startswith("worldmodel:")}
    # on CPU worldmodel's use_amp means bf16: the guide case runs bf16 and fp16 is skipped with a reason
    assert wm["worldmodel:fp16"]["skip"] and "training.use_amp=true" in wm["worldmodel:guide"]["command"]


def test_bad_only_is_a_one_line_error(capsys):
    assert gc.main(["--plan", "--only", "nosuchpkg"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown case 'nosuchpkg' (--only)") and "\n" not in err


def test_first_error_line_prefers_cli_error_then_exception():
    assert gc.first_error_line("Traceback...\nerror: bad key (x.yaml): expected int\n") == \
        "error: bad key (x.yaml): expected int"
    tb = 'Traceback (most recent call last):\n  File "a.py", line 1\nRuntimeError: Expected all tensors on cuda\n'
    assert gc.first_error_line(tb) == "RuntimeError: Expected all tensors on cuda"


def test_peak_flops_uses_tf32_only_for_fp32():
    assert gc.peak_flops("NVIDIA H200", "fp32", tf32=True) == 494e12
    assert gc.peak_flops("NVIDIA H200", "fp32", tf32=False) == 67e12
    assert gc.peak_flops("NVIDIA H200", "bf16", tf32=False) == 989e12
    assert gc.peak_flops("Some GPU", "bf16", tf32=False) is None


def test_report_pass_fail_and_resume_through_a_stand_in_package(fake, capsys):
    out = fake / "report.json"
    rc = gc.main(["--device", "cpu", "--dry-run", "--steps", "4", "--workdir", str(fake / "w"), "--out", str(out),
                  "--only", "fakepkg:bf16,fakepkg:resume"])
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert rc == 1  # failures make the exit code non-zero
    assert report["schema"] == gc.SCHEMA and report["device"] == "cpu" and report["dry_run"]
    cases = {c["case"]: c for c in report["cases"]}
    guide = cases["resume"]  # its figures are those of the resumed run (3 subprocesses in all keep this fast)
    assert guide["status"] == "pass" and guide["steps"] == 4 and guide["first_run"]["steps"] == 4
    assert guide["steps_per_s"] > 0 and guide["samples_per_s"] == pytest.approx(guide["steps_per_s"] * 2)
    assert guide["syncs_per_step"] is None and "no CUDA" in guide["syncs_reason"]
    assert guide["peak_mem_bytes"] is None and guide["cpu_max_rss_bytes"] > 0
    assert guide["flops_per_step"] == 2 * (2 * 8 * 4 * 4)  # Linear(4, 4), batch 8: forward + weight-gradient matmuls
    assert guide["mfu"] is None and guide["mfu_reason"] == "no CUDA device"
    cmd = guide["command"]
    assert "--tiny" in cmd and cmd[-4] == "--save_dir" and cmd[-2:] == ["--resume", "auto"]
    # a failing case records the first line of its exception, and a CLI usage error its 'error:' line
    assert cases["bf16"]["status"] == "fail"
    assert cases["bf16"]["error"] == "ValueError: fake failure in the forward"
    # resume: the second run's optimizer state continues from the first run's 4 steps
    assert cases["resume"]["status"] == "pass"
    assert cases["resume"]["resume"] == {"first_run_steps": 4, "state_step_after_resume": 5.0, "expected": 5.0,
                                         "resumed": True}
    assert report["summary"] == {"pass": 1, "fail": 1, "timeout": 0, "skipped": 0}


def test_resume_verdict_catches_a_run_that_started_over():
    figures, why = gc.resume_verdict({"steps": 6}, {"state_step_at_first_step": 1.0})
    assert not figures["resumed"] and "did not restore the optimizer state: step 1.0" in why
    assert gc.resume_verdict({"steps": 6}, {"state_step_at_first_step": 7.0})[1] is None
    assert gc.resume_verdict({"steps": 6}, {})[1]  # no optimizer state recorded: not a resume


@pytest.mark.slow
def test_resume_case_fails_when_the_package_ignores_resume(fake):
    bad = gc.run_case(gc.Case(gc.PACKAGES[0], "resume", ["--ignore-resume"], "fp32", runs=2),
                      gc.parse_args(["--device", "cpu", "--dry-run", "--steps", "3", "--workdir", str(fake / "w2")]),
                      fake / "w2", "cpu", float("inf"))
    assert bad["status"] == "fail" and "did not restore the optimizer state" in bad["error"]


def test_a_hung_case_times_out_and_its_process_group_is_killed(fake):
    case = gc.Case(gc.PACKAGES[0], "guide", [], "fp32")
    (fake / "h").mkdir()
    run = gc.run_once(case, "cpu", True, str(fake / "h" / "run"), str(fake / "h" / "p.json"), 3, timeout=0.5)
    assert run["status"] == "timeout" and "per-case limit" in run["error"] and run["rc"] is None


def test_budget_spent_skips_the_rest_with_a_reason(fake, capsys):
    rc = gc.main(["--device", "cpu", "--dry-run", "--budget", "0", "--workdir", str(fake / "w"),
                  "--only", "fakepkg:guide"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["cases"][0]["status"] == "skipped" and "budget" in report["cases"][0]["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("pkg", ["action_ddim", "dsn", "worldmodel", "wubu_gan", "amt"])
def test_dry_run_of_a_real_package(pkg, tmp_path):
    """Every case of one package at tiny shapes on CPU (minutes: it starts the package CLI per case)."""
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check.py"), "--device", "cpu", "--dry-run",
                        "--steps", "3", "--only", pkg, "--workdir", str(tmp_path / "w"), "--out", str(out),
                        "--budget", "1500", "--case-timeout", "600"], capture_output=True, text=True, timeout=1800)
    report = json.loads(out.read_text())
    bad = {c["case"]: c.get("error") for c in report["cases"] if c["status"] in ("fail", "timeout")}
    assert not bad, bad
    resume = next(c for c in report["cases"] if c["case"] == "resume")
    assert resume["resume"]["resumed"], resume
