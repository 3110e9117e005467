"""Floors held out the way the evaluation data is (audit M4) and best.pt across a --val_subset change (M3)."""
import json

import numpy as np
from click.testing import CliRunner

from action_ddim.cli import main
from action_ddim.data import ActionDataset
from action_ddim.evaluate import floor_split
from trainkit.checkpoint import load_checkpoint


def _dataset(root, users_sessions, n_per_file=20, L=8):
    files = []
    for k, (user, sess) in enumerate(users_sessions):
        name = f"{k:03d}_{user}_{sess}_actions.npy"
        arr = np.zeros((n_per_file * L, 3), np.float32)
        arr[:, 0] = k / 10  # a file's sequences are recognisable by x
        np.save(root / name, arr)
        files.append({"output": name, "user": user, "session": sess})
    (root / "metadata.json").write_text(json.dumps({"seq_len": L, "files": files}))
    return ActionDataset(root)


def test_floor_holds_out_whole_users_when_there_are_several(tmp_path):
    ds = _dataset(tmp_path, [("u1", "a"), ("u1", "b"), ("u2", "c"), ("u3", "d"), ("u4", "e")])
    ref, held, note = floor_split(ds, n=10)
    assert note.startswith("between-user floor")
    users = ds.sequence_groups()[0]
    assert set(users[held]).isdisjoint(users[ref])  # no user on both sides
    assert len(held) >= 10 and len(held) <= len(ds) // 2 and sorted(ref + held) == list(range(len(ds)))


def test_one_user_gets_a_between_session_floor_and_one_file_a_labelled_random_one(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ds = _dataset(tmp_path / "a", [("u1", "a"), ("u1", "b"), ("u1", "c")])
    ref, held, note = floor_split(ds, n=10)
    files = ds.sequence_groups()[0]
    assert note.startswith("between-session floor") and set(files[held]).isdisjoint(files[ref])
    one = _dataset(tmp_path / "b", [("u1", "a")])
    ref, held, note = floor_split(one, n=5)
    assert note.startswith("within-session floor") and len(held) == 10 and not set(ref) & set(held)


def test_resume_with_another_val_subset_restarts_best_ranking(tiny_data, tmp_path):
    run = tmp_path / "run"
    common = ["train", "--data_dir", str(tiny_data / "train"), "--val_data_dir", str(tiny_data / "val"),
              "--batch_size", "5", "--num_epochs", "2", "--d_model", "16", "--num_layers", "1", "--nhead", "2",
              "--num_inference_steps", "2", "--set", "train.num_gen_samples=0", "--plot_every", "100", "--quiet",
              "--save_dir", str(run), "--set", "train.fidelity_every=1", "--set", "train.fidelity_samples=8"]
    r = CliRunner().invoke(main, common + ["--set", "train.stop_after_epoch=1"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    # Item 4: the epoch line carries the cheap fidelity estimate beside the guide's metrics, under its own name.
    line = next(ln for ln in r.output.splitlines() if ln.startswith("epoch 1/2"))
    assert "val/mse" in line and "fidelity (8 samples): c2st" in line and "W1 speed" in line
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == 1
    r = CliRunner().invoke(main, ["train", "--resume", "auto", "--save_dir", str(run), "--val_subset", "2"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "best.pt ranking restarts" in r.output
    # Epoch 2 is the only epoch ranked on the new subset, so it is best.pt whatever its value.
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == 2
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum("progress/c2st" in r for r in rows) == 2  # one estimate per epoch, in the tracked scalars


def test_config_by_name_balabit(tmp_path):
    from action_ddim.config import Config, named_config
    from trainkit.config import load_config
    from trainkit.errors import UserError

    cfg = load_config(Config, named_config("balabit"))
    assert cfg.data.increment_scale == 20.0 and cfg.train.fidelity_every == 2 and cfg.data.data_dir is None
    try:
        named_config("no_such_recipe")
        raise AssertionError("accepted an unknown config name")
    except UserError as e:
        assert "balabit" in str(e) and "fidelity" in str(e)  # the error lists the shipped names


def test_samples_vs_real_speed_axis_is_not_set_by_one_teleport():
    import matplotlib.pyplot as plt

    from action_ddim.plots import plot_samples_vs_real

    rng = np.random.default_rng(0)
    real = np.zeros((8, 64, 3), np.float32)
    real[..., 0] = 0.3 + np.cumsum(rng.normal(0, 0.002, (8, 64)), axis=1)
    real[..., 1] = 0.5
    real[0, 30:, 0] = 0.95  # one jump of ~0.65 screen in a step (~20 screens/s at 30 Hz)
    fig = plot_samples_vs_real(real.copy(), real, rate_hz=30)
    tops = [ax.get_ylim()[1] for ax in fig.axes if ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > 0]
    plt.close(fig)
    assert tops and max(tops) < 5  # the 99th-percentile axis, not the jump's ~20 screens/s


def test_validation_on_the_training_directory_is_refused(tiny_data, tmp_path):
    r = CliRunner().invoke(main, ["train", "--data_dir", str(tiny_data / "train"), "--val_data_dir",
                                  str(tiny_data / "train" / "."), "--save_dir", str(tmp_path / "run")])
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "--val_data_dir" in lines[0] and "training directory" in lines[0]
    assert not (tmp_path / "run").exists()
