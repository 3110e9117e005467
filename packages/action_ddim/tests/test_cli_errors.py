"""Every bad input is one `error: ...` line naming the culprit, with exit code 2 and no traceback."""
import time

import numpy as np
import pytest
from click.testing import CliRunner

from action_ddim.cli import main

from .conftest import write_actions


def _run(args, env=None):
    return CliRunner().invoke(main, args, env=env)


def _assert_user_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _good(n=2, L=64):
    from action_ddim.augmentation import generate_sequences

    return generate_sequences(n, seed=0).reshape(-1, 3)[: n * L]


@pytest.fixture
def val_dir(tmp_path):
    write_actions(tmp_path / "val" / "a_actions.npy", _good())
    return tmp_path / "val"


def _train(tmp_path, data_dir, val_dir):
    return _run(["train", "--data_dir", str(data_dir), "--val_data_dir", str(val_dir), "--save_dir",
                 str(tmp_path / "run"), "--num_epochs", "1", "--d_model", "16", "--nhead", "2", "--num_layers", "1"])


def test_missing_directory(tmp_path, val_dir):
    line = _assert_user_error(_train(tmp_path, tmp_path / "nope", val_dir), "does not exist", "nope")
    assert "--data_dir" in line


def test_empty_directory_and_no_matching_files(tmp_path, val_dir):
    (tmp_path / "empty").mkdir()
    _assert_user_error(_train(tmp_path, tmp_path / "empty", val_dir), "no *_actions.npy files", "empty")
    write_actions(tmp_path / "other" / "data.npy", _good())
    _assert_user_error(_train(tmp_path, tmp_path / "other", val_dir), "no *_actions.npy files", "other")


@pytest.mark.parametrize("case,needle", [
    ("columns", "wrong shape (128, 2)"),
    ("rows", "not a multiple of seq_len=64"),
    ("nan", "non-finite value"),
    ("inf", "non-finite value"),
    ("x_range", "outside [0, 1]"),
    ("press", "press=0.5"),
])
def test_bad_file_contents(tmp_path, val_dir, case, needle):
    arr = _good()
    if case == "columns":
        arr = arr[:, :2]
    elif case == "rows":
        arr = arr[:-3]
    elif case == "nan":
        arr[70, 1] = np.nan
    elif case == "inf":
        arr[5, 0] = np.inf
    elif case == "x_range":
        arr[3, 0] = 1.5
    elif case == "press":
        arr[9, 2] = 0.5
    bad = write_actions(tmp_path / "train" / "bad_actions.npy", arr)
    _assert_user_error(_train(tmp_path, tmp_path / "train", val_dir), needle, str(bad))


def test_bad_validation_file_is_named(tmp_path, val_dir):
    write_actions(tmp_path / "train" / "a_actions.npy", _good())
    bad = write_actions(tmp_path / "val2" / "b_actions.npy", _good()[:, :1])
    _assert_user_error(_train(tmp_path, tmp_path / "train", tmp_path / "val2"), str(bad))


def test_nhead_not_dividing_d_model_is_refused_before_any_work(tmp_path):
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    result = _run(["train", "--nhead", "3", "--d_model", "32", "--save_dir", str(tmp_path / "run")],
                  env={"ACTION_DDIM_CACHE": str(cache)})
    _assert_user_error(result, "d_model=32 is not divisible by nhead=3")
    assert time.perf_counter() - t0 < 5
    assert not cache.exists() and not (tmp_path / "run").exists()  # no dataset generated, no run dir


@pytest.mark.parametrize("args,needle", [
    (["--num_train_timesteps", "100", "--schedule", "linear"], "num_train_timesteps >= 1000"),
    (["--num_inference_steps", "2000"], "num_inference_steps=2000"),
    (["--lr", "-1"], "lr=-1"),
    (["--set", "model.d_modle=3"], "unknown config key 'model.d_modle'"),
    (["--set", "train.batch_size=abc"], "train.batch_size"),
    (["--device", "cuda:7"] , "cuda"),
])
def test_bad_flags(tmp_path, args, needle, monkeypatch):
    monkeypatch.setenv("ACTION_DDIM_CACHE", str(tmp_path / "cache"))
    if args[:2] == ["--device", "cuda:7"]:
        import torch

        if torch.cuda.device_count() > 7:
            pytest.skip("this machine has 8 GPUs")
        args = args + ["--data_dir", str(tmp_path), "--val_data_dir", str(tmp_path)]
    _assert_user_error(_run(["train", "--save_dir", str(tmp_path / "run")] + args), needle)


def test_only_one_data_dir(tmp_path, val_dir):
    _assert_user_error(_run(["train", "--data_dir", str(val_dir), "--save_dir", str(tmp_path / "r")]),
                       "--val_data_dir is missing")


