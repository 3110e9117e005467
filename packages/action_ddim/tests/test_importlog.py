"""`action-ddim import-log`: resampling, normalisation, splitting, windows, and one-line errors."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from action_ddim.cli import main
from action_ddim.data import ActionDataset
from action_ddim.importlog import ImportSettings, import_logs, read_log, resample_segment, split_segments

HEADER = "record timestamp,client timestamp,button,state,x,y"


def _write(path, rows, header=HEADER):
    path.write_text("\n".join([header] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def _move(t, x, y):
    return (t, t, "NoButton", "Move", x, y)


def _error(args):
    result = CliRunner().invoke(main, ["import-log"] + args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def test_resampling_holds_interpolates_and_keeps_quick_clicks():
    # Events every 0.01 s along a line, then a 0.5 s rest (held, not interpolated), then a click that
    # lasts 10 ms (shorter than a 1/30 s step).
    t = np.concatenate([np.arange(0, 0.5, 0.01), [1.0, 1.005, 1.015, 1.2]])
    x = np.concatenate([np.arange(50) * 2.0, [300.0, 300.0, 300.0, 300.0]])
    y = np.zeros(len(t))
    press = np.zeros(len(t), dtype=bool)
    press[-3] = True  # Pressed at 1.005, Released at 1.015
    grid, out = resample_segment(t, x, y, press, rate_hz=30, interp_gap_s=0.1)
    assert np.allclose(np.diff(grid), 1 / 30) and grid[0] == 0 and grid[-1] <= 1.2
    moving = grid < 0.49
    assert np.allclose(out[moving, 0], grid[moving] * 200)  # linear interpolation between close events
    resting = (grid > 0.5) & (grid < 1.0)
    assert np.all(out[resting, 0] == 98.0)  # held at the last event through the 0.5 s gap
    assert out[:, 2].sum() == 1 and out[int(round(1.005 * 30)), 2] == 1  # the 10 ms click survives


def test_split_on_long_gaps_windows_and_normalisation(tmp_path):
    rows = [_move(round(i * 0.02, 3), 100 + i, 50) for i in range(150)]         # 3 s of motion
    rows += [_move(round(10 + i * 0.02, 3), 400, 200 + i) for i in range(200)]  # 7 s later: 4 s more
    rows[20] = (0.4, 0.4, "Left", "Pressed", 120, 50)
    rows[30] = (0.6, 0.6, "Left", "Drag", 130, 50)
    rows[40] = (0.8, 0.8, "Left", "Released", 140, 50)
    log = _write(tmp_path / "session_1", rows)
    assert [(s.start, s.stop) for s in split_segments(read_log(log, ImportSettings().columns).t, 2.0)] == \
        [(0, 150), (150, 350)]
    meta = import_logs([log], tmp_path / "out", ImportSettings(seq_len=16, screen=(800, 400)), log=lambda *_: None)
    f = meta["files"][0]
    assert f["segments"] == 2 and f["steps"] == 90 + 120 and f["windows"] == 5 + 7
    assert f["dropped_steps"] == (90 - 80) + (120 - 112)
    assert meta["screen"] == [800, 400] and meta["rate_hz"] == 30 and meta["seq_len"] == 16
    ds = ActionDataset(tmp_path / "out")  # the loader reads it (metadata.json gives seq_len)
    assert len(ds) == 12 and ds.seq_len == 16
    first = ds.raw(0)
    assert first[0, 0] == pytest.approx(100 / 800) and first[:, 1] == pytest.approx(50 / 400)
    press = np.concatenate([ds.raw(0), ds.raw(1)])[:, 2]
    assert np.flatnonzero(press).tolist() == list(range(12, 24))  # pressed from 0.4 s to 0.8 s
    assert np.all(np.diff(ds.raw(5)[:, 1]) > 0)  # the second segment starts a new window
    # Screen inferred: the smallest standard screen holding the positions (x <= 400, y <= 399): 640x480.
    meta2 = import_logs([log], tmp_path / "out2", ImportSettings(seq_len=16), log=lambda *_: None)
    assert meta2["screen"] == [640, 480] and "inferred" in meta2["screen_source"]


def test_cli_touch_log_with_custom_columns(tmp_path):
    rows = [(i * 10, 0.5 * i, 100, int(20 <= i < 40)) for i in range(200)]  # ms clock, 0/1 touch state
    log = _write(tmp_path / "touch.csv", [(t / 1000, x, y, p) for t, x, y, p in rows], header="ts,px,py,touch")
    result = CliRunner().invoke(main, ["import-log", "--input", str(log), "--out_dir", str(tmp_path / "o"),
                                       "--seq_len", "20", "--rate", "50", "--screen", "200x200",
                                       "--columns", "time=ts,x=px,y=py,state=touch,button="])
    assert result.exit_code == 0, result.output
    assert "screen 200x200 px, given" in result.output
    meta = json.loads((tmp_path / "o" / "metadata.json").read_text())
    arr = np.load(tmp_path / "o" / meta["files"][0]["output"]).reshape(-1, 20, 3)
    assert arr.shape == (5, 20, 3)  # 1.99 s at 50 Hz = 100 steps
    assert arr[..., 2].sum() == 10  # pressed from 0.2 s to 0.4 s
    again = _error(["--input", str(log), "--out_dir", str(tmp_path / "o")])
    assert "not empty" in again and "--overwrite" in again


@pytest.mark.parametrize("content,needles", [
    ("", ["empty log", "bad.csv"]),
    (HEADER + "\n", ["no data rows", "bad.csv"]),
    ("record timestamp,button,state,x,y\n0,NoButton,Move,1,2\n", ["missing column 'client timestamp'", "bad.csv"]),
    (HEADER + "\n0.1,0.1,NoButton,Move,1,2\n0.2,0.2,NoButton,Move,abc,2\n", ["x='abc' at row 2 (line 3)", "bad.csv"]),
    (HEADER + "\n0.1,0.1,NoButton,Move,1\n", ["row 1 (line 2) has 5 fields", "bad.csv"]),
])
def test_bad_logs_are_one_line_errors_naming_file_and_row(tmp_path, content, needles):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    line = _error(["--input", str(bad), "--out_dir", str(tmp_path / "o")])
    for n in needles:
        assert n in line, (n, line)
    assert not (tmp_path / "o").exists()  # nothing written


def test_bad_flags(tmp_path):
    log = _write(tmp_path / "a.csv", [_move(i * 0.01, i, i) for i in range(10)])
    assert "--screen" in _error(["--input", str(log), "--out_dir", str(tmp_path / "o"), "--screen", "wide"])
    assert "--rate" in _error(["--input", str(log), "--out_dir", str(tmp_path / "o"), "--rate", "0"])
    assert "--columns" in _error(["--input", str(log), "--out_dir", str(tmp_path / "o"), "--columns", "t=ts"])
    assert "no window of 64 steps" in _error(["--input", str(log), "--out_dir", str(tmp_path / "o")])
    assert "does not exist" in _error(["--input", str(tmp_path / "nope.csv"), "--out_dir", str(tmp_path / "o")])


def test_hand_written_balabit_session(tmp_path):
    """A session in the Balabit layout (moves, clicks, a double click, a drag, a flick, scroll rows,
    equal timestamps, a 5.5 s pause) imports into windows whose gestures are the ones recorded."""
    from pathlib import Path

    from action_ddim.metrics import detect_gestures

    log = Path(__file__).parent / "data" / "balabit_session.csv"
    meta = import_logs([log], tmp_path / "o", ImportSettings(seq_len=32, screen=(1920, 1080)), log=lambda *_: None)
    f = meta["files"][0]
    assert (f["events"], f["segments"], f["steps"], f["windows"], f["dropped_steps"]) == (106, 2, 228, 7, 4)
    seqs = np.load(tmp_path / "o" / f["output"]).reshape(-1, 3)
    first, second = seqs[:128], seqs[128:]  # the 5.5 s pause splits the session; 4 steps dropped at its end
    kinds = lambda s: [k for k in detect_gestures(s) if k != "idle"]  # noqa: E731
    assert kinds(first) == ["tap", "drag", "tap", "tap"]  # the right click at 4.34 s falls in the dropped tail
    assert kinds(second) == ["long_press", "swipe"]
    assert seqs[:, 0].max() == pytest.approx(1043 / 1920) and seqs[:, 1].max() == pytest.approx(694 / 1080)
    # The fixture's wheel rows are at (0, 0), as Balabit logs them: they never move the pointer.
    assert f["dropped_rows"]["scroll_rows"] == 3 and seqs[:, :2].min() > 0.1
    assert np.abs(np.diff(seqs[:128, :2], axis=0)).max() < 0.1  # no teleport to the corner and back


def _real_like_rows():
    """A Balabit-like log: moves, a sentinel row, wheel rows at (0, 0), a row back in time."""
    rows = [_move(round(i * 0.02, 3), 300 + 2 * i, 200 + i) for i in range(200)]
    rows[50] = (1.0, 1.0, "NoButton", "Move", 65535, 65535)       # the logger's sentinel
    for i in (80, 81, 82):
        rows[i] = (rows[i][0], rows[i][1], "Scroll", "Down", 0, 0)  # wheel rows at the origin
    rows[120] = (1.5, 1.5, "NoButton", "Move", 500, 300)           # earlier than row 119 (2.38 s)
    rows[150] = (3.0, 3.0, "NoButton", "Move", 5000, 300)          # off a 1920x1080 screen
    return rows


def test_invalid_rows_are_dropped_and_counted_never_clipped(tmp_path):
    import gzip

    log = tmp_path / "user3" / "session_42.csv.gz"
    log.parent.mkdir()
    with gzip.open(log, "wt") as f:  # .csv.gz is read as is
        f.write("\n".join([HEADER] + [",".join(map(str, r)) for r in _real_like_rows()]) + "\n")
    meta = import_logs([log], tmp_path / "o", ImportSettings(seq_len=16, screen=(1920, 1080)), log=lambda *_: None)
    assert meta["dropped_rows"] == {"time_backwards": 1, "sentinel": 1, "off_screen": 1, "scroll_rows": 3,
                                    "scroll_before_first_position": 0}
    assert meta["files"][0]["user"] == "user3" and meta["files"][0]["session"] == "session_42"
    arr = np.load(tmp_path / "o" / meta["files"][0]["output"])
    # Nothing at a corner or an edge (no clipping), and no step longer than the log's own moves (~0.003).
    assert arr[:, 0].min() > 0.1 and arr[:, 0].max() < 0.5 and arr[:, 1].max() < 0.5
    assert np.abs(np.diff(arr[:, :2], axis=0)).max() < 0.01
    on_disk = json.loads((tmp_path / "o" / "metadata.json").read_text())
    assert on_disk["dropped_rows"]["sentinel"] == 1 and "sentinel" in on_disk["dropped_rows_why"]
    # Inferred screen: the sentinel and wheel rows do not count; the off-screen x = 5000 is 1 of 197 (> 0.1 %),
    # so it widens the inferred screen past every standard size to the extent.
    meta2 = import_logs([log], tmp_path / "o2", ImportSettings(seq_len=16), log=lambda *_: None)
    assert meta2["screen"][1] < 1000 and meta2["dropped_rows"]["sentinel"] == 1


def test_screen_inference_ignores_rare_outliers():
    from action_ddim.importlog import Log, infer_screen

    x = np.concatenate([np.linspace(0, 1270, 5000), [1900.0]])  # one stray point in 5001 (< 0.1 %)
    y = np.linspace(0, 790, len(x))
    lg = Log(__import__("pathlib").Path("u/s.csv"), np.arange(len(x)) * 0.01, x, y, np.zeros(len(x), bool))
    w, h, why = infer_screen([lg])
    assert (w, h) == (1280, 800) and "99.9%" in why


def test_user_split_stride_and_sessions_kept_apart(tmp_path):
    logs = []
    for user, sess in (("userA", "session_1"), ("userA", "session_2"), ("userB", "session_3")):
        d = tmp_path / "in" / user
        d.mkdir(parents=True, exist_ok=True)
        base = {"session_1": 100, "session_2": 600, "session_3": 1100}[sess]
        logs.append(_write(d / f"{sess}.csv", [_move(round(i * 0.02, 3), base + i, 100) for i in range(100)]))
    s = ImportSettings(seq_len=16, screen=(1920, 1080), stride=8, val_users=("userB",))
    meta = import_logs(logs, tmp_path / "o", s, log=lambda *_: None)
    assert meta["splits"] == {"train": 2 * 6, "val": 6}  # 60 steps per session: windows at 0, 8, ..., 40
    tr = ActionDataset(tmp_path / "o" / "train")
    va = ActionDataset(tmp_path / "o" / "val")
    assert len(tr) == 12 and len(va) == 6
    assert np.allclose(tr.raw(1)[0], tr.raw(0)[8])  # stride 8: the next window starts 8 steps later
    # Sessions never share a window: every window's x stays within its own session's range.
    for i in range(len(tr)):
        xs = tr.raw(i)[:, 0] * 1920
        assert (xs.max() < 600) or (xs.min() >= 600)
    assert va.raw(0)[0, 0] * 1920 == pytest.approx(1100)
    with pytest.raises(Exception, match="split import"):  # the root would mix held-out users into training
        ActionDataset(tmp_path / "o")
    # By session name, with or without "session_".
    meta2 = import_logs(logs, tmp_path / "o2", ImportSettings(seq_len=16, screen=(1920, 1080), val_sessions=("2",)),
                        log=lambda *_: None)
    assert meta2["splits"] == {"train": 2 * 3, "val": 3}  # stride = seq_len: 60 // 16 windows per session
    assert "userB" in _error(["--input", str(logs[0]), "--out_dir", str(tmp_path / "o3"), "--val_users", "userB"])
