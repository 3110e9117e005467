import json

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
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output


def test_unreadable_and_too_short_videos(tmp_path, tiny_video):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    res = run(["train", "--video_data_path", str(bad), "--checkpoint_dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "cannot decode video" in res.output and len(res.output.strip().splitlines()) == 1
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
    assert set(data) >= {"model", "copy_last_frame"}
    assert data["model"]["avg_val_lpips"] is None and data["copy_last_frame"]["avg_val_psnr"] > 10
    res = run(["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "s"), "--num_samples", "2"])
    assert res.exit_code == 0 and (tmp_path / "s" / "samples.png").is_file() and (tmp_path / "s" / "samples.gif").is_file()
    res = run(["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "not empty" in res.output
