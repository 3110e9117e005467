"""Run safety: one run identity per run folder, destructive flags that delete only what the tool wrote,
a shape check for resumes, and stop signals that reach only the main process.

Why: resuming run A's checkpoint into run B's folder, or an older checkpoint of a finished run, used to
overwrite B (or the run's later history) without a word, and ``--overwrite`` deleted any folder. The rules:

* A run folder holds ``run.json`` with a run id; every checkpoint carries the same id (:meth:`RunIdentity.stamp`).
* :func:`check_run_target` (call it *before* writing anything) refuses a checkpoint of another run, and a
  rewind (a checkpoint older than the run's newest) unless the user confirmed it; a new or empty folder is a
  fork (a new run id, its parent recorded). :meth:`RunIdentity.commit` writes ``run.json`` (after the model,
  optimizer and scheduler have loaded) and, on a confirmed rewind, first archives the folder under
  ``rewound/<time>/`` (hard links where possible), so no history is lost.
* ``best`` is only replaced by a better model: :meth:`RunIdentity.best_allows` reads the best value recorded in
  ``run.json``, which a rewind does not roll back.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import torch

from .errors import UserError

RUN_FILE = "run.json"
OUTPUT_MARKER = ".trainkit_output"
REWOUND_DIR = "rewound"
RUN_MARKERS = ("checkpoints", "config.yaml", "metrics.jsonl")


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_run_file(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError("run file is unreadable", str(path), "a JSON file written by this tool") from None
    if not isinstance(data, dict):
        raise UserError("run file has an unexpected layout", str(path), "a JSON object")
    return data


def checkpoint_run_id(state: dict) -> str | None:
    """The run id a checkpoint carries: top level, or under ``extra``/``trainkit`` (packages nest their state)."""
    if not isinstance(state, dict):
        return None
    if isinstance(state.get("run_id"), str):
        return state["run_id"]
    for key in ("extra", "trainkit", "train_state", "resume"):
        inner = state.get(key)
        if isinstance(inner, dict) and isinstance(inner.get("run_id"), str):
            return inner["run_id"]
    return None


def _holds_run(run_dir: Path, markers) -> bool:
    if not run_dir.is_dir():
        return False
    if (run_dir / RUN_FILE).exists() or any((run_dir / m).exists() for m in markers):
        return True
    return any(p.is_file() for pattern in ("*.pt", "*.pth") for p in run_dir.rglob(pattern)
               if REWOUND_DIR not in p.relative_to(run_dir).parts)


def _newest_saved_step(run_dir: Path) -> int | None:
    """The highest ``step`` among the folder's checkpoints (not under ``rewound/``): the rewind rule for run
    folders written before ``run.json`` existed. Loaded memory-mapped, so big checkpoints cost little."""
    steps = []
    for pattern in ("*.pt", "*.pth"):
        for p in run_dir.rglob(pattern):
            if REWOUND_DIR in p.relative_to(run_dir).parts or not p.is_file():
                continue
            try:
                state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
            except Exception:  # not a torch checkpoint (or unreadable): it says nothing about the run's steps
                continue
            if not isinstance(state, dict):
                continue
            step = state.get("step")
            if step is None and isinstance(state.get("train_state"), dict):
                step = state["train_state"].get("step")
            if isinstance(step, (int, float)) or (torch.is_tensor(step) and step.numel() == 1):
                steps.append(int(step))
    return max(steps) if steps else None


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


class RunIdentity:
    """The run a folder holds. Built by :func:`check_run_target`; nothing is written until :meth:`commit`."""

    def __init__(self, run_dir: Path, run_id: str, *, info: dict | None = None, parent: str | None = None,
                 forked_from: str | None = None, rewind_from: int | None = None, rewind_to: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.info = dict(info or {})
        self.parent = parent
        self.forked_from = forked_from
        self.rewind_from = rewind_from
        self.rewind_to = rewind_to
        self.committed = False

    def commit(self) -> "RunIdentity":
        """Create the folder and write ``run.json``; a confirmed rewind archives the folder first."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        info = dict(self.info)
        info.setdefault("run_id", self.run_id)
        info.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if self.parent or self.forked_from:
            info.setdefault("parent_run_id", self.parent)
            info.setdefault("forked_from", self.forked_from)
        if self.rewind_from is not None:
            archive = archive_run_dir(self.run_dir, f"step{self.rewind_from}_to_step{self.rewind_to}")
            info.setdefault("rewinds", []).append({"from_step": self.rewind_from, "to_step": self.rewind_to,
                                                   "archive": str(archive.relative_to(self.run_dir))})
            info["last_step"] = self.rewind_to
        _write_json_atomic(self.run_dir / RUN_FILE, info)
        self.info = info
        self.committed = True
        return self

    def _save_info(self) -> None:
        if self.committed:
            _write_json_atomic(self.run_dir / RUN_FILE, self.info)

    def stamp(self, payload: dict) -> dict:
        """The checkpoint payload with this run's id (a copy; the caller's dict is untouched)."""
        payload = dict(payload)
        payload["run_id"] = self.run_id
        return payload

    def note_checkpoint(self, step: int) -> None:
        """Record a *resumable* save (latest/periodic; not a best-only file) at ``step``."""
        self.info["last_step"] = int(step)
        self._save_info()

    def best_allows(self, value: float, mode: str = "min") -> bool:
        """Whether ``value`` beats the best this run ever recorded (a rewind keeps the record)."""
        best = (self.info.get("best") or {}).get("value")
        if best is None:
            return True
        return float(value) < float(best) if mode == "min" else float(value) > float(best)

    def forget_best(self, reason: str) -> None:
        """Restart the best ranking on purpose (e.g. the selection metric is now measured on other data, so old
        values are not comparable); the old record is kept under ``best_resets``, never silently dropped."""
        old = self.info.get("best")
        if old is not None:
            self.info.setdefault("best_resets", []).append({"old": old, "reason": reason})
        self.info["best"] = None
        self._save_info()

    def record_best(self, value: float, *, metric: str | None = None, mode: str = "min", step: int | None = None):
        self.info["best"] = {"value": float(value), "metric": metric, "mode": mode, "step": step}
        self._save_info()


