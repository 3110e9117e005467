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

Logs may be gzipped (``*.csv.gz`` is read as is).

What the import does, per file:
1. Rows are parsed and checked: every named column present, numbers where numbers are expected.
2. Invalid rows are dropped and counted (``metadata.json`` ``dropped_rows``), never clipped: a
   timestamp earlier than one already seen, the logger's ``65535`` sentinel, a position off the
   screen. Wheel rows (``button`` ``Scroll``/``Wheel``; Balabit logs them at x = y = 0) are not
   positions: the pointer stays where it was.
3. The screen is given (``--screen``) or inferred as the smallest standard resolution that holds
   99.9 % of the valid positions (printed and recorded).
4. The event stream is cut where no event arrives for more than ``split_gap_s`` seconds (a long
   idle gap, or a pause in the recording): each piece becomes its own segment.
5. Each segment is resampled at ``rate_hz`` on the grid t0 + k / rate_hz. Mouse logs record an
   event only when something changes, so the pointer rests at the last event's position until the
   next one: the position is held, and linearly interpolated only between events closer than
   ``interp_gap_s``. Press is held the same way; a press shorter than one step still marks the
   step nearest to its start, so quick clicks survive the resampling.
6. Coordinates are divided by the screen size.
7. Segments are cut into windows of ``seq_len`` steps starting every ``stride`` steps (default
   ``seq_len``: non-overlapping); steps no window covers are counted as dropped.

