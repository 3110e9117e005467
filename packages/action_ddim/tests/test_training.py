"""End to end: the guide's command lines, TensorBoard tags, resume equality, evaluate/sample/reconstruct."""
import json

import numpy as np
import pytest
import torch
import yaml
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


def test_best_checkpoint_is_the_best_validated_epoch_on_one_fixed_subset(quick_cpu_run):
    # Issue 13 item 13: best.pt was chosen only among saved epochs (save_every 20 > 3 epochs: only epoch 3
    # could win) and the last epoch's val/loss was on the whole validation set, not the per-epoch subset.
    rows = [json.loads(line) for line in (quick_cpu_run / "metrics.jsonl").read_text().splitlines()]
    selection = {r["train/epoch"]: r["val/selection_loss"] for r in rows if "val/selection_loss" in r}
    assert sorted(selection) == [1, 2, 3]  # every validated epoch is ranked
    last = next(r for r in rows if r.get("train/epoch") == 3)
    # 5 val sequences < val_subset: the subset is the whole set, so the separate ranking pass must agree exactly
    assert last["val/selection_loss"] == last["val/loss"]
    best = load_checkpoint(quick_cpu_run / "checkpoints" / "best.pt")
    assert best["epoch"] == min(selection, key=selection.get)
    assert best["manager"]["best_value"] == min(selection.values())


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


