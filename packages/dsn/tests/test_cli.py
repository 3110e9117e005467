"""The CLI: the guide's command lines on tiny data, TensorBoard tags, evaluate/summarize/ablation, errors."""
import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # the shared 2-core machine: tiny ops are much slower with thread contention

from click.testing import CliRunner

from dsn.cli import main

_spec = importlib.util.spec_from_file_location("_dsn_test_train", Path(__file__).with_name("test_train.py"))
_tt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tt)
tiny_dataset = _tt.tiny_dataset

PKG = Path(__file__).resolve().parents[1]
GUIDE_TAGS = ["train/mean_reward", "train/sel_ratio", "train/entropy", "train/mean_prob", "cache/hit_rate",
              "cache/hits", "cache/size", "val/RecErr_mean", "val/Diversity_mean", "val/MS_SWD_mean"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("tiny"))


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="dsn")


def guide_command(data, save_dir, epochs=1, device="cpu"):
    # The guide's "Manual Command" with `python -m src.pipeline.train_rl_dsn` -> `dsn train`.
    return ["train", "--model_type", "advanced", "--dataset_root", data, "--save_dir", save_dir, "--epochs", epochs,
            "--device", device, "--num_attn_heads", 4, "--num_attn_layers", 2, "--num_scales", 3, "--use_cache", 1,
            "--cache_size", 1000]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("runs") / "dsn_advanced_v1"
    result = run(*guide_command(data, save_dir, epochs=2))
    assert result.exit_code == 0, result.output
    return save_dir


def test_guide_manual_command_and_tensorboard_tags(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert (trained / "dsn_checkpoint_ep2.pt").exists() and (trained / "config.yaml").exists()
    acc = EventAccumulator(str(trained))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert set(GUIDE_TAGS) <= tags, sorted(set(GUIDE_TAGS) - tags)
    assert [e.step for e in acc.Scalars("train/sel_ratio")] == [1, 2]
    assert acc.Scalars("cache/hits")[-1].value > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
def test_guide_command_on_cuda_gives_one_line_error(data, tmp_path):
    result = run(*guide_command(data, tmp_path / "r", device="cuda:0"))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: device 'cuda:0' requested but CUDA is not available on this machine (--device): "
        "use --device cpu or --device auto"]


def test_guide_key_arguments(data, tmp_path):
    # The guide's "Key Arguments" and its out-of-memory advice, on the baseline and the advanced model.
    r = run("train", "--model_type", "advanced", "--dataset_root", data, "--save_dir", tmp_path / "a", "--epochs", 1,
            "--device", "cpu", "--enc_hidden", 128, "--num_attn_heads", 2, "--num_attn_layers", 1, "--use_cache", 0,
            "--pos_encoding_type", "learned", "--use_lstm_in_advanced", 1, "--lr", "1e-4", "--budget_ratio", 0.06,
            "--num_scales", 2, "--quiet")
    assert r.exit_code == 0, r.output
    cfg = torch.load(tmp_path / "a" / "dsn_checkpoint_ep1.pt", weights_only=True)["config"]
    assert (cfg["enc_hidden"], cfg["num_attn_heads"], cfg["num_attn_layers"], cfg["num_scales"]) == (128, 2, 1, 2)
    assert cfg["pos_encoding_type"] == "learned" and cfg["use_lstm_in_advanced"] is True
    r = run("train", "--model_type", "baseline", "--dataset_root", data, "--save_dir", tmp_path / "b", "--epochs", 1,
            "--device", "cpu", "--enc_hidden", 32, "--set", "num_episodes=3", "--quiet")
    assert r.exit_code == 0, r.output
    assert {"encoder", "policy"} <= set(torch.load(tmp_path / "b" / "dsn_checkpoint_ep1.pt", weights_only=True))


