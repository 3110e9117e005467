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
    # Screen inferred from the extent: max x + 1 = 401, max y + 1 = 400.
    meta2 = import_logs([log], tmp_path / "out2", ImportSettings(seq_len=16), log=lambda *_: None)
    assert meta2["screen"] == [401, 400] and "inferred" in meta2["screen_source"]


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
    (HEADER + "\n0.1,0.1,NoButton,Move,1,2\n0.2,0.2,NoButton,Move,1,2\n0.15,0.15,NoButton,Move,1,2\n",
     ["timestamp 0.15 at row 3 (line 4)", "earlier", "bad.csv"]),
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