Output: ``NNN_<user>_<session>_actions.npy`` (float32 ``[N*seq_len, 3]``) per input file with at
least one window (sessions never share a file, so windows never span two sessions), and
``metadata.json`` with ``seq_len``, ``rate_hz``, the screen size and how it was found, the column
names, per-file counts (user = the folder holding the log, session = its name) and dropped rows.
``--val_users`` / ``--val_sessions`` write ``train/`` and ``val/`` under ``out_dir`` instead.
"""

from __future__ import annotations

import csv
import gzip
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
SENTINEL = 65535   # Balabit's logger writes 65535,65535 when the pointer leaves the recorded window


@dataclass
class ImportSettings:
    rate_hz: float = 30.0          # the generator's rate, so imported data and the default data agree
    seq_len: int = 64
    screen: tuple[float, float] | None = None   # (width, height) in pixels; None = infer from the logs
    split_gap_s: float = 2.0       # no event for longer than this splits the log into segments
    interp_gap_s: float = 0.1      # interpolate positions only between events closer than this
    columns: dict[str, str] = field(default_factory=lambda: dict(BALABIT_COLUMNS))
    stride: int | None = None      # steps between window starts; None = seq_len (non-overlapping)
    val_users: tuple[str, ...] = ()     # logs in these folders (Balabit: userN) go to out_dir/val
    val_sessions: tuple[str, ...] = ()  # logs with these names (with or without "session_") go to out_dir/val


@dataclass
class Log:
    """One parsed log: event times (s), positions (px) and press state after each event."""

    path: Path
    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    press: np.ndarray
    # Per row: a wheel event (its x, y are not a position: Balabit logs them at 0, 0), the logger's
    # out-of-window sentinel, and a timestamp earlier than one already seen. None = no such rows.
    scroll: np.ndarray | None = None
    sentinel: np.ndarray | None = None
    backwards: np.ndarray | None = None

    def valid_position(self) -> np.ndarray:
        """Rows whose x, y are a pointer position on some screen (before the screen is known)."""
        bad = np.zeros(len(self.t), dtype=bool)
        for m in (self.scroll, self.sentinel, self.backwards):
            if m is not None:
                bad |= m
        return ~bad & (self.x >= 0) & (self.y >= 0)

    @property
    def user(self) -> str:
        return self.path.parent.name

    @property
    def session(self) -> str:
        return session_name(self.path)


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
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as e:
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
    scroll, backwards = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    latest = -math.inf
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
        # A row earlier than one already seen is dropped (and counted), never reordered: its place in the
        # stream is unknown. Equal timestamps are fine.
        backwards[i] = t[i] < latest
        latest = max(latest, t[i])
        state = state_values[i]
        if numeric_state:
            pressed = float(state) != 0
        else:
            button = r[idx["button"]].strip().lower() if "button" in idx else ""
            s = state.lower()
            scroll[i] = button in WHEEL_BUTTONS
            if button not in WHEEL_BUTTONS:
                if s in PRESS_STATES:
                    pressed = True
                elif s in RELEASE_STATES:
                    pressed = False
        press[i] = pressed
    sentinel = (x >= SENTINEL) | (y >= SENTINEL)
    return Log(path, t, x, y, press, scroll=scroll, sentinel=sentinel, backwards=backwards)


def session_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".csv", ".txt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def clean_log(lg: Log, width: float, height: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """The event stream without invalid rows: ``(t, x, y, press, dropped counts)``.

    Dropped (never clipped): rows with an earlier timestamp than one already seen, the logger's
    sentinel position, and positions off the ``width`` x ``height`` screen. Wheel rows are not
    positions: they keep the last position (and their time and press state); wheel rows before the
    first position are dropped. Press state was computed over every row, so a dropped row's press or
    release still shows from the next kept row on.
    """
    n = len(lg.t)
    zero = np.zeros(n, dtype=bool)
    scroll = lg.scroll if lg.scroll is not None else zero
    sentinel = (lg.sentinel if lg.sentinel is not None else zero) & ~scroll
    backwards = lg.backwards if lg.backwards is not None else zero
    off = ~scroll & ~sentinel & ((lg.x < 0) | (lg.y < 0) | (lg.x > width) | (lg.y > height))
    keep = ~backwards & ~sentinel & ~off
    has_pos = keep & ~scroll
    # Forward-fill wheel rows from the last kept position.
    last = np.maximum.accumulate(np.where(has_pos, np.arange(n), -1))
    orphan = keep & scroll & (last < 0)
    keep &= ~orphan
    src = np.where(has_pos, np.arange(n), last)[keep]
    counts = {"time_backwards": int(backwards.sum()), "sentinel": int((sentinel & ~backwards).sum()),
              "off_screen": int((off & ~backwards).sum()), "scroll_rows": int(scroll.sum()),
              "scroll_before_first_position": int(orphan.sum())}
    return lg.t[keep], lg.x[src], lg.y[src], lg.press[keep], counts


# Common screen sizes (px), smallest area first: the inferred screen is the first that covers
# SCREEN_COVER of the positions in x and in y.
STANDARD_SCREENS = sorted([(640, 480), (800, 600), (1024, 768), (1280, 720), (1280, 800), (1280, 1024),
                           (1366, 768), (1440, 900), (1600, 900), (1600, 1200), (1680, 1050), (1920, 1080),
                           (1920, 1200), (2560, 1440), (2560, 1600), (3840, 2160)], key=lambda s: (s[0] * s[1], s))
SCREEN_COVER = 0.999


def infer_screen(logs: list[Log]) -> tuple[float, float, str]:
    """The smallest standard screen holding ``SCREEN_COVER`` of the valid positions (else their extent)."""
    xs = np.concatenate([lg.x[lg.valid_position()] for lg in logs])
    ys = np.concatenate([lg.y[lg.valid_position()] for lg in logs])
    if not len(xs):
        raise UserError("no valid pointer position in any log", "--input",
                        "rows with x, y >= 0 that are not wheel or sentinel rows")
    qx, qy = float(np.quantile(xs, SCREEN_COVER)), float(np.quantile(ys, SCREEN_COVER))
    for w, h in STANDARD_SCREENS:
        if qx <= w - 1 and qy <= h - 1:
            return float(w), float(h), (f"inferred: the smallest standard screen holding {SCREEN_COVER:.1%} of "
                                        f"{len(xs)} positions (x <= {qx:g}, y <= {qy:g} px)")
    return float(xs.max() + 1), float(ys.max() + 1), "inferred from the positions' extent (max x + 1, max y + 1)"


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
    user: str
    session: str
    split: str
    events: int
    segments: int
    steps: int
    windows: int
    dropped_steps: int
    dropped_rows: dict = field(default_factory=dict)
    output: str | None = None


def _split_of(lg: Log, val_users: set[str], val_sessions: set[str]) -> str:
    sid = lg.session
    short = sid[len("session_"):] if sid.startswith("session_") else sid
    return "val" if (lg.user in val_users or sid in val_sessions or short in val_sessions) else "train"


def import_logs(inputs: list[str | Path], out_dir: str | Path, settings: ImportSettings, *,
                overwrite: bool = False, log=print) -> dict:
    """Import every log into ``out_dir`` in the dataset format; returns the metadata written.

    With ``settings.val_users`` / ``val_sessions`` the output is ``out_dir/train`` and ``out_dir/val``
    (each a dataset directory with its own metadata.json; one screen for both), plus a summary
    ``out_dir/metadata.json`` that names the splits.
    """
    s = settings
    for name, v in (("--rate", s.rate_hz), ("--seq_len", s.seq_len), ("--split_gap", s.split_gap_s)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise UserError(f"{name.lstrip('-')}={v}", name, "a positive number")
    if s.seq_len < 4 or int(s.seq_len) != s.seq_len:
        raise UserError(f"seq_len={s.seq_len}", "--seq_len", "an integer >= 4")
    stride = s.seq_len if s.stride is None else s.stride
    if not (isinstance(stride, int) and 1 <= stride):
        raise UserError(f"stride={stride}", "--stride", "an integer >= 1 (steps between window starts)")
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
    val_users, val_sessions = set(s.val_users), set(s.val_sessions)
    split = bool(val_users or val_sessions)
    if split:
        users = {lg.user for lg in logs}
        sessions = {lg.session for lg in logs} | {lg.session[len("session_"):] for lg in logs}
        for flag, names, known in (("--val_users", val_users, users), ("--val_sessions", val_sessions, sessions)):
            unknown = sorted(names - known)
            if unknown:
                raise UserError(f"{', '.join(unknown)} not among the inputs", flag,
                                f"names from the inputs ({'the folder holding each log' if 'users' in flag else 'file names'}"
                                f": {', '.join(sorted(known)[:8])}{', ...' if len(known) > 8 else ''})")
        splits = {id(lg): _split_of(lg, val_users, val_sessions) for lg in logs}
        if "train" not in splits.values():
            raise UserError("every log is in the validation split", "--val_users/--val_sessions",
                            "at least one log left for training")
    else:
        splits = {id(lg): "" for lg in logs}
    if s.screen is not None:
        width, height = s.screen
        screen_source = "given (--screen)"
    else:
        width, height, screen_source = infer_screen(logs)
    # Progress lines are printed once the import has succeeded, so a failure stays one error line.
    lines = [f"screen {width:g}x{height:g} px, {screen_source}"]

    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    reports: list[FileReport] = []
    totals: dict[str, int] = {}
    dropped_total: dict[str, int] = {}
    try:
        for k, lg in enumerate(logs):
            t, x, y, press, drops = clean_log(lg, width, height)
            for key, v in drops.items():
                dropped_total[key] = dropped_total.get(key, 0) + v
            windows, steps, dropped = [], 0, 0
            segments = split_segments(t, s.split_gap_s) if len(t) else []
            for seg in segments:
                _, arr = resample_segment(t[seg], x[seg], y[seg], press[seg], s.rate_hz, s.interp_gap_s)
                arr[:, 0] /= width
                arr[:, 1] /= height
                # Only kept positions on the screen are interpolated, so this guards rounding alone.
                arr[:, :2] = np.clip(arr[:, :2], 0.0, 1.0)
                steps += len(arr)
                starts = range(0, len(arr) - s.seq_len + 1, stride)
                covered = (starts[-1] + s.seq_len) if len(starts) else 0
                dropped += len(arr) - covered
                windows.extend(arr[a:a + s.seq_len] for a in starts)
            part = splits[id(lg)]
            rep = FileReport(str(lg.path), lg.user, lg.session, part or "all", len(lg.t), len(segments), steps, 0,
                             dropped, drops)
            if windows:
                data = np.concatenate(windows).astype(np.float32)
                rep.windows = len(windows)
                name = f"{k:03d}_{_safe_stem(Path(lg.user + '_' + lg.session))}_actions.npy"
                (tmp / part).mkdir(parents=True, exist_ok=True)
                np.save(tmp / part / name, data)
                rep.output = str(Path(part) / name) if part else name
                totals[part] = totals.get(part, 0) + rep.windows
            reports.append(rep)
            lines.append(f"{lg.path}{f' [{part}]' if part else ''}: {rep.events} events, {rep.segments} segments, "
                         f"{rep.steps} steps at {s.rate_hz:g} Hz -> {rep.windows} windows of {s.seq_len} "
                         f"(stride {stride}; {rep.dropped_steps} steps dropped) | rows dropped: "
                         f"{drops['sentinel']} sentinel, {drops['off_screen']} off-screen, "
                         f"{drops['time_backwards']} time backwards; {drops['scroll_rows']} wheel rows held in place")
        if sum(totals.values()) == 0:
            raise UserError(f"no window of {s.seq_len} steps in any log", "--input",
                            f"segments of at least {s.seq_len / s.rate_hz:.2f} s without a gap over "
                            f"{s.split_gap_s:g} s (or a smaller --seq_len / larger --split_gap)")
        if split and not totals.get("val"):
            raise UserError("the validation split has no window", "--val_users/--val_sessions",
                            f"held-out logs with at least one {s.seq_len}-step window")
        base = {
            "seq_len": int(s.seq_len),
            "stride": int(stride),
            "rate_hz": float(s.rate_hz),
            "screen": [width, height],
            "screen_source": screen_source,
            "split_gap_s": s.split_gap_s,
            "interp_gap_s": s.interp_gap_s,
            "columns": s.columns,
            "generator": "action_ddim.importlog.import_logs",
            "dropped_rows_why": DROP_REASONS,
        }
        parts = sorted(totals) if split else [""]
        for part in parts:
            files = [r for r in reports if (r.split == part or not split)]
            d = {**base, "num_sequences": totals.get(part, 0),
                 "dropped_rows": _sum_drops(files), "files": [asdict(r) for r in files]}
            if split:
                d["split"] = part
                # Output paths relative to this split's folder.
                d["files"] = [{**f, "output": f["output"] and Path(f["output"]).name} for f in d["files"]]
            (tmp / part / "metadata.json").write_text(json.dumps(d, indent=2) + "\n")
        meta = {**base, "num_sequences": sum(totals.values()), "dropped_rows": dropped_total,
                "files": [asdict(r) for r in reports]}
        if split:
            meta["splits"] = {part: totals.get(part, 0) for part in ("train", "val")}
            meta["val_users"], meta["val_sessions"] = sorted(val_users), sorted(val_sessions)
            (tmp / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        lines.append(f"rows dropped in all: {dropped_total} (metadata.json)")
        for line in lines:
            log(line)
        write_output_marker(tmp, "action-ddim import-log")
        out.parent.mkdir(parents=True, exist_ok=True)
        swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    where = ", ".join(f"{n} in {out / p}" for p, n in sorted(totals.items())) if split else str(out)
    log(f"wrote {sum(totals.values())} sequences of {s.seq_len} steps: {where}")
    return meta


DROP_REASONS = {
    "time_backwards": "timestamp earlier than one already seen (dropped, not reordered)",
    "sentinel": f"x or y >= {SENTINEL}: the logger's 'pointer outside the window' marker",
    "off_screen": "position outside the screen (dropped, never clipped)",
    "scroll_rows": "wheel rows: not dropped; their x, y are ignored and the pointer stays where it was",
    "scroll_before_first_position": "wheel rows before any position (nothing to hold): dropped",
}


def _sum_drops(reports: list[FileReport]) -> dict[str, int]:
    total: dict[str, int] = {}
    for r in reports:
        for k, v in r.dropped_rows.items():
            total[k] = total.get(k, 0) + v
    return total


def _safe_stem(path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)
    return stem[:60] or "log"


__all__ = ["ImportSettings", "import_logs", "clean_log", "infer_screen", "read_log", "resample_segment", "split_segments", "parse_columns",
           "parse_screen", "BALABIT_COLUMNS"]