@pytest.mark.parametrize("args,message", [
    (["train", "--bogus", "1"], "error: No such option '--bogus'. (dsn train): see 'dsn train --help'"),
    (["train", "--model_type", "transformer"], "error: Invalid value for '--model_type' / '--model-type': "
     "'transformer' is not one of 'baseline', 'advanced'. (dsn train): see 'dsn train --help'"),
    (["train", "--num_attn_heads", "3", "--save_dir", "{tmp}/x"],
     "error: bad num_attn_heads 3 (--num_attn_heads): expected a positive divisor of enc_hidden=256"),
    (["train", "--budget_ratio", "1.5", "--save_dir", "{tmp}/x"], "error: bad value 1.5 (--budget_ratio): expected 0 < ratio < 1"),
    (["train", "--set", "model.heads=2"], "error: unknown config key 'model.heads' (--set model.heads=2): expected one of"),
    (["train", "--dataset_root", "{tmp}/nowhere", "--save_dir", "{tmp}/x"], "error: "),
    (["evaluate", "--checkpoint", "{tmp}/missing.pt"], "error: "),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    result = run(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert "Traceback" not in result.output


def test_existing_run_dir_is_refused_without_resume(data, trained):
    result = run(*guide_command(data, trained))
    assert result.exit_code == 2
    assert "run directory already holds a run" in result.stderr and "--resume auto" in result.stderr
    result = run(*guide_command(data, trained, epochs=3), "--resume", "auto", "--quiet")
    assert result.exit_code == 0, result.output
    assert (trained / "dsn_checkpoint_ep3.pt").exists()


def test_evaluate_json_shape(data, trained):
    result = run("evaluate", "--checkpoint", trained / "dsn_checkpoint_ep2.pt", "--dataset_root", data, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) == {"model", "random", "uniform"}
    for name in out:
        assert set(out[name]) == {"F", "kendall_tau", "spearman_rho", "kendall_tau_gtscore", "spearman_rho_gtscore",
                                  "RecErr", "Diversity", "MS_SWD"}
        assert 0 <= out[name]["F"] <= 100 and out[name]["MS_SWD"] >= 0
    assert out["uniform"]["kendall_tau"] is None and out["model"]["kendall_tau"] is not None
    table = run("evaluate", "--checkpoint", trained / "dsn_checkpoint_ep2.pt", "--dataset_root", data)
    assert table.exit_code == 0 and "| metric | model | random | uniform |" in table.stdout


@pytest.mark.parametrize("ratio", ["0", "1.5"])
def test_evaluate_budget_ratio_out_of_range(data, trained, ratio):
    # issue 13 item 9: evaluate accepted these and printed nonsense.
    result = run("evaluate", "--checkpoint", trained / "dsn_checkpoint_ep2.pt", "--dataset_root", data,
                 "--budget_ratio", ratio)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: bad budget ratio {float(ratio)} (--budget_ratio): expected 0 < ratio < 1"]


def test_every_listed_option_is_used(data, trained, tmp_path, monkeypatch):
    """issue 13 item 10: options that were parsed and ignored are gone; --precision now reaches the forward."""
    import dsn.evaluate as E

    for command, gone in [("evaluate", ["--quiet", "--config", "--set"]), ("summarize", ["--seed", "--quiet", "--config", "--set"]),
                          ("info", ["--device", "--precision", "--seed", "--quiet"])]:
        help_text = run(command, "--help").stdout
        for flag in gone:
            assert flag + " " not in help_text, (command, flag)
    assert "optim.lr" not in run("train", "--help").stdout  # trainkit's example key is not a dsn key
    result = run("evaluate", "--checkpoint", trained / "dsn_checkpoint_ep2.pt", "--quiet")
    assert result.exit_code == 2 and "No such option '--quiet'" in result.stderr
    seen = []
    real = E.autocast
    monkeypatch.setattr(E, "autocast", lambda device, precision: seen.append(precision) or real(device, precision))
    ckpt = trained / "dsn_checkpoint_ep2.pt"
    assert run("evaluate", "--checkpoint", ckpt, "--dataset_root", data, "--precision", "bf16", "--json").exit_code == 0
    assert run("summarize", "--checkpoint", ckpt, "--dataset_root", data, "--key", "video_5", "--out", tmp_path / "s",
               "--precision", "bf16").exit_code == 0
    assert seen and set(seen) == {"bf16"}, seen
    # the random baseline's seed is used: another seed, another random summary
    r0 = json.loads(run("evaluate", "--checkpoint", ckpt, "--dataset_root", data, "--json").stdout)
    r1 = json.loads(run("evaluate", "--checkpoint", ckpt, "--dataset_root", data, "--json", "--seed", 1).stdout)
    assert r0["random"] != r1["random"] and r0["model"] == r1["model"]


def test_summarize_from_dataset(data, trained, tmp_path):
    result = run("summarize", "--checkpoint", trained / "dsn_checkpoint_ep2.pt", "--dataset_root", data,
                 "--key", "video_5", "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "s" / "keyframes.json").read_text())
    steps = np.asarray(record["keyframe_steps"])
    # The budget's keyframes (round(0.06 * 48) = 3), plus one per shot and per 5 s that had none.
    assert len(steps) >= round(0.06 * 48) == 3
    assert set(record["keyframe_shots"]) == set(range(record["n_shots"]))
    assert set((np.asarray(record["keyframe_times_s"]) // 5).astype(int)) == set(range(int(48 * 15 / 30 // 5) + 1))
    assert record["keyframe_frames"] == [15 * s for s in record["keyframe_steps"]]
    assert record["keyframe_times_s"] == [f / 30.0 for f in record["keyframe_frames"]]
    assert (tmp_path / "s" / "contact_sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = run("summarize", "--checkpoint", trained / "dsn_checkpoint_ep2.pt", "--out", tmp_path / "t")
    assert bad.exit_code == 2 and "give either --video FILE or --dataset_root DIR --key KEY" in bad.stderr


def test_ablation_table(data, tmp_path):
    result = run("ablation", "--dataset_root", data, "--save_dir", tmp_path / "ablation", "--epochs", 2,
                 "--device", "cpu", "--quiet", "--set", "model.enc_hidden=16", "--set", "model.num_attn_heads=2")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "ablation" / "results.csv")))
    names = [r["config"] for r in rows]
    assert names == ["baseline", "attention_only", "multiscale_only", "attn_multiscale_nocache", "full_advanced",
                     "(random summary)", "(uniform summary)"]
    by = {r["config"]: r for r in rows}
    # The cache changes speed, never results.
    for k in ("F", "kendall_tau", "RecErr", "Diversity", "MS_SWD", "params"):
        assert by["attn_multiscale_nocache"][k] == by["full_advanced"][k]
    assert by["attn_multiscale_nocache"]["cache_hit_rate"] == "" and float(by["full_advanced"]["cache_hit_rate"]) > 0
    assert int(by["attention_only"]["params"]) != int(by["multiscale_only"]["params"])
    for name in names[:5]:
        assert list((tmp_path / "ablation" / name).glob("events.out.tfevents.*"))
    assert "| full_advanced |" in (tmp_path / "ablation" / "results.md").read_text()
    # issue 13 item 2: re-running with other settings used to reuse these models and rewrite their config.yaml.
    before = (tmp_path / "ablation" / "baseline" / "config.yaml").read_text()
    again = run("ablation", "--dataset_root", data, "--save_dir", tmp_path / "ablation", "--epochs", 2, "--device", "cpu",
                "--quiet", "--set", "model.enc_hidden=16", "--set", "model.num_attn_heads=2", "--set", "lr=0.5", "--seed", 7)
    assert again.exit_code == 2
    assert again.stderr.strip().splitlines()[-1].startswith("error: resuming would change 'lr' from 0.0001 to 0.5")
    assert (tmp_path / "ablation" / "baseline" / "config.yaml").read_text() == before


def test_info_prints_parameter_counts(trained):
    result = run("info", "--in_dim", 64)
    assert result.exit_code == 0, result.output
    assert "feature size D = 64" in result.stdout
    assert "baseline: 659,969 parameters" in result.stdout  # BiLSTM 64 -> 256 per direction + head
    ckpt = run("info", "--checkpoint", trained / "dsn_checkpoint_ep2.pt")
    assert ckpt.exit_code == 0 and "advanced model" in ckpt.stdout


def test_make_dataset_command(tmp_path):
    result = run("make-dataset", "--out", tmp_path / "d", "--num_videos", 2, "--seed", 3, "--num_splits", 1)
    assert result.exit_code == 0, result.output
    from dsn.data import load_splits, load_videos

    assert list(load_videos(tmp_path / "d")) == ["video_1", "video_2"] and len(load_splits(tmp_path / "d")) == 1


def test_script_and_module_entry_point(data, tmp_path):
    env = {**os.environ, "DSN": f"{sys.executable} -m dsn", "DATASET_ROOT": str(data),
           "SAVE_DIR": str(tmp_path / "quick"), "DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(PKG / "scripts" / "test_advanced_dsn.sh"), "--quiet", "--enc_hidden", "16",
                           "--num_attn_heads", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "quick" / "dsn_checkpoint_ep1.pt").exists()


def test_full_training_script_evaluates_the_checkpoint_training_chose(tmp_path):
    # issue 13 item 13: with an extra --epochs the script evaluated dsn_checkpoint_ep${EPOCHS}.pt (absent, or not
    # the run's result). `dsn` is replaced by `echo` so that the test reads the commands the script runs.
    save = tmp_path / "run"
    env = {**os.environ, "DSN": "echo dsn", "SAVE_DIR": str(save), "EPOCHS": "20"}
    script = str(PKG / "scripts" / "train_advanced_dsn.sh")
    out = subprocess.run(["bash", script, "--epochs", "3"], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == f"dsn evaluate --checkpoint {save / 'latest.pt'}"
    save.mkdir()
    (save / "best.pt").write_bytes(b"")
    out = subprocess.run(["bash", script, "--epochs", "3"], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == f"dsn evaluate --checkpoint {save / 'best.pt'}"
    assert "ep20" not in out


def _write_clip(path, shots=3, frames_per_shot=36):
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=24)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        for _ in range(shots):
            colour = rng.integers(0, 255, 3)
            for i in range(frames_per_shot):
                img = np.zeros((64, 64, 3), np.uint8)
                img[:] = colour
                img[(2 * i) % 56 : (2 * i) % 56 + 8, 10:30] = 255
                for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_extract_features_and_summarize_video(trained, tmp_path):
    from dsn.data import load_videos

    clip = _write_clip(tmp_path / "clip.mp4")
    result = run("extract-features", "--videos", clip, "--out", tmp_path / "feats")
    assert result.exit_code == 0, result.output
    (video,) = load_videos(tmp_path / "feats").values()
    assert video.features.shape[0] == 9 and video.frames is not None  # 108 frames at 24 fps, sampled at 2 fps
    # The tiny checkpoint was trained on 16-d features: a real video's features do not fit it.
    result = run("summarize", "--checkpoint", trained / "dsn_checkpoint_ep2.pt", "--video", clip, "--out", tmp_path / "s")
    assert result.exit_code == 2
    assert f"has {video.features.shape[1]}-d features" in result.stderr and "expected 16-d features" in result.stderr


def test_train_under_multi_process_torchrun_is_refused(monkeypatch):
    from click.testing import CliRunner

    from dsn.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(main, ["train", "--epochs", "1"])
    assert result.exit_code == 2
    assert "dsn train runs in one process" in result.output


def test_summarize_out_naming_a_file_is_an_error(trained, tmp_path):
    """aud21-4: --out naming an existing file gave mkdir's FileExistsError traceback; the file is kept."""
    target = tmp_path / "some_file.json"
    target.write_text("keep")
    result = run("summarize", "--checkpoint", trained / "dsn_checkpoint_ep2.pt", "--video", tmp_path / "x.mp4",
                 "--out", target)
    assert result.exit_code == 2 and "--out is an existing file" in result.stderr, result.output
    assert target.read_text() == "keep"


def test_evaluate_explains_null_diversity(data, trained):
    """aud21-8: Diversity came out null (one keyframe per video at a tiny budget) with no note saying why."""
    result = run("evaluate", "--checkpoint", trained / "dsn_checkpoint_ep2.pt", "--dataset_root", data,
                 "--budget_ratio", "0.001")
    assert result.exit_code == 0, result.output
    assert "note: Diversity null: every test video has fewer than 2 keyframes" in result.stdout