def archive_run_dir(run_dir: Path, label: str) -> Path:
    """Copy every file of ``run_dir`` (except earlier archives) under ``rewound/<time>_<label>/``.

    Checkpoints are hard-linked (they are replaced, never written in place, so the link keeps the old
    bytes); logs that are appended to are copied.
    """
    run_dir = Path(run_dir)
    dest = run_dir / REWOUND_DIR / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}_{label}"
    n = 1
    while dest.exists():
        dest = dest.with_name(f"{dest.name}_{n}")
        n += 1
    for src in sorted(run_dir.rglob("*")):
        rel = src.relative_to(run_dir)
        if rel.parts[0] == REWOUND_DIR or not src.is_file() or src.is_symlink():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix in (".pt", ".pth"):
            try:
                os.link(src, target)
                continue
            except OSError:
                pass
        shutil.copy2(src, target)
    return dest


def check_run_target(run_dir: str | Path, *, state: dict | None = None, resume_path: str | Path | None = None,
                     step: int | None = None, allow_rewind: bool = False, rewind_flag: str = "--allow_rewind",
                     dir_flag: str = "--save_dir", markers=RUN_MARKERS) -> RunIdentity:
    """Decide whether a run may write into ``run_dir``; writes nothing (see :meth:`RunIdentity.commit`).

    * fresh run (``state`` None): a new run id. (Refusing an occupied folder stays the caller's rule.)
    * resume into a new or empty folder: a fork, with a new run id and the checkpoint's id as parent.
    * resume into a folder that holds a run: the checkpoint must carry the folder's run id (or, for a
      checkpoint or folder from before run ids, lie inside the folder); else a one-line UserError.
    * a checkpoint older than the run's newest resumable save (``run.json``'s ``last_step``) is a rewind:
      refused unless ``allow_rewind``; then :meth:`commit` archives the folder before anything changes.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError("run directory path is a file", str(run_dir), "expected a directory (or a new path)")
    info = read_run_file(run_dir)
    if state is None:
        return RunIdentity(run_dir, new_run_id())
    ck_id = checkpoint_run_id(state)
    ck_step = step if step is not None else state.get("step")
    if not _holds_run(run_dir, markers):
        return RunIdentity(run_dir, new_run_id(), parent=ck_id,
                           forked_from=str(resume_path) if resume_path is not None else None)
    folder_id = (info or {}).get("run_id")
    if folder_id and ck_id:
        same = folder_id == ck_id
    else:
        same = resume_path is not None and _inside(Path(resume_path), run_dir)
    if not same:
        raise UserError(f"the checkpoint belongs to another run than the one in {dir_flag} {run_dir}",
                        str(resume_path),
                        f"resume into the checkpoint's own run folder, or give a new empty {dir_flag} to fork it")
    last = (info or {}).get("last_step")
    if last is None and ck_step is not None:
        last = _newest_saved_step(run_dir)  # a folder from before run.json: its own checkpoints say (audit A7)
    if last is not None and ck_step is not None and int(ck_step) < int(last):
        if not allow_rewind:
            raise UserError(f"the checkpoint is at step {int(ck_step)} but this run already saved step {int(last)}; "
                            "resuming it would rewind the run", str(resume_path),
                            f"resume the newest checkpoint (--resume auto), give a new empty {dir_flag} to fork, "
                            f"or pass {rewind_flag} (the later history is archived under {REWOUND_DIR}/)")
        return RunIdentity(run_dir, folder_id or ck_id or new_run_id(), info=info, rewind_from=int(last),
                           rewind_to=int(ck_step))
    return RunIdentity(run_dir, folder_id or ck_id or new_run_id(), info=info)


# --- destructive flags -------------------------------------------------------------------------------------

def _forbidden_target(out: Path) -> str | None:
    target = out.expanduser().resolve()
    home = Path.home().resolve()
    cwd = Path.cwd().resolve()
    if target == Path(target.anchor):
        return "the filesystem root"
    if target == home:
        return "the home folder"
    if target == cwd:
        return "the working directory"
    if cwd.is_relative_to(target):
        return "a folder that contains the working directory"
    return None


def check_replaceable(out: str | Path, *, flag: str = "--overwrite", legacy_markers=()) -> bool:
    """Whether ``out`` holds an earlier output of this tool that ``flag`` may replace.

    False: ``out`` is new or empty (nothing to replace). True: it holds :data:`OUTPUT_MARKER` (or one of
    ``legacy_markers``, the files older versions wrote). Otherwise a one-line UserError, and so for ``.``,
    ``~``, ``/`` and any ancestor of the working directory, whatever they hold.
    """
    out = Path(out)
    bad = _forbidden_target(out)
    if bad:
        raise UserError(f"refusing to replace {bad}", f"{flag} {out}", "name a folder this tool wrote, e.g. a new subfolder")
    if out.exists() and not out.is_dir():
        raise UserError("output path is a file", str(out), "a folder (new, empty, or one this tool wrote)")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if (out / OUTPUT_MARKER).is_file() or any((out / m).exists() for m in legacy_markers):
        return True
    raise UserError("refusing to replace a folder this tool did not write", f"{flag} {out}",
                    f"it has no {OUTPUT_MARKER} marker; choose another folder or delete it yourself")


def write_output_marker(folder: str | Path, tool: str) -> Path:
    path = Path(folder) / OUTPUT_MARKER
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"tool": tool, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
    return path


def swap_in(tmp: str | Path, out: str | Path) -> Path:
    """Put the finished folder ``tmp`` at ``out``: the old one is moved aside first, deleted only after."""
    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


# --- resume shape check -------------------------------------------------------------------------------------

def check_state_shapes(model: torch.nn.Module, saved: dict, *, where: str, changed_keys=(),
                       flag_hint: str = "drop the flags that change the model's shape") -> None:
    """Compare the live model's state-dict with a checkpoint's: every missing, extra or reshaped tensor is
    one UserError line that names the tensors and the config keys that changed (derived, not a hand list)."""
    from .checkpoint import unwrap_model

    live = {k: tuple(v.shape) for k, v in unwrap_model(model).state_dict().items() if hasattr(v, "shape")}
    old = {k: tuple(v.shape) for k, v in saved.items() if hasattr(v, "shape")}
    problems = [f"{k} {old[k]} -> {live[k]}" for k in sorted(live.keys() & old.keys()) if live[k] != old[k]]
    problems += [f"{k} missing in checkpoint" for k in sorted(live.keys() - old.keys())]
    problems += [f"{k} not in this model" for k in sorted(old.keys() - live.keys())]
    if problems:
        keys = ", ".join(changed_keys) if changed_keys else "none given"
        shown = "; ".join(problems[:3]) + (f"; +{len(problems) - 3} more" if len(problems) > 3 else "")
        raise UserError(f"the resumed model's shape differs from the checkpoint's ({shown}); changed settings: {keys}",
                        where, f"{flag_hint}: shape-changing settings cannot change on resume")


# --- stop signals -------------------------------------------------------------------------------------------

_STOP = {"requested": False, "signal": None}


def note_stop(signal_name: str | None) -> None:
    """Called by :class:`trainkit.GracefulStop`'s handler: validation and long loops poll :func:`stop_requested`."""
    _STOP["requested"], _STOP["signal"] = True, signal_name