def _assert_same_run(a_dir, b_dir, step):
    a = load_checkpoint(a_dir / "checkpoints" / "latest.pt")
    b = load_checkpoint(b_dir / "checkpoints" / "latest.pt")
    assert a["step"] == b["step"] == step and a["epoch"] == b["epoch"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for name, tensor in a["ema"]["module"].items():
        assert torch.equal(tensor, b["ema"]["module"][name]), name
    assert a["scheduler"] == b["scheduler"] and a["config"]["data"] == b["config"]["data"]
    # config.yaml says what the run used: the same as the uninterrupted run's, apart from where it lives.
    ya, yb = (yaml.safe_load((d / "config.yaml").read_text()) for d in (a_dir, b_dir))
    for y in (ya, yb):
        y["train"].pop("save_dir"), y["train"].pop("resume")
    assert ya == yb
    ra, rb = _rows(a_dir), _rows(b_dir)
    assert ra == rb  # every logged value, train/loss at step 10 and each epoch's val/ metrics included
    return ra


def test_resume_gives_identical_parameters_and_metrics(tiny_data, tmp_path, monkeypatch):
    """2 epochs (10 steps) straight == stopped after epoch 1 + resumed == SIGTERM in step 7 + resumed.

    Both resumes pass only --resume and --save_dir: every other setting, the data included, comes from
    the checkpoint (before, the resume switched to the generated default dataset).
    """
    import os
    import signal

    from action_ddim.diffusion import Diffusion

    common = ["train", "--data_dir", str(tiny_data / "train"), "--val_data_dir", str(tiny_data / "val"),
              "--batch_size", "2", "--num_epochs", "2", "--lr", "1e-3", "--d_model", "32", "--num_layers", "1",
              "--nhead", "2", "--num_inference_steps", "5", "--warmup_steps", "4", "--dropout", "0.1",
              "--set", "train.num_gen_samples=8", "--save_every", "1", "--plot_every", "100", "--quiet"]
    straight, split, killed = tmp_path / "straight", tmp_path / "split", tmp_path / "killed"
    _invoke(common + ["--save_dir", str(straight)])

    _invoke(common + ["--save_dir", str(split), "--set", "train.stop_after_epoch=1"])
    assert load_checkpoint(split / "checkpoints" / "latest.pt")["epoch"] == 1
    _invoke(["train", "--resume", "auto", "--save_dir", str(split)])
    rows = _assert_same_run(straight, split, 10)
    assert any("val/mse" in r and r["step"] == 10 for r in rows) and any("train/loss" in r for r in rows)

    # A real SIGTERM in the middle of epoch 2 (step 7 of 10): the loop finishes the step, saves, returns.
    calls, loss = [0], Diffusion.loss

    def loss_with_sigterm(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Diffusion, "loss", loss_with_sigterm)
        stopped = CliRunner().invoke(main, common + ["--save_dir", str(killed)], catch_exceptions=False)
    assert stopped.exit_code == 3  # trainkit.runsafety.EXIT_STOPPED: stopped by a signal, checkpoint saved
    assert "stopping on SIGTERM after step 7 (4 of 10 sequences of epoch 2)" in stopped.output
    mid = load_checkpoint(killed / "checkpoints" / "latest.pt")
    assert mid["step"] == 7 and mid["epoch"] == 1 and mid["sampler"]["consumed"] == 4
    assert sorted(p.name for p in (killed / "checkpoints").glob("epoch*.pt")) == ["epoch0001.pt"]  # end of epoch 1 kept
    resumed = _invoke(["train", "--resume", "auto", "--save_dir", str(killed)])
    assert "4 sequences into epoch 2" in resumed.output
    _assert_same_run(straight, killed, 10)


def test_sigterm_during_validation_stops_it_early_saves_the_epoch_and_resumes(tiny_data, tmp_path, monkeypatch):
    """Issue 24: SIGTERM during validation was honoured only after the whole validation (140 s loaded). Now the
    loop polls trainkit's stop flag per batch: the rest (here: the sample generation) is skipped, nothing of the
    partial validation is logged, the finished epoch is saved and the run resumes from it."""
    import os
    import signal

    import action_ddim.evaluate as ev

    calls = {"loss": 0, "draw": 0}
    loss_sum, draw = ev.seeded_loss_sum, ev.draw_samples

    def loss_with_sigterm(*args, **kwargs):
        calls["loss"] += 1
        if calls["loss"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss_sum(*args, **kwargs)

    def counted_draw(*args, **kwargs):
        calls["draw"] += 1
        return draw(*args, **kwargs)

    run = tmp_path / "run"
    args = ["train", "--data_dir", str(tiny_data / "train"), "--val_data_dir", str(tiny_data / "val"),
            "--batch_size", "5", "--num_epochs", "2", "--d_model", "16", "--num_layers", "1", "--nhead", "2",
            "--num_inference_steps", "2", "--set", "train.num_gen_samples=4", "--plot_every", "100", "--quiet",
            "--save_dir", str(run)]
    with monkeypatch.context() as m:
        m.setattr(ev, "seeded_loss_sum", loss_with_sigterm)
        m.setattr(ev, "draw_samples", counted_draw)
        stopped = CliRunner().invoke(main, args, catch_exceptions=False)
    assert stopped.exit_code == 3, stopped.output  # trainkit.runsafety.EXIT_STOPPED
    assert "stopping on SIGTERM during validation after epoch 1" in stopped.output, stopped.output
    assert calls == {"loss": 1, "draw": 0}  # stopped within the batch, generation never started
    ckpt = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert ckpt["epoch"] == 1 and ckpt["step"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any(k.startswith("val/") for r in rows for k in r)  # the partial validation is not logged
    resumed = _invoke(["train", "--resume", "auto", "--save_dir", str(run)])
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["epoch"] == 2, resumed.output


def test_resume_refuses_run_changing_flags_and_keeps_config_yaml_honest(quick_cpu_run, tiny_data, tmp_path):
    from action_ddim.train import resolve_config

    run = quick_cpu_run  # d_model 32, batch 2, 3 epochs on the mini data; nothing below writes to it
    config_before = (run / "config.yaml").read_bytes()
    ckpt_before = (run / "checkpoints" / "latest.pt").read_bytes()
    for args, key in ((["--d_model", "64"], "model.d_model"), (["--data_dir", str(tmp_path)], "data.data_dir"),
                      (["--seq_len", "32"], "data.seq_len"), (["--num_epochs", "4"], "train.num_epochs"),
                      (["--set", "diffusion.schedule=linear"], "diffusion.schedule")):
        result = CliRunner().invoke(main, ["train", "--resume", "auto", "--save_dir", str(run), *args])
        assert result.exit_code == 2 and result.output.startswith("error: ") and f"'{key}'" in result.output, \
            result.output
        assert "--allow_config_change" in result.output and len(result.output.strip().splitlines()) == 1
    assert (run / "config.yaml").read_bytes() == config_before  # a refused flag writes nothing
    assert (run / "checkpoints" / "latest.pt").read_bytes() == ckpt_before

    # The override flag accepts the change; settings not given still come from the checkpoint.
    values = {"train.resume": "auto", "train.save_dir": str(run), "train.num_epochs": 5, "train.val_every": 2}
    cfg, resume = resolve_config(cli_values=values, allow_config_change=True, log=lambda *a: None)
    assert cfg.train.num_epochs == 5 and cfg.train.val_every == 2 and cfg.model.d_model == 32
    assert cfg.data.data_dir == str(tiny_data / "train") and cfg.train.batch_size == 2 and resume[0]["epoch"] == 3
    # Without it, non-defining settings (how often to validate, the device) may still change.
    cfg, _ = resolve_config(cli_values={k: v for k, v in values.items() if k != "train.num_epochs"})
    assert cfg.train.val_every == 2 and cfg.train.num_epochs == 3
    refused = CliRunner().invoke(main, ["train", "--allow_config_change", "--save_dir", str(tmp_path / "new")])
    assert refused.exit_code == 2 and "--resume" in refused.output
    # Resuming a finished run said "resumed ..." and exited silently after rewriting config.yaml/metrics.jsonl.
    done = CliRunner().invoke(main, ["train", "--resume", "auto", "--save_dir", str(run)])
    assert done.exit_code == 0 and "already finished its 3 epochs; nothing to do" in done.output, done.output
    assert (run / "config.yaml").read_bytes() == config_before
    # Shortening a run below the epochs it has trained was accepted (exit 0, nothing trained) and rewrote
    # config.yaml to claim num_epochs=2 for a run that trained 3.
    shorter = CliRunner().invoke(main, ["train", "--resume", "auto", "--save_dir", str(run), "--num_epochs", "2",
                                        "--allow_config_change"])
    assert shorter.exit_code == 2, shorter.output
    assert shorter.output.strip().splitlines()[-1].startswith("error: num_epochs=2") and "--num_epochs" in shorter.output
    assert (run / "config.yaml").read_bytes() == config_before
    assert (run / "checkpoints" / "latest.pt").read_bytes() == ckpt_before


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
