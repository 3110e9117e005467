"""`action-ddim import-log`: real pointer recordings (CSV event logs) -> the dataset format.

A log is a CSV file with a header row and one row per pointer event. The default column names
are those of the Balabit Mouse Dynamics Challenge session files, the common layout of public
mouse-dynamics recordings::

    record timestamp,client timestamp,button,state,x,y
    0.234,0.234,NoButton,Move,262,2
    1.018,1.02,Left,Pressed,446,140
    1.120,1.121,Left,Drag,450,142
    1.203,1.204,Left,Released,452,142

- time: ``client timestamp`` in seconds (the input device's clock; any monotonic clock works).
- x, y: pixels, origin at the top-left.
- press: from ``state`` (and ``button``). Text states: ``Pressed``/``Down``/``Drag`` press,
  ``Released``/``Up`` release, anything else (``Move``) keeps the current state; wheel events
  (``button`` ``Scroll``/``Wheel``) never press. A numeric state column (touch logs with 0/1) is
  the press state itself. ``button`` may be absent.

What the import does, per file:
1. Rows are parsed and checked: every named column present, numbers where numbers are expected,
   timestamps never decreasing (equal timestamps are allowed; the last of them wins).
2. The event stream is cut where no event arrives for more than ``split_gap_s`` seconds (a long
   idle gap, or a pause in the recording): each piece becomes its own segment.
3. Each segment is resampled at ``rate_hz`` on the grid t0 + k / rate_hz. Mouse logs record an
   event only when something changes, so the pointer rests at the last event's position until the
   next one: the position is held, and linearly interpolated only between events closer than
   ``interp_gap_s``. Press is held the same way; a press shorter than one step still marks the
   step nearest to its start, so quick clicks survive the resampling.
4. Coordinates are divided by the screen size (given, or inferred from the extent of all input
   logs as max x + 1 by max y + 1 pixels; printed and recorded) and clipped to [0, 1].
5. Segments are cut into non-overlapping windows of ``seq_len`` steps; a remainder shorter than
   ``seq_len`` is dropped (counted).

Output: ``out_dir/NNN_<stem>_actions.npy`` (float32 ``[N*seq_len, 3]``) per input file with at least
one window, and ``metadata.json`` with ``seq_len``, ``rate_hz``, the screen size and how it was
found, the column names and per-file counts.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from trainkit.errors import UserError

BALABIT_COLUMNS = {"time": "client timestamp", "x": "x", "y": "y", "button": "button", "state": "state"}
PRESS_STATES = {"pressed", "press", "down", "drag", "dragged", "touchdown", "touch_down", "begin", "began"}
RELEASE_STATES = {"released", "release", "up", "touchup", "touch_up", "end", "ended", "cancel", "cancelled"}
WHEEL_BUTTONS = {"scroll", "wheel"}


@dataclass
class ImportSettings:
    rate_hz: float = 30.0          # the generator's rate, so imported data and the default data agree
    seq_len: int = 64
    screen: tuple[float, float] | None = None   # (width, height) in pixels; None = infer from the logs
    split_gap_s: float = 2.0       # no event for longer than this splits the log into segments
    interp_gap_s: float = 0.1      # interpolate positions only between events closer than this
    columns: dict[str, str] = field(default_factory=lambda: dict(BALABIT_COLUMNS))


@dataclass
class Log:
    """One parsed log: event times (s), positions (px) and press state after each event."""

    path: Path
    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    press: np.ndarray


def parse_columns(spec: str | None) -> dict[str, str]:
    """``time=ts,x=px,y=py,state=touch`` -> column mapping over the Balabit defaults.

    ``button=`` (empty) means the log has no button column.
    """
    cols = dict(BALABIT_COLUMNS)
    if not spec:
        return cols
    for item in spec.split(","):
        key, sep, name = item.partition("=")
        key = key.strip()
        if not sep or key not in cols:
            raise UserError(f"bad column mapping {item!r}", "--columns",
                            f"comma-separated ROLE=NAME with ROLE in {', '.join(cols)} (e.g. time=ts,state=touch)")
        cols[key] = name.strip()
    for key in ("time", "x", "y", "state"):
        if not cols[key]:
            raise UserError(f"column for {key} is empty", "--columns", f"a column name for {key}")
    return cols


def parse_screen(spec: str | None) -> tuple[float, float] | None:
    if spec is None:
        return None
    w, sep, h = spec.lower().partition("x")
    try:
        size = (float(w), float(h))
    except ValueError:
        size = None
    if not sep or size is None or not all(math.isfinite(v) and v > 0 for v in size):
        raise UserError(f"screen={spec!r}", "--screen", "WIDTHxHEIGHT in pixels, e.g. 1920x1080")
    return size


def _number(value: str, path: Path, row: int, column: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not math.isfinite(v):
        raise UserError(f"{column}={value!r} at row {row} (line {row + 1}) is not a finite number", str(path),
                        f"numbers in column {column!r}")
    return v


def read_log(path: str | Path, columns: dict[str, str]) -> Log:
    """Parse and check one CSV log (see the module docstring); errors name the file and the row."""
    path = Path(path)
    if not path.is_file():
        raise UserError("log file does not exist", f"--input {path}", "a CSV pointer log")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError("unreadable log file", str(path), f"a UTF-8 CSV file ({e})")
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise UserError("empty log: no header row", str(path), "a CSV header naming " + ", ".join(
            repr(c) for c in columns.values() if c))
    header = [h.strip() for h in rows[0]]
    wanted = {role: name for role, name in columns.items() if name}
    missing = [name for name in wanted.values() if name not in header]
    if missing:
        raise UserError(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}", str(path),
                        f"a header with {', '.join(map(repr, wanted.values()))} (found {', '.join(map(repr, header))}; "
                        "set names with --columns)")
    if len(rows) == 1:
        raise UserError("empty log: a header but no data rows", str(path), "at least one event row")
    idx = {role: header.index(name) for role, name in wanted.items()}
    n = len(rows) - 1
    t, x, y, press = np.empty(n), np.empty(n), np.empty(n), np.zeros(n, dtype=bool)
    state_values = [r[idx["state"]].strip() if idx["state"] < len(r) else "" for r in rows[1:]]
    numeric_state = all(_is_number(v) for v in state_values)
    pressed = False
    for i, r in enumerate(rows[1:]):
        row = i + 1  # data rows count from 1; the header is line 1, so data row k is line k + 1
        if len(r) < len(header):
            raise UserError(f"row {row} (line {row + 1}) has {len(r)} fields, the header {len(header)}", str(path),
                            "every row as long as the header")
        t[i] = _number(r[idx["time"]], path, row, wanted["time"])
        x[i] = _number(r[idx["x"]], path, row, wanted["x"])
        y[i] = _number(r[idx["y"]], path, row, wanted["y"])
        if i and t[i] < t[i - 1]:
            raise UserError(f"timestamp {r[idx['time']].strip()} at row {row} (line {row + 1}) is earlier than the "
                            f"previous row's {t[i - 1]:g}", str(path), "timestamps that never decrease")
        state = state_values[i]
        if numeric_state:
            pressed = float(state) != 0
        else:
            button = r[idx["button"]].strip().lower() if "button" in idx else ""
            s = state.lower()
            if button not in WHEEL_BUTTONS:
                if s in PRESS_STATES:
                    pressed = True
                elif s in RELEASE_STATES:
                    pressed = False
        press[i] = pressed
    return Log(path, t, x, y, press)


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def split_segments(t: np.ndarray, split_gap_s: float) -> list[slice]:
    """Index ranges of the event stream between gaps longer than ``split_gap_s``."""
    cuts = np.flatnonzero(np.diff(t) > split_gap_s) + 1
    bounds = np.concatenate([[0], cuts, [len(t)]])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def resample_segment(t: np.ndarray, x: np.ndarray, y: np.ndarray, press: np.ndarray, rate_hz: float,
                     interp_gap_s: float) -> tuple[np.ndarray, np.ndarray]:
    """One segment on the grid t0 + k / rate_hz (k = 0 .. while <= the last event): ``(times, [K, 3] x, y, press)``.

    Equal timestamps keep their last event. Position: held at the last event at or before each grid
    time, linearly interpolated toward the next event when the two are at most ``interp_gap_s`` apart.
    Press: held; a press that no grid time falls inside marks the grid time nearest to its start.
    """
    # Contacts from the raw events (before equal timestamps merge, so a press and release logged at
    # the same instant still count): [start, end) times.
    starts = np.flatnonzero(press & ~np.concatenate([[False], press[:-1]]))
    ends = np.flatnonzero(~press & np.concatenate([[False], press[:-1]]))
    contacts = [(t[a], t[ends[ends > a][0]] if np.any(ends > a) else math.inf) for a in starts]
    # Among equal timestamps the last row is the state after all of them.
    keep = np.concatenate([t[1:] != t[:-1], [True]])
    t, x, y, press = t[keep], x[keep], y[keep], press[keep]
    steps = int(math.floor((t[-1] - t[0]) * rate_hz + 1e-9)) + 1
    grid = t[0] + np.arange(steps) / rate_hz
    i = np.clip(np.searchsorted(t, grid, side="right") - 1, 0, len(t) - 1)   # last event at or before
    j = np.minimum(i + 1, len(t) - 1)
    dt = t[j] - t[i]
    w = np.where((dt > 0) & (dt <= interp_gap_s), (grid - t[i]) / np.where(dt > 0, dt, 1), 0.0)
    w = np.clip(w, 0.0, 1.0)
    out = np.empty((steps, 3))
    out[:, 0] = x[i] + w * (x[j] - x[i])
    out[:, 1] = y[i] + w * (y[j] - y[i])
    out[:, 2] = press[i]
    # Presses shorter than a step: mark the grid time nearest to where they start.
    for t_start, t_end in contacts:
        if not np.any((grid >= t_start) & (grid < t_end)):
            out[int(np.clip(round((t_start - t[0]) * rate_hz), 0, steps - 1)), 2] = 1.0
    return grid, out


@dataclass
class FileReport:
    file: str
    events: int
    segments: int
    steps: int
    windows: int
    dropped_steps: int
    clipped_steps: int
    output: str | None = None


def import_logs(inputs: list[str | Path], out_dir: str | Path, settings: ImportSettings, *,
                overwrite: bool = False, log=print) -> dict:
    """Import every log into ``out_dir`` in the dataset format; returns the metadata written."""
    s = settings
    for name, v in (("--rate", s.rate_hz), ("--seq_len", s.seq_len), ("--split_gap", s.split_gap_s)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise UserError(f"{name.lstrip('-')}={v}", name, "a positive number")
    if s.seq_len < 4 or int(s.seq_len) != s.seq_len:
        raise UserError(f"seq_len={s.seq_len}", "--seq_len", "an integer >= 4")
    if not inputs:
        raise UserError("no input logs", "--input", "one or more CSV files")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError("output path is a file", f"--out_dir {out}", "a new or empty directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError("output directory is not empty", f"--out_dir {out}",
                        "a new or empty directory, or --overwrite to replace it whole")
    from trainkit.runsafety import check_replaceable, swap_in, write_output_marker

    check_replaceable(out, flag="--overwrite")   # only a folder this tool wrote; never ., ~, / or a cwd ancestor
    logs = [read_log(p, s.columns) for p in inputs]   # every log is checked before anything is written
    if s.screen is not None:
        width, height = s.screen
        screen_source = "given (--screen)"
    else:
        width = max(float(lg.x.max()) for lg in logs) + 1
        height = max(float(lg.y.max()) for lg in logs) + 1
        screen_source = "inferred from the logs' extent (max x + 1, max y + 1)"
    # Progress lines are printed once the import has succeeded, so a failure stays one error line.
    lines = [f"screen {width:g}x{height:g} px, {screen_source}"]
    if any(float(min(lg.x.min(), lg.y.min())) < 0 for lg in logs):
        lines.append("note: negative coordinates are clipped to 0")

    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    reports: list[FileReport] = []
    total = 0
    try:
        for k, lg in enumerate(logs):
            windows, steps, dropped, clipped = [], 0, 0, 0
            segments = split_segments(lg.t, s.split_gap_s)
            for seg in segments:
                _, arr = resample_segment(lg.t[seg], lg.x[seg], lg.y[seg], lg.press[seg], s.rate_hz, s.interp_gap_s)
                arr[:, 0] /= width
                arr[:, 1] /= height
                outside = (arr[:, :2] < 0) | (arr[:, :2] > 1)
                clipped += int(outside.any(axis=1).sum())
                arr[:, :2] = np.clip(arr[:, :2], 0.0, 1.0)
                steps += len(arr)
                n_win = len(arr) // s.seq_len
                dropped += len(arr) - n_win * s.seq_len
                if n_win:
                    windows.append(arr[:n_win * s.seq_len])
            rep = FileReport(str(lg.path), len(lg.t), len(segments), steps, 0, dropped, clipped)
            if windows:
                data = np.concatenate(windows).astype(np.float32)
                rep.windows = len(data) // s.seq_len
                name = f"{k:03d}_{_safe_stem(lg.path)}_actions.npy"
                np.save(tmp / name, data)
                rep.output = name
                total += rep.windows
            reports.append(rep)
            lines.append(f"{lg.path}: {rep.events} events, {rep.segments} segments, {rep.steps} steps at {s.rate_hz:g} Hz "
                f"-> {rep.windows} windows of {s.seq_len} ({rep.dropped_steps} steps dropped, "
                f"{rep.clipped_steps} clipped to the screen)")
        if total == 0:
            raise UserError(f"no window of {s.seq_len} steps in any log", "--input",
                            f"segments of at least {s.seq_len / s.rate_hz:.2f} s without a gap over "
                            f"{s.split_gap_s:g} s (or a smaller --seq_len / larger --split_gap)")
        meta = {
            "seq_len": int(s.seq_len),
            "num_sequences": total,
            "rate_hz": float(s.rate_hz),
            "screen": [width, height],
            "screen_source": screen_source,
            "split_gap_s": s.split_gap_s,
            "interp_gap_s": s.interp_gap_s,
            "columns": s.columns,
            "generator": "action_ddim.importlog.import_logs",
            "files": [asdict(r) for r in reports],
        }
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        for line in lines:
            log(line)
        write_output_marker(tmp, "action-ddim import-log")
        out.parent.mkdir(parents=True, exist_ok=True)
        swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {total} sequences of {s.seq_len} steps to {out}")
    return meta


def _safe_stem(path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)
    return stem[:60] or "log"


__all__ = ["ImportSettings", "import_logs", "read_log", "resample_segment", "split_segments", "parse_columns",
           "parse_screen", "BALABIT_COLUMNS"]