def test_generate_data_and_checkpoint_errors(tmp_path):
    _assert_user_error(_run(["generate-data", "--out_dir", str(tmp_path), "--num_train", "0"]), "num_train=0")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    _assert_user_error(_run(["evaluate", "--checkpoint", str(tmp_path / "junk.pt"), "--data_dir", str(tmp_path)]),
                       "junk.pt")
    _assert_user_error(_run(["sample", "--checkpoint", str(tmp_path / "missing.pt"), "--num_samples", "2",
                             "--out", str(tmp_path / "s.npy")]), "missing.pt")


@pytest.mark.parametrize("command,flag,value", [
    ("evaluate", "--num_inference_steps", "0"),
    ("evaluate", "--num_inference_steps", "-2"),
    ("evaluate", "--seq_len", "0"),
    ("evaluate", "--num_gen_samples", "-1"),
    ("sample", "--num_inference_steps", "0"),
    ("sample", "--eta", "nan"),
    ("reconstruct", "--num_inference_steps", "0"),
])
def test_zero_or_negative_inference_options_are_errors_not_the_checkpoints_value(
        tiny_checkpoint, tiny_data, tmp_path, command, flag, value):
    # `0` used to mean "not given" (`x or default`) and -1 ended in a traceback; not given is None.
    src = sorted((tiny_data / "val").glob("*_actions.npy"))[0]
    extra = {"evaluate": ["--data_dir", str(tiny_data / "val")],
             "sample": ["--num_samples", "2", "--out", str(tmp_path / "s.npy")],
             "reconstruct": ["--input", str(src), "--out", str(tmp_path / "r.npy")]}[command]
    result = _run([command, "--checkpoint", str(tiny_checkpoint), *extra, flag, value])
    _assert_user_error(result, f"{flag.lstrip('-')}={value}", flag)
    assert not list(tmp_path.iterdir())  # nothing written


def test_train_lr_nan_is_an_error(tmp_path, tiny_data):
    for args, needle in ((["--lr", "nan"], "lr=nan"), (["--grad_clip", "inf"], "grad_clip=inf"),
                         (["--set", "train.min_lr_ratio=2"], "min_lr_ratio=2")):
        result = _run(["train", "--data_dir", str(tiny_data / "train"), "--val_data_dir", str(tiny_data / "val"),
                       "--save_dir", str(tmp_path / "run"), *args])
        _assert_user_error(result, needle)
    assert not (tmp_path / "run").exists()


def test_output_paths_that_cannot_be_written_are_errors(tiny_checkpoint, tiny_data, tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.npy").mkdir()
    src = sorted((tiny_data / "val").glob("*_actions.npy"))[0]
    for out, needle in ((tmp_path / "afile" / "s.npy", "is a file"), (tmp_path / "adir.npy", "is a directory")):
        _assert_user_error(_run(["sample", "--checkpoint", str(tiny_checkpoint), "--num_samples", "2",
                                 "--out", str(out)]), needle, "--out")
        _assert_user_error(_run(["reconstruct", "--checkpoint", str(tiny_checkpoint), "--input", str(src),
                                 "--out", str(out)]), needle, "--out")
    _assert_user_error(_run(["generate-data", "--out_dir", str(tmp_path / "afile")]), "is a file", "--out_dir")
    assert (tmp_path / "afile").read_text() == "x"


def test_negative_data_seeds_are_errors_not_tracebacks(tmp_path):
    # numpy's SeedSequence refuses negative seeds: `generate-data --seed -1` and a default-dataset run with
    # data.data_seed=-1 ended in a ValueError traceback.
    _assert_user_error(_run(["generate-data", "--out_dir", str(tmp_path / "g"), "--seed", "-1"]), "seed=-1", "--seed")
    _assert_user_error(_run(["train", "--set", "data.data_seed=-1", "--save_dir", str(tmp_path / "run")]),
                       "data_seed=-1", "data.data_seed")
    assert not list(tmp_path.iterdir())  # nothing written, no run directory


def test_an_occupied_run_directory_is_refused_before_any_work(tmp_path):
    # Was refused only after generating the default dataset and building the model, with their log lines
    # ("generating the default dataset ...", "warmup N steps ...") printed before the error.
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("keep: me\n")
    env = {"ACTION_DDIM_CACHE": str(tmp_path / "cache")}
    line = _assert_user_error(_run(["train", "--num_epochs", "1", "--save_dir", str(run)], env=env),
                              "already holds a run", str(run))
    assert "--resume auto" in line
    assert not (tmp_path / "cache").exists()  # no dataset was generated for a run that cannot start
    assert (run / "config.yaml").read_text() == "keep: me\n"
    (tmp_path / "afile").write_text("x")
    _assert_user_error(_run(["train", "--num_epochs", "1", "--save_dir", str(tmp_path / "afile")], env=env),
                       "is a file")
    assert not (tmp_path / "cache").exists() and (tmp_path / "afile").read_text() == "x"
