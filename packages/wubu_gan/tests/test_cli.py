import json
import os

import pytest
from click.testing import CliRunner

from wubu_gan.cli import main


def run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.mark.parametrize("args, needle", [
    (["train", "--video_data_path", "/no/such/video.mp4"], "path not found"),
    (["train", "--batch_size", "0"], "batch_size"),
    (["train", "--gaad_decomposition_type", "zigzag"], "gaad_decomposition_type"),
    (["train", "--config", "phase9"], "config file not found"),
    (["evaluate", "--checkpoint", "/no/such.pt"], "checkpoint not found"),
])
def test_bad_inputs_give_one_line_errors(args, needle):
    res = run(args)
    assert res.exit_code == 2
    # stderr: exactly the one error line (no traceback); stdout may carry the run's notes before it (bare
    # `train` announces the CPU recipe and its motion branch).
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output
    assert "Traceback" not in res.output


def test_unreadable_and_too_short_videos(tmp_path, tiny_video):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    res = run(["train", "--video_data_path", str(bad), "--checkpoint_dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "cannot decode video" in res.output and len(res.stderr.strip().splitlines()) == 1
    res = run(["train", "--video_data_path", str(tiny_video), "--num_input_frames", "200",
               "--checkpoint_dir", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "too few frames" in res.output


def test_list_flags_take_several_values_and_phase_configs_load():
    from wubu_gan.cli import NargsCommand
    from wubu_gan.config import TrainConfig, resolve_config_path
    from trainkit.config import load_config

    for phase in ("phase1", "phase2a", "phase2b", "phase2c", "phase3", "phase4"):
        cfg = load_config(TrainConfig, resolve_config_path(phase))
        assert cfg.checkpoint_dir.endswith(phase)
    assert load_config(TrainConfig, resolve_config_path("phase2a")).lambda_kl == 1e-3
    assert load_config(TrainConfig, resolve_config_path("phase3")).disc_use_gaad_film_condition
    cmd = main.commands["train"]
    assert isinstance(cmd, NargsCommand)
    ctx = cmd.make_context("train", ["--wubu_s_hyperbolic_dims", "64", "32", "--flow_stats_components", "mag_mean",
                                     "angle_std", "--latent_dim", "8"])
    assert ctx.params["wubu_s_hyperbolic_dims"] == [64, 32] and ctx.params["latent_dim"] == 8
    assert ctx.params["flow_stats_components"] == ["mag_mean", "angle_std"]


def test_every_original_argument_is_a_train_flag_with_its_default():
    from wubu_gan.config import TrainConfig

    original = {"video_data_path": "demo_video_data_dir", "epochs": 100, "batch_size": 4, "image_h": 64,
                "num_input_frames": 3, "num_predict_frames": 1, "seed": 42, "gaad_num_regions": 12,
                "gaad_motion_num_regions": 8, "latent_dim": 256, "encoder_initial_tangent_dim": 128,
                "disc_apply_spectral_norm": False, "lambda_recon": 10.0, "lambda_kl": 0.1, "learning_rate_gen": 1e-4,
                "global_max_grad_norm": 5.0, "lambda_kl_update_interval": 2, "val_block_size": 20,
                "wubu_s_hyperbolic_dims": [64, 32], "wubu_t_initial_curvatures": [0.5], "demo_num_samples": 4,
                "checkpoint_dir": "wubugaad_hybridgen_checkpoints_v01", "wandb_project": "WuBuGAADHybridGenV01"}
    cfg = TrainConfig()
    opts = {o.name for o in main.commands["train"].params}
    for key, value in original.items():
        assert getattr(cfg, key) == value and key in opts, key


def test_existing_run_directory_is_refused(base_run):
    res = run(["train", "--video_data_path", str(base_run["cfg"].video_data_path), "--checkpoint_dir", str(base_run["dir"])])
    assert res.exit_code == 2 and "already holds a run" in res.output and "--checkpoint_dir" in res.output


def test_info_prints_boxes_and_saves_png(tmp_path):
    out = tmp_path / "boxes.png"
    res = run(["info", "--image_h", "64", "--image_w", "64", "--save_png", str(out)])
    assert res.exit_code == 0 and "39.55 x  64.00" in res.output and out.stat().st_size > 1000


def test_evaluate_json_and_sample(base_run, tmp_path, tiny_video):
    ckpt = base_run["dir"] / "wubugaad_hybridgen_ckpt_v01_best.pt"
    res = run(["evaluate", "--checkpoint", str(ckpt), "--video_data_path", str(tiny_video), "--max_clips", "6", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert set(data) >= {"model", "copy_last_frame", "constant_velocity", "reconstruction"}
    for name in ("model", "copy_last_frame", "constant_velocity"):
        assert list(data[name]["psnr"]) == ["1", "2", "3", "4", "5"] and len(data[name]["ssim"]) == 5
    assert data["model"]["avg_val_lpips"] is None and data["copy_last_frame"]["psnr"]["1"] > 10
    assert data["copy_last_frame"]["psnr"]["1"] > data["copy_last_frame"]["psnr"]["5"]  # further is harder
    lat = data["latent"]
    assert lat["kl_nats_per_clip"] >= 0 and lat["diversity"] >= 0 and lat["swap_cost_db"] is not None
    res = run(["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "s"), "--num_samples", "2"])
    assert res.exit_code == 0 and (tmp_path / "s" / "samples.png").is_file() and (tmp_path / "s" / "samples.gif").is_file()
    res = run(["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "not empty" in res.output
    res = run(["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "one"), "--num_samples", "3", "--one_context"])
    assert res.exit_code == 0 and "diversity" in res.output and "nan" not in res.output, res.output
    res = run(["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "interp"), "--num_samples", "3", "--interpolate"])
    assert res.exit_code == 0 and (tmp_path / "interp" / "samples.gif").is_file(), res.output


def test_sample_replace_never_deletes_a_run_and_bad_out_paths_are_one_line_errors(base_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run_copy"
    shutil.copytree(base_run["dir"], run_dir)
    ckpt = run_dir / "wubugaad_hybridgen_ckpt_v01_best.pt"
    res = run(["sample", "--checkpoint", str(ckpt), "--out", str(run_dir), "--replace"])
    assert res.exit_code == 2 and "only replaces an earlier sample output" in res.output
    assert ckpt.is_file() and (run_dir / "metrics.jsonl").is_file()
    # a missing checkpoint deletes nothing, even with --replace
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "samples.png").write_bytes(b"old")
    res = run(["sample", "--checkpoint", str(tmp_path / "typo.pt"), "--out", str(tmp_path / "s"), "--replace"])
    assert res.exit_code == 2 and (tmp_path / "s" / "samples.png").read_bytes() == b"old"
    (tmp_path / "file.txt").write_text("x")
    res = run(["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "file.txt")])
    assert res.exit_code == 2 and "not a folder" in res.output and len(res.output.strip().splitlines()) == 1
    res = run(["info", "--save_png", str(tmp_path / "nodir" / "boxes.png")])
    assert res.exit_code == 2 and "folder does not exist" in res.output
    # audit A4: `--out . --replace` in a folder of earlier samples deleted the working directory's files and
    # crashed; now ., ~ and cwd ancestors are refused (one line), and a real replace is a swap
    cwd = tmp_path / "s"
    old_cwd = os.getcwd()
    try:
        os.chdir(cwd)
        for target in (".", str(tmp_path)):
            res = run(["sample", "--checkpoint", str(ckpt), "--out", target, "--replace"])
            assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
            assert (cwd / "samples.png").read_bytes() == b"old"
            assert target != "." or "refusing to replace the working directory" in res.output
    finally:
        os.chdir(old_cwd)
    res = run(["sample", "--checkpoint", str(ckpt), "--out", str(cwd), "--replace", "--num_samples", "2"])
    assert res.exit_code == 0 and (cwd / "samples.png").read_bytes() != b"old", res.output
    assert not list(tmp_path.glob(".s.*"))


def test_resume_refuses_run_changing_keys_from_set_and_config_and_honours_lambda_kl(base_run, tmp_path):
    import shutil

    from trainkit.errors import UserError
    from wubu_gan.train import CKPT_PREFIX, resolve_resume_config, train

    last = next(base_run["dir"].glob(f"{CKPT_PREFIX}ep3_*.pt"))
    for cli, path, overrides, key in (({}, None, ("epochs=50",), "epochs"),
                                      ({}, None, ("image_h=32",), "image_h"),
                                      ({"optimizer": "riemannian_sgd"}, None, (), "optimizer"),  # audit M3
                                      ({}, "phase1", (), "phase1.yaml")):
        from wubu_gan.config import resolve_config_path

        with pytest.raises(UserError, match=key):
            resolve_resume_config(cli, resolve_config_path(path), overrides, str(last), None)
    # lambda_kl given on --resume is what the run uses (and what config.yaml says)
    d = tmp_path / "r"
    d.mkdir()
    shutil.copy(last, d / last.name)
    cfg = resolve_resume_config({"lambda_kl": 0.02, "checkpoint_dir": str(d)}, None, (), "auto", str(d))
    summary = train(cfg, log=lambda m: None, explicit_keys=frozenset({"lambda_kl", "resume", "checkpoint_dir"}))
    assert summary["lambda_kl"] == 0.02 and "lambda_kl: 0.02" in (d / "config.yaml").read_text()


def test_num_channels_other_than_3_and_a_crashed_start_folder_are_one_line_errors(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    res = run(["train", "--num_channels", "1"])
    assert res.exit_code == 2 and "num_channels" in res.output and len(res.output.strip().splitlines()) == 1
    from wubu_gan.train import run_dir_refusal

    err = run_dir_refusal(tmp_path)
    assert err is not None and "saved no checkpoint" in str(err) and "delete" in str(err)


def test_evaluate_never_generates_a_stand_in_demo_video(base_run, tmp_path, monkeypatch):
    from wubu_gan.data import ensure_demo_videos

    monkeypatch.chdir(tmp_path)
    ensure_demo_videos(tmp_path / "my_demo_video_data_dir_copy", 16, 16, 4, log=lambda m: None)
    assert not (tmp_path / "my_demo_video_data_dir_copy").exists()  # the guide's folder by name only
    saved = base_run["cfg"].video_data_path
    ckpt = base_run["dir"] / "wubugaad_hybridgen_ckpt_v01_best.pt"
    import torch

    state = torch.load(ckpt, weights_only=True)
    assert state["config"]["video_data_path"] == str(__import__("pathlib").Path(saved).resolve())  # stored absolute
    state["config"]["video_data_path"] = str(tmp_path / "demo_video_data_dir")  # the run's data is gone
    torch.save(state, tmp_path / "moved.pt")
    res = run(["evaluate", "--checkpoint", str(tmp_path / "moved.pt")])
    assert res.exit_code == 2 and "path not found" in res.output
    assert not (tmp_path / "demo_video_data_dir").exists()


def test_bare_train_runs_the_cpu_recipe_and_phase1_is_one_flag_away(monkeypatch):
    import wubu_gan.train as T

    seen = []
    monkeypatch.setattr(T, "train", lambda cfg, log=print, explicit_keys=frozenset(), allow_rewind=False: seen.append(cfg) or {})
    res = run(["train"])
    assert res.exit_code == 0, res.output
    assert "CPU recipe" in res.output
    cfg = seen[-1]
    assert (cfg.image_h, cfg.latent_dim, cfg.epochs, cfg.lambda_kl_update_interval) == (32, 128, 8, 0)
    assert run(["train", "--config", "phase1"]).exit_code == 0 and seen[-1].image_h == 64
    assert run(["train", "--image_h", "16"]).exit_code == 0 and seen[-1].image_h == 16  # flags still win


def test_evaluate_on_a_folder_reports_every_video(base_run, tmp_path, tiny_video):
    import shutil

    folder = tmp_path / "vids"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(tiny_video, folder / name)
    ckpt = base_run["dir"] / "wubugaad_hybridgen_ckpt_v01_best.pt"
    res = run(["evaluate", "--checkpoint", str(ckpt), "--video_data_path", str(folder), "--max_clips", "3",
               "--horizon", "2", "--no_lpips", "--json"])
    assert res.exit_code == 0, res.output
    per = json.loads(res.output)["per_video"]
    assert set(per) == {"a.mp4", "b.mp4"} and per["a.mp4"]["num_clips"] == 3
    assert set(per["a.mp4"]["constant_velocity"]["psnr"]) == {"1", "2"}
    assert per["a.mp4"]["model"]["psnr"] == per["b.mp4"]["model"]["psnr"]  # same video, same figures


def test_make_demo_video_refuses_to_overwrite_a_same_named_file(tmp_path):
    # audit A10: a user's own file named like a demo video was replaced without any flag
    mine = tmp_path / "myvideos"
    mine.mkdir()
    from wubu_gan.data import SHAPES_VIDEO

    (mine / SHAPES_VIDEO).write_text("my own recording")
    args = ["make-demo-video", "--out", str(mine), "--which", "shapes", "--image_h", "8", "--image_w", "8",
            "--num_frames", "2"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "--overwrite" in res.output
    assert (mine / SHAPES_VIDEO).read_text() == "my own recording"
    res = CliRunner().invoke(main, [*args, "--overwrite"])
    assert res.exit_code == 0 and (mine / SHAPES_VIDEO).stat().st_size > 100, res.output