def clear_stop() -> None:
    _STOP["requested"], _STOP["signal"] = False, None


EXIT_STOPPED = 3  # every package's `train` after a SIGTERM/SIGINT stop that saved a checkpoint (wubu_gan's code)


def exit_if_stopped() -> None:
    """End a CLI ``train`` with :data:`EXIT_STOPPED` when the run was stopped by a signal (after it saved), so
    ``train && next-step`` scripts and schedulers can tell a stopped run from a finished one."""
    if stop_requested():
        raise SystemExit(EXIT_STOPPED)


def stop_requested() -> bool:
    """This process got SIGTERM/SIGINT (local flag, no collective: safe inside validation on one rank)."""
    return bool(_STOP["requested"])


class EvalStopped(Exception):
    """Raised inside a validation/rollout loop by :func:`raise_if_stopped`: the training loop catches it, skips
    this validation's metrics (never logged, never ranked for ``best``), saves and stops."""


def eval_should_stop() -> bool:
    """Whether a validation/rollout loop should end now: a stop signal arrived and the run is one process.

    Under DDP the ranks would have to agree (a collective per eval batch, and some packages validate on rank 0
    only), so there validation runs to its end and the stop is honoured at the next step boundary as before.
    """
    if not _STOP["requested"]:
        return False
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def raise_if_stopped() -> None:
    """Poll once per eval batch: raises :class:`EvalStopped` when :func:`eval_should_stop`."""
    if eval_should_stop():
        raise EvalStopped(_STOP["signal"] or "stop")


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """DataLoader ``worker_init_fn``: a scheduler sends SIGTERM to every process of the job; workers ignore it
    so the main process can finish its step, save and shut them down (instead of "worker killed by signal")."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def worker_init(fn=None):
    """``worker_init_fn`` that ignores stop signals, then runs ``fn(worker_id)`` (e.g. a seeding hook)."""
    if fn is None:
        return ignore_stop_signals

    def init(worker_id):
        ignore_stop_signals(worker_id)
        fn(worker_id)

    return init
