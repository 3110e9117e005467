"""The synthetic gesture generator: realistic statistics, on-disk format, determinism."""
import json

import numpy as np

from action_ddim.augmentation import generate_click_dataset, generate_sequence, generate_sequences, minimum_jerk
from action_ddim.metrics import press_run_lengths


def test_minimum_jerk_is_bell_shaped():
    s = minimum_jerk(101)
    v = np.diff(s)
    assert s[0] == 0 and abs(s[-1] - 1) < 1e-12
    assert abs(np.argmax(v) - 50) <= 1
    assert np.isclose(v.max() * 100, 1.875, atol=0.01)  # peak speed 1.875 A / D


def test_sequences_are_valid_and_deterministic():
    a = generate_sequences(300, seed=7)
    b = generate_sequences(300, seed=7)
    c = generate_sequences(300, seed=8)
    assert a.shape == (300, 64, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a[..., :2].min() >= 0 and a[..., :2].max() <= 1
    assert set(np.unique(a[..., 2])) <= {0.0, 1.0}
    rate = a[..., 2].mean()
    assert 0.15 < rate < 0.6  # presses are common but not the majority state
    # Every trace moves: taps are reached by aimed movements.
    assert (a[..., :2].std(axis=1).max(axis=-1) > 0.01).mean() > 0.95


def test_press_runs_and_speed_profiles_are_plausible():
    rng = np.random.default_rng(0)
    tap_like, long_like, peak_pos, n_moves = [], [], [], 0
    for _ in range(300):
        seq, events = generate_sequence(rng, return_events=True)
        for kind, start, end in events:
            if kind == "press" and end - start >= 2 and end < 64:
                (long_like if end - start >= 12 else tap_like).append(end - start)
            if kind == "move" and end - start >= 10 and end < 64 and start > 0:
                # Bell-shaped speed: the peak sits in the middle third, the ends are slow.
                p = seq[start - 1:end, :2]
                speed = np.linalg.norm(np.diff(p, axis=0), axis=1)
                peak_pos.append(np.argmax(speed) / (len(speed) - 1))
                assert speed[0] < 0.6 * speed.max() and speed[-1] < 0.6 * speed.max()
                n_moves += 1
    assert n_moves > 100
    assert 0.3 < np.median(peak_pos) < 0.7
    assert np.mean((np.array(peak_pos) > 0.2) & (np.array(peak_pos) < 0.8)) > 0.9
    assert set(tap_like) <= {2, 3, 4} and len(tap_like) > 50
    assert min(long_like) >= 12 and max(long_like) <= 24 and len(long_like) > 20
    runs = press_run_lengths(generate_sequences(300, seed=1)[..., 2])
    assert runs.min() >= 1 and np.median(runs) <= 12


def test_dataset_files_and_metadata(tmp_path):
    root = generate_click_dataset(tmp_path, num_train=30, num_val=12, seq_len=32, seed=3, sequences_per_file=20)
    train = sorted((root / "train").glob("*_actions.npy"))
    assert [f.name for f in train] == ["part000_actions.npy", "part001_actions.npy"]
    arr = np.concatenate([np.load(f) for f in train])
    assert arr.shape == (30 * 32, 3) and arr.dtype == np.float32
    meta = json.loads((root / "val" / "metadata.json").read_text())
    assert meta["seq_len"] == 32 and meta["num_sequences"] == 12
    val = np.load(root / "val" / "part000_actions.npy")
    assert not np.array_equal(val[:32], arr[:32])  # val is an independent stream


def test_val_stream_never_equals_another_seeds_train_stream():
    from action_ddim.augmentation import split_seed

    # Train data per seed is unchanged by the derived streams (same as the plain seed).
    assert np.array_equal(generate_sequences(3, split_seed(0, "train")), generate_sequences(3, 0))
    for seed in range(4):
        val = generate_sequences(3, split_seed(seed, "val"))
        for other in range(5):  # with "seed + 1" for val, seed 1's train equalled seed 0's val
            assert not np.array_equal(val, generate_sequences(3, split_seed(other, "train"))), (seed, other)


def test_generate_data_refuses_a_non_empty_target_and_replaces_it_whole(tmp_path):
    from click.testing import CliRunner

    from action_ddim.augmentation import generate_click_dataset
    from action_ddim.cli import main
    from action_ddim.data import ActionDataset

    out = tmp_path / "data"
    generate_click_dataset(out, num_train=12, num_val=3, seq_len=16, seed=0, sequences_per_file=5)
    assert len(list((out / "train").glob("*_actions.npy"))) == 3
    before = sorted(p.read_bytes() for p in out.rglob("*.npy"))

    args = ["generate-data", "--out_dir", str(out), "--num_train", "2", "--num_val", "2", "--seq_len", "32"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and refused.output.startswith("error: ") and "--replace" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert sorted(p.read_bytes() for p in out.rglob("*.npy")) == before  # untouched

    assert CliRunner().invoke(main, args + ["--replace"]).exit_code == 0
    train = ActionDataset(out / "train")
    assert len(train) == 2 and train.seq_len == 32  # no stale part001/part002 from the first generation
    assert sorted(p.name for p in (out / "train").iterdir()) == ["metadata.json", "part000_actions.npy"]
    assert not list(tmp_path.glob(".data.*"))  # no temporary folders left beside it

    # An output path that is a file, and --replace on a folder that is not a dataset: errors, nothing deleted.
    (tmp_path / "file").write_text("x")
    r = CliRunner().invoke(main, ["generate-data", "--out_dir", str(tmp_path / "file"), "--replace"])
    assert r.exit_code == 2 and "output path is a file" in r.output and (tmp_path / "file").read_text() == "x"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    r = CliRunner().invoke(main, ["generate-data", "--out_dir", str(tmp_path / "mine"), "--replace"])
    assert r.exit_code == 2 and "did not write" in r.output and (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_generate_data_replace_refuses_real_data_in_the_dataset_layout_and_the_cwd(tmp_path, monkeypatch):
    """Audit A1: a folder holding only train/ and val/ (the documented layout of users' real data) was deleted by
    --replace, also when it was the working directory or its ancestor. Now only generate-data's own output goes."""
    from click.testing import CliRunner

    from action_ddim.augmentation import generate_click_dataset
    from action_ddim.cli import main

    real = tmp_path / "real"
    (real / "train").mkdir(parents=True)
    (real / "val").mkdir()
    (real / "train" / "user7_actions.npy").write_text("rec")
    (real / "val" / "user9_actions.npy").write_text("v")
    small = ["--num_train", "2", "--num_val", "1", "--replace"]
    for cwd, target in ((tmp_path, str(real)), (real / "train", str(real)), (real / "train", ".."),
                        (real, ".")):
        monkeypatch.chdir(cwd)
        r = CliRunner().invoke(main, ["generate-data", "--out_dir", target] + small)
        assert r.exit_code == 2 and r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1, \
            (cwd, target, r.output)
        assert (real / "train" / "user7_actions.npy").read_text() == "rec"
        assert sorted(p.name for p in real.rglob("*")) == ["train", "user7_actions.npy", "user9_actions.npy", "val"]
    monkeypatch.chdir(tmp_path)
    # its own output (marker) and an older one (metadata.json of this generator, no marker) are still replaced
    own = tmp_path / "own"
    generate_click_dataset(own, num_train=2, num_val=1, seq_len=8)
    assert (own / ".trainkit_output").is_file()
    (own / ".trainkit_output").unlink()
    (own / "train" / "user7_actions.npy").write_text("rec")  # a pre-marker dataset with a user's file added
    r = CliRunner().invoke(main, ["generate-data", "--out_dir", str(own), "--seq_len", "8"] + small)
    assert r.exit_code == 2 and (own / "train" / "user7_actions.npy").read_text() == "rec", r.output
    (own / "train" / "user7_actions.npy").unlink()
    assert CliRunner().invoke(main, ["generate-data", "--out_dir", str(own), "--seq_len", "8"] + small).exit_code == 0
    assert (own / ".trainkit_output").is_file()
