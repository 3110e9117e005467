"""One tracker fanning out to TensorBoard event files, ``metrics.jsonl`` and (optionally) Weights & Biases."""
from __future__ import annotations

import json
import math
import netrc
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

WANDB_MODES = ("online", "offline", "disabled")


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
        return bool(auth and auth[2])
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _reachable(host: str, port: int = 443, timeout: float = 2.0) -> bool:
    """DNS + TCP connect with a hard deadline (DNS alone can hang in sandboxes, so it runs in a thread)."""
    result: list[bool] = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def resolve_wandb_mode(requested: str | None) -> tuple[str, str | None]:
    """Mode to use and, when it differs from what was asked, why. Order: argument > WANDB_MODE > online."""
    mode = (requested or os.environ.get("WANDB_MODE") or "online").lower()
    if mode in ("dryrun", "offline"):
        return "offline", None
    if mode not in WANDB_MODES:
        return "offline", f"unknown W&B mode '{mode}', using offline"
    if mode == "online":
        if not _has_wandb_key():
            return "offline", "no W&B API key found (WANDB_API_KEY or ~/.netrc): logging offline; upload later with `wandb sync`"
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0].split(":")[0]
        if not _reachable(host):
            return "offline", f"W&B server {host} is not reachable: logging offline; upload later with `wandb sync`"
    return mode, None


def _to_hwc_uint8(image: Any) -> np.ndarray:
    array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.transpose(array, (1, 2, 0))
    if array.dtype != np.uint8:
        array = np.clip(array.astype(np.float32), 0.0, 1.0)
        array = (array * 255.0 + 0.5).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


def _to_floats(scalars: Mapping[str, Any]) -> dict[str, float]:
    import torch

    out: dict[str, float] = {}
    tensors: dict[Any, list[tuple[str, Any]]] = {}
    for key, value in scalars.items():
        if value is None:
            continue
        if isinstance(value, torch.Tensor):
            tensors.setdefault(value.device, []).append((key, value))
        else:
            out[key] = float(value)
    for items in tensors.values():
        values = torch.stack([v.detach().reshape(()).to(torch.float64) for _, v in items]).tolist()
        out.update((k, float(v)) for (k, _), v in zip(items, values))
    return {k: out[k] for k in scalars if k in out}  # keep the caller's key order


