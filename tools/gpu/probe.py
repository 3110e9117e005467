"""Run one package CLI in this process with measurement hooks, stop it after N optimizer steps, write JSON.

    python tools/gpu/probe.py --report R.json --stop-after 6 [--count-flops] -- action_ddim train --device cuda ...

Why in-process and through the package's own ``python -m <pkg>`` entry point: the check must not depend on
package internals (they change), only on two things every package has — a ``torch.optim.Optimizer`` and
trainkit's ``GracefulStop`` (SIGTERM finishes the step, saves a checkpoint and exits). A global optimizer
step post-hook counts steps and times them; after ``--stop-after`` steps the probe sends itself SIGTERM, so the
guide's command runs unchanged ("shrunk only in steps") and the stop also exercises the save path.

Measured (rank 0 writes the report; under torchrun each rank would count its own steps):
- steps: optimizer steps of the most-stepped optimizer (a GAN's G and D step once each per iteration);
- steps_per_s: over the steps after the second one (the first is warm-up/compile, the second may run under
  the FLOP counter); on CUDA each timed step boundary synchronizes (that sync is not counted as a host sync);
- syncs_per_step: ``torch.cuda.set_sync_debug_mode("warn")`` is switched on at the second step and each
  "called a synchronizing CUDA operation" warning is counted (CUDA only; null with a reason on CPU);
- peak memory: ``torch.cuda.max_memory_allocated`` (CUDA), and the process's max RSS on every device;
- flops_per_step: ``torch.utils.flop_counter.FlopCounterMode`` over one whole step (step 1 -> 2), when asked;
- state_step_at_first_step: the optimizer state's ``step`` after the first step of this process (1 on a
  fresh run, k+1 when a resume really restored k steps of optimizer state);
- backend: the torch.distributed backend when the run initialised a process group.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import runpy
import signal
import sys
import time
import traceback
import warnings

SYNC_MESSAGE = "called a synchronizing CUDA operation"


class SyncCounter:
    """Counts CUDA sync-debug warnings; passes every other warning to the previous handler."""

    def __init__(self):
        self.count = 0
        self._previous = warnings.showwarning
        warnings.filterwarnings("always", message=f".*{SYNC_MESSAGE}")
        warnings.showwarning = self._show

    def _show(self, message, category, filename, lineno, file=None, line=None):
        if SYNC_MESSAGE in str(message):
            self.count += 1
            return
        self._previous(message, category, filename, lineno, file, line)


def _state_step(optimizer) -> float | None:
    for state in optimizer.state.values():
        step = state.get("step") if isinstance(state, dict) else None
        if step is not None:
            return float(step.item() if hasattr(step, "item") else step)
    return None


def first_error_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Probe:
    def __init__(self, stop_after: int, count_flops: bool, cuda: bool = True):
        import torch

        self.torch = torch
        self.cuda = cuda and torch.cuda.is_available()  # a CPU run on a GPU machine measures no CUDA figures
        self.stop_after = stop_after
        self.count_flops = count_flops
        self.counts: dict[int, int] = {}
        self.marks: list[tuple[int, float, int]] = []  # (step, time, syncs so far)
        self.state_step: float | None = None
        self.stop_sent = False
        self.flops: int | None = None
        self.flops_reason: str | None = None if count_flops else "not asked (--count-flops)"
        self._flop_mode = None
        self.backend: str | None = None
        self.syncs = SyncCounter() if self.cuda else None
        self.t0 = time.perf_counter()
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(self._hook)

    def _sync(self):
        # The timing sync itself must not count as a host sync of the training loop.
        torch = self.torch
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode(mode)

    def _hook(self, optimizer, args, kwargs):
        torch = self.torch
        before = max(self.counts.values(), default=0)
        self.counts[id(optimizer)] = self.counts.get(id(optimizer), 0) + 1
        step = max(self.counts.values())
        if self.counts[id(optimizer)] == 1:
            s = _state_step(optimizer)
            if s is not None:
                self.state_step = s if self.state_step is None else max(self.state_step, s)
        if step == before:
            return
        if self.cuda:
            self._sync()
        self.marks.append((step, time.perf_counter(), self.syncs.count if self.syncs else 0))
        if step == 1:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                self.backend = str(torch.distributed.get_backend())
            if self.count_flops:
                try:
                    from torch.utils.flop_counter import FlopCounterMode

                    self._flop_mode = FlopCounterMode(display=False)
                    self._flop_mode.__enter__()
                except Exception as exc:  # a probe problem must not fail the package's run
                    self._flop_mode, self.flops_reason = None, f"FlopCounterMode failed: {first_error_line(exc)}"
        elif step == 2:
            if self._flop_mode is not None:
                try:
                    self._flop_mode.__exit__(None, None, None)
                    self.flops = int(self._flop_mode.get_total_flops())
                except Exception as exc:
                    self.flops_reason = f"FlopCounterMode failed: {first_error_line(exc)}"
                self._flop_mode = None
                # the counter's own overhead is inside step 2's mark; timing starts here
                if self.cuda:
                    self._sync()
                self.marks[-1] = (step, time.perf_counter(), self.marks[-1][2])
            if self.cuda:
                torch.cuda.set_sync_debug_mode("warn")
        if step >= self.stop_after and not self.stop_sent:
            self.stop_sent = True
            os.kill(os.getpid(), signal.SIGTERM)  # trainkit's GracefulStop: finish the step, save, exit

    def report(self, exit_code: int | None, error: str | None) -> dict:
        torch = self.torch
        if self.cuda:
            torch.cuda.set_sync_debug_mode(0)
        steps = max(self.counts.values(), default=0)
        timed = [m for m in self.marks if m[0] >= 2]
        steps_per_s = syncs_per_step = None
        if len(timed) >= 2 and timed[-1][1] > timed[0][1]:
            n = timed[-1][0] - timed[0][0]
            steps_per_s = n / (timed[-1][1] - timed[0][1])
            if self.cuda:
                syncs_per_step = (timed[-1][2] - timed[0][2]) / n
        if self.flops is None and self.flops_reason is None:
            self.flops_reason = "fewer than 2 optimizer steps"
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        return {
            "exit_code": exit_code,
            "error": error,
            "steps": steps,
            "optimizers": len(self.counts),
            "stopped_by_probe": self.stop_sent,
            "steps_per_s": steps_per_s,
            "timed_steps": (timed[-1][0] - timed[0][0]) if len(timed) >= 2 else 0,
            "syncs_per_step": syncs_per_step,
            "syncs_reason": None if syncs_per_step is not None else (
                "no CUDA: set_sync_debug_mode counts CUDA host syncs only" if not self.cuda
                else "fewer than 3 optimizer steps"),
            "peak_mem_bytes": int(torch.cuda.max_memory_allocated()) if self.cuda else None,
            "peak_mem_reason": None if self.cuda else "no CUDA: see cpu_max_rss_bytes",
            "cpu_max_rss_bytes": rss,
            "flops_per_step": self.flops,
            "flops_reason": self.flops_reason,
            "state_step_at_first_step": self.state_step,
            "backend": self.backend,
            "device_name": torch.cuda.get_device_name() if self.cuda else "cpu",
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "wall_s": time.perf_counter() - self.t0,
        }


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("error: probe needs '-- <module> <args...>' after its own flags", file=sys.stderr)
        return 2
    cut = argv.index("--")
    ap = argparse.ArgumentParser(prog="probe")
    ap.add_argument("--report", required=True)
    ap.add_argument("--stop-after", type=int, default=6)
    ap.add_argument("--count-flops", action="store_true")
    ap.add_argument("--cpu", action="store_true", help="the run is on CPU: no CUDA syncs or memory figures")
    opts = ap.parse_args(argv[:cut])
    module, *rest = argv[cut + 1:]
    probe = Probe(opts.stop_after, opts.count_flops, cuda=not opts.cpu)
    code: int | None = 0
    error = None
    sys.argv = [module, *rest]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) or exc.code is None else 1
        code = 0 if code is None else code
    except BaseException as exc:  # noqa: BLE001 - recorded, then the traceback is printed
        code, error = 1, first_error_line(exc)
        traceback.print_exc()
    if int(os.environ.get("RANK", "0")) == 0:
        rep = probe.report(code, error)
        tmp = opts.report + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rep, f, indent=1)
        os.replace(tmp, opts.report)
    return code


if __name__ == "__main__":
    sys.exit(main())
