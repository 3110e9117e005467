"""End to end: the guide's command lines, TensorBoard tags, resume equality, evaluate/sample/reconstruct."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from action_ddim.cli import main
from action_ddim.train import effective_warmup, lr_lambda
from trainkit.checkpoint import load_checkpoint

GUIDE_TAGS = ["val/mse", "val/coord_mse", "val/press_accuracy", "val/mean_snr_db", "val/variance_ratio_x",
              "val/variance_ratio_y", "val/smoothness_ratio_x", "val/smoothness_ratio_y"]
EXTRA_TAGS = ["val/loss", "val/press_majority_rate", "val/press_f1", "val/gen/speed_w1", "val/gen/path_length_w1",
              "val/gen/press_run_length_w1", "val/gen/press_rate", "train/loss", "train/lr", "train/epoch_loss"]


def _invoke(args, env=None):
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def quick_cpu_run(tiny_data, tmp_path_factory):
    """The guide's 'Quick CPU Test', as written, on the mini dataset (W&B falls back to offline)."""
    run = tmp_path_factory.mktemp("quick") / "checkpoints"
    _invoke(["train", "--data_dir", str(tiny_data / "train"), "--val_data_dir", str(tiny_data / "val"),
             "--batch_size", "2", "--num_epochs", "3", "--lr", "1e-3", "--d_model", "32", "--num_layers", "2",
             "--nhead", "2", "--wandb_project", "ddim-mac-test", "--device", "cpu", "--save_dir", str(run)],
            env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    return run


def test_quick_cpu_run_layout_and_tensorboard_tags(quick_cpu_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = quick_cpu_run
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    assert {p.name for p in (run / "checkpoints").iterdir()} >= {"latest.pt", "best.pt", "epoch0003.pt"}
    assert any((run / "samples").glob("val_reconstructions_epoch_3_*.png"))
    assert (run / "wandb").is_dir()  # offline W&B run, no network needed
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    missing = [t for t in GUIDE_TAGS + EXTRA_TAGS if t not in scalars]
    assert not missing, missing
    assert len(acc.Scalars("val/mse")) == 3  # every epoch
    assert "val/reconstructions_epoch_3" in acc.Tags()["images"]
    ckpt = load_checkpoint(run / "checkpoints" / "latest.pt")  # weights_only=True
    assert {"model", "ema", "optimizer", "scheduler", "scaler", "epoch", "step", "config", "extra"} <= set(ckpt)
    assert ckpt["epoch"] == 3 and ckpt["step"] == 15
    assert ckpt["extra"]["normalizer"] == {"low": [0.0, 0.0, 0.0], "high": [1.0, 1.0, 1.0], "binary_channels": [2]}
    assert ckpt["config"]["train"]["lr"] == 1e-3 and ckpt["config"]["model"]["d_model"] == 32


def test_short_run_reaches_its_peak_lr(quick_cpu_run):
    # 15 steps against the default warmup of 500: before the cap the LR rose for the whole run (2.2e-5
    # at step 10 with --lr 1e-3); now warmup is 3 steps and step 10 is on the cosine decay.
    rows = [json.loads(x) for x in (quick_cpu_run / "metrics.jsonl").read_text().splitlines()]
    lr10 = next(r["train/lr"] for r in rows if r["step"] == 10 and "train/lr" in r)
    f = lr_lambda(effective_warmup(500, 15), 15, 0.0)
    assert lr10 == pytest.approx(1e-3 * f(10)) and 3e-4 < lr10 < 1e-3
    assert effective_warmup(500, 15) == 3 and effective_warmup(500, 5) == 1 and effective_warmup(0, 15) == 0
    assert effective_warmup(500, 3950) == 500  # the guide's full run keeps the configured warmup
    assert max(f(s) for s in range(15)) == 1.0  # the peak is reached
    assert "20%" in CliRunner().invoke(main, ["train", "--help"]).output


def test_existing_run_dir_is_refused_without_resume(quick_cpu_run, tiny_data):
    result = CliRunner().invoke(main, ["train", "--data_dir", str(tiny_data / "train"), "--val_data_dir",
                                       str(tiny_data / "val"), "--save_dir", str(quick_cpu_run)])
    assert result.exit_code == 2 and "already holds a run" in result.output


def test_evaluate_json_sample_and_reconstruct(quick_cpu_run, tiny_data, tmp_path):
    ckpt = str(quick_cpu_run / "checkpoints" / "latest.pt")
    out = _invoke(["evaluate", "--checkpoint", ckpt, "--data_dir", str(tiny_data / "val"),
                   "--num_inference_steps", "10", "--num_gen_samples", "8", "--json"]).output
    metrics = json.loads(out)  # exactly one JSON object on stdout
    assert set(GUIDE_TAGS) <= set(metrics) and "val/loss" in metrics and "val/gen/speed_w1" in metrics
    text = _invoke(["evaluate", "--checkpoint", ckpt, "--data_dir", str(tiny_data / "val"),
                    "--num_inference_steps", "10", "--num_gen_samples", "8"]).output
    assert "val/press_accuracy" in text

    _invoke(["sample", "--checkpoint", ckpt, "--num_samples", "5", "--out", str(tmp_path / "s.npy"),
             "--num_inference_steps", "10", "--eta", "0.5", "--seed", "3"])
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (5 * 64, 3) and s.dtype == np.float32
    assert set(np.unique(s[:, 2])) <= {0.0, 1.0} and s[:, :2].min() >= 0 and s[:, :2].max() <= 1
    assert (tmp_path / "s.png").is_file()

    src = sorted((tiny_data / "val").glob("*_actions.npy"))[0]
    _invoke(["reconstruct", "--checkpoint", ckpt, "--input", str(src), "--out", str(tmp_path / "r.npy"),
             "--num_inference_steps", "10"])
    r, x = np.load(tmp_path / "r.npy"), np.load(src)
    assert r.shape == x.shape and set(np.unique(r[:, 2])) <= {0.0, 1.0}


def test_gpu_guide_line(tiny_data, tmp_path):
    args = ["train", "--data_dir", str(tiny_data / "train"), "--val_data_dir", str(tiny_data / "val"),
            "--batch_size", "16", "--num_epochs", "5", "--lr", "2e-4", "--d_model", "128", "--num_layers", "4",
            "--nhead", "4", "--wandb_project", "ddim-cuda-test", "--device", "cuda", "--save_dir", str(tmp_path / "r")]
    result = CliRunner().invoke(main, args, env={"WANDB_MODE": "disabled"})
    if torch.cuda.is_available():
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 2 and result.output.startswith("error: ") and "cuda" in result.output.lower()


def test_full_training_guide_line_with_tiny_data(tiny_data, tmp_path):
    # The guide's "Full Training" line with the mini dataset and 1 epoch instead of 50.
    _invoke(["train", "--data_dir", str(tiny_data / "train"), "--val_data_dir", str(tiny_data / "val"),
             "--batch_size", "64", "--num_epochs", "1", "--lr", "2e-4", "--d_model", "64", "--num_layers", "3",
             "--nhead", "4", "--wandb_project", "action-ddim-test", "--save_dir", str(tmp_path / "r"),
             "--num_inference_steps", "10", "--set", "train.num_gen_samples=8"], env={"WANDB_MODE": "disabled"})
    assert (tmp_path / "r" / "checkpoints" / "latest.pt").is_file()


def _rows(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    drop = {"time", "val/time_s", "train/epoch_time_s"}
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def test_resume_gives_identical_parameters_and_metrics(tiny_data, tmp_path):
    common = ["train", "--data_dir", str(tiny_data / "train"), "--val_data_dir", str(tiny_data / "val"),
              "--batch_size", "4", "--num_epochs", "2", "--lr", "1e-3", "--d_model", "32", "--num_layers", "1",
              "--nhead", "2", "--num_inference_steps", "5", "--warmup_steps", "4", "--dropout", "0.1",
              "--set", "train.num_gen_samples=8", "--save_every", "1", "--plot_every", "100"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    _invoke(common + ["--save_dir", str(straight)])
    _invoke(common + ["--save_dir", str(split), "--set", "train.stop_after_epoch=1"])
    first = load_checkpoint(split / "checkpoints" / "latest.pt")
    assert first["epoch"] == 1
    _invoke(common + ["--save_dir", str(split), "--resume", "auto"])
    a = load_checkpoint(straight / "checkpoints" / "latest.pt")
    b = load_checkpoint(split / "checkpoints" / "latest.pt")
    assert a["step"] == b["step"] == 6 and a["epoch"] == b["epoch"] == 2
    for key in ("model",):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), name
    for name, tensor in a["ema"]["module"].items():
        assert torch.equal(tensor, b["ema"]["module"][name]), name
    assert a["scheduler"] == b["scheduler"]
    ra, rb = _rows(straight), _rows(split)
    assert ra == rb  # every logged value of both epochs, including the epoch-2 validation metrics
    assert any("val/mse" in r and r["step"] == 6 for r in rb)


def test_no_data_flags_generates_the_default_dataset_into_the_cache(tmp_path):
    env = {"ACTION_DDIM_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    args = ["train", "--num_epochs", "1", "--d_model", "16", "--nhead", "2", "--num_layers", "1",
            "--num_inference_steps", "4", "--set", "data.num_train=8", "--set", "data.num_val=4",
            "--set", "train.num_gen_samples=4"]
    first = _invoke(args + ["--save_dir", str(tmp_path / "a")], env=env)
    assert "generating the default dataset" in first.output
    data = tmp_path / "cache" / "click_v2_n8_v4_L64_s0"
    assert len(list((data / "train").glob("*_actions.npy"))) == 1
    # A second use finds it in the cache and does not regenerate.
    from action_ddim.config import Config
    from action_ddim.data import ensure_default_dataset
    from trainkit.config import config_to_dict, load_config

    messages = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACTION_DDIM_CACHE", str(tmp_path / "cache"))
        assert ensure_default_dataset(8, 4, 64, 0, log=messages.append) == (data / "train", data / "val")
    assert messages == []
    # The saved config.yaml round-trips through --config.
    saved = load_config(Config, tmp_path / "a" / "config.yaml")
    assert saved.model.d_model == 16 and saved.data.num_train == 8
    assert config_to_dict(saved) == load_checkpoint(tmp_path / "a" / "checkpoints" / "latest.pt")["config"]