class Tracker:
    """Scalars, images, figures, histograms and text to TensorBoard + ``metrics.jsonl`` (+ W&B when asked).

    On resume pass ``resume_step`` (the checkpoint's step): events logged after it by the interrupted run
    are dropped, so curves stay clean. ``enabled=None`` means: only on the main process (rank 0). A disabled tracker accepts every call and
    does nothing, so loops need no rank checks.
    """

    def __init__(self, run_dir: str | Path, *, config: Mapping | None = None, wandb_project: str | None = None,
                 wandb_mode: str | None = None, run_name: str | None = None, purge_step: int | None = None,
                 resume_step: int | None = None, enabled: bool | None = None, tensorboard: bool = True):
        from .distributed import is_main_process

        if purge_step is None and resume_step is not None:
            # Steps up to and including the checkpoint's step were logged before it was saved and stay.
            purge_step = resume_step + 1

        self.run_dir = Path(run_dir)
        self.enabled = is_main_process() if enabled is None else enabled
        self._tb = None
        self._wandb_run = None
        self._jsonl = None
        self.wandb_mode: str | None = None
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events at or after the resume step from the previous, interrupted run.
            self._tb = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge_step)
        jsonl_path = self.run_dir / "metrics.jsonl"
        if purge_step is not None and jsonl_path.exists():
            kept = [line for line in jsonl_path.read_text().splitlines() if line.strip() and json.loads(line).get("step", -1) < purge_step]
            jsonl_path.write_text("".join(line + "\n" for line in kept))
        self._jsonl = open(jsonl_path, "a", buffering=1)
        if wandb_project:
            self._init_wandb(wandb_project, wandb_mode, run_name, config)

    def _init_wandb(self, project: str, mode: str | None, run_name: str | None, config: Mapping | None) -> None:
        mode, reason = resolve_wandb_mode(mode)
        if reason:
            print(f"warning: {reason}", flush=True)
        if mode == "disabled":
            self.wandb_mode = "disabled"
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        id_file = self.run_dir / "wandb_run_id.txt"
        try:
            import wandb

            run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
            id_file.write_text(run_id)
            self._wandb_run = wandb.init(
                project=project, name=run_name, id=run_id, resume="allow", dir=str(self.run_dir), mode=mode,
                config=dict(config) if config else None,
                settings=wandb.Settings(init_timeout=60, console="off", silent=True, x_disable_stats=True),
            )
            self.wandb_mode = mode
        except Exception as err:  # W&B must never take a training run down
            print(f"warning: W&B init failed ({type(err).__name__}: {err}); continuing without W&B", flush=True)
            self._wandb_run = None
            self.wandb_mode = None

    # ------------------------------------------------------------------ logging
    def _wandb_log(self, data: dict, step: int) -> None:
        if self._wandb_run is None:
            return
        try:
            self._wandb_run.log(data, step=step)
        except Exception as err:
            print(f"warning: W&B log failed ({type(err).__name__}: {err}); disabling W&B for this run", flush=True)
            self._wandb_run = None

    def log_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        """Log numbers: Python/numpy scalars or 0-dim (1-element) tensors, e.g. ``loss.detach()`` or
        ``StepOutcome.grad_norm``. Tensors are read back in one transfer per device, so logging several of
        them costs one sync; ``None`` values are dropped."""
        if not self.enabled or not scalars:
            return
        clean = _to_floats(scalars)
        if self._tb is not None:
            for tag, value in clean.items():
                self._tb.add_scalar(tag, value, global_step=step)
        if self._jsonl is not None:
            row = {"step": int(step), "time": round(time.time(), 3)}
            row.update({k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()})
            self._jsonl.write(json.dumps(row) + "\n")
        self._wandb_log(clean, step)

    def log_image(self, tag: str, image: Any, step: int) -> None:
        if not self.enabled:
            return
        array = _to_hwc_uint8(image)
        if self._tb is not None:
            self._tb.add_image(tag, array, global_step=step, dataformats="HWC")
        if self._wandb_run is not None:
            import wandb

            self._wandb_log({tag: wandb.Image(array)}, step)

    def log_figure(self, tag: str, figure, step: int, *, close: bool = True) -> Path | None:
        """Save the matplotlib figure as ``samples/<tag>_<step>.png`` and log it everywhere."""
        if not self.enabled:
            if close:
                import matplotlib.pyplot as plt

                plt.close(figure)
            return None
        samples = self.run_dir / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        path = samples / f"{tag.replace('/', '_')}_{step:06d}.png"
        figure.savefig(path, dpi=90, bbox_inches="tight")
        if self._tb is not None:
            self._tb.add_figure(tag, figure, global_step=step, close=False)
        if self._wandb_run is not None:
            import wandb

            self._wandb_log({tag: wandb.Image(str(path))}, step)
        if close:
            import matplotlib.pyplot as plt

            plt.close(figure)
        return path

    def log_histogram(self, tag: str, values: Any, step: int) -> None:
        if not self.enabled:
            return
        array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64).ravel()
        array = array[np.isfinite(array)]
        if array.size == 0:
            return
        if self._tb is not None:
            self._tb.add_histogram(tag, array, global_step=step)
        if self._wandb_run is not None:
            import wandb

            self._wandb_log({tag: wandb.Histogram(array)}, step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.add_text(tag, text, global_step=step)
        if self._wandb_run is not None:
            import wandb

            self._wandb_log({tag: wandb.Html(f"<pre>{text}</pre>")}, step)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()
        if self._jsonl is not None:
            self._jsonl.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._wandb_run is not None:
            try:
                self._wandb_run.finish()
            except Exception as err:
                print(f"warning: W&B finish failed ({type(err).__name__}: {err})", flush=True)
            self._wandb_run = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
