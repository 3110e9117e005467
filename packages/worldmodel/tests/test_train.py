import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from trainkit.checkpoint import load_checkpoint
from trainkit.testing import run_torchrun

from worldmodel.cli import main
from worldmodel.train import resolve_run_config, train

from .conftest import TINY
from .test_data import make_nuscenes

PKG = Path(__file__).resolve().parents[1]


def _run(cfg, **kw):
    return train(cfg, log=lambda *a: None, **kw)


def test_tiny_model_learns_and_every_guide_tag_is_logged(tiny_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_cfg("training.max_steps=40", "optimizer.lr=3e-3", "optimizer.encoder_lr=3e-3",
                   "optimizer.dynamics_lr=3e-3", "optimizer.decoder_lr=3e-3", "logging.log_interval=4",
                   "logging.eval_interval=20", "logging.histogram_every=1", "logging.save_interval=40",
                   "model.dynamics.dropout=0.0")
    metrics = _run(cfg)
    run = Path(cfg.training.save_dir)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/loss" in r]
    # the untrained reference decoder already copies the last frame, so learning = beating copy-last-frame
    losses = [r["train/loss"] for r in train_rows]
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:2]) / 2                          # the loss falls
    assert metrics["val/psnr"] > metrics["val/copy_last_psnr"] + 0.3                  # and beats the baseline
    assert metrics["val/psnr"] > 10 and "val/rollout_psnr@2" in metrics and "val/copy_last_psnr@2" in metrics
    ea = EventAccumulator(str(run), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    ea.Reload()
    tags = ea.Tags()
    for tag in ("train/loss", "train/recon_loss", "train/pred_loss", "train/perceptual_loss", "train/latent_reg_loss",
                "train/temporal_loss", "train/psnr", "train/ssim", "val/loss", "val/psnr", "val/ssim", "lr",
                "lr/encoder", "lr/dynamics", "lr/decoder", "val/action_sensitivity@2"):
        assert tag in tags["scalars"], tag
    for tag in ("train/reconstruction", "train/prediction", "val/samples", "val/open_loop"):
        assert tag in tags["images"], tag
    # the open-loop video: an animated GIF (what add_video writes), one per evaluation, 3 panels wide
    vids = ea.Images("val/open_loop")
    assert [v.step for v in vids] == [20, 40] and vids[0].encoded_image_string[:4] == b"GIF8"
    assert vids[0].width == 3 * 32 + 4
    for tag in ("weights/encoder", "weights/dynamics", "weights/decoder", "gradients/encoder", "gradients/decoder"):
        assert tag in tags["histograms"], tag
    # the evaluation at step 20 is not a save step: no periodic file for it (best.pt only if it improved)
    assert sorted(p.name for p in (run / "checkpoints").glob("ckpt_step*.pt")) == ["ckpt_step00000040.pt"]
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["extra"]["perceptual"] == "ssim_grad" and best["manager"]["best_metric"] == "val/psnr"
    # evaluate: the promised JSON shape, baseline side by side
    out = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(run / "checkpoints" / "latest.pt"),
                                    "--data-root", cfg.data.data_root, "--horizon", "3", "--json"])
    assert out.exit_code == 0, out.output
    res = json.loads(out.output)
    assert set(res) == {"model", "copy_last_frame", "action_sensitivity"}
    # a dataset with other action channels (e.g. CARLA's) is refused, not normalised as if it were the same
    other = tmp_path / "other_actions"
    shutil.copytree(cfg.data.data_root, other)
    idx = json.loads((other / "index.json").read_text())
    idx["action_names"] = ["throttle", "steer", "brake", "speed"]
    (other / "index.json").write_text(json.dumps(idx))
    bad = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(run / "checkpoints" / "latest.pt"),
                                    "--data-root", str(other)])
    assert bad.exit_code == 2 and "action channels" in bad.output
    assert {"psnr@1", "ssim@1", "psnr@3"} <= set(res["model"]) and "psnr@3" in res["copy_last_frame"]
    assert "delta_psnr@3" in res["action_sensitivity"]
    per = res["action_sensitivity"]["per_channel"]
    assert set(per) == {"speed", "yaw_rate", "accel", "curvature"} and "delta_psnr@3" in per["speed"]
    # rollout: PNG strips + GIFs, refuses a non-empty folder without --overwrite
    target = tmp_path / "roll"
    args = ["rollout", "--checkpoint", str(run / "checkpoints" / "latest.pt"), "--data-root", cfg.data.data_root,
            "--out", str(target), "--num-sequences", "1", "--horizon", "3", "--steer-offset", "0.2"]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert len(list(target.glob("*.png"))) == 1 and len(list(target.glob("*.gif"))) == 1
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "not empty" in again.output
    # a checkpoint from before generator versions (no data.synthetic_version) is read as version 1
    from worldmodel.evaluate import load_for_inference

    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    del state["config"]["data"]["synthetic_version"]
    torch.save(state, tmp_path / "old.pt")
    assert load_for_inference(tmp_path / "old.pt", "cpu")[1].data.synthetic_version == 1
    assert load_for_inference(run / "checkpoints" / "latest.pt", "cpu")[1].data.synthetic_version == 2
    # drive the model from an action file: a GIF of context + one frame per row (and an MP4 with PyAV)
    acts = tmp_path / "drive.csv"
    acts.write_text("speed,yaw_rate,accel,curvature\n10,0,0,0\n8,0,-5,0\n8,0.3,0,0.0375\n")
    drive = ["rollout", "--checkpoint", str(run / "checkpoints" / "latest.pt"), "--data-root", cfg.data.data_root,
             "--num-sequences", "1", "--actions", str(acts), "--reference-every", "2"]
    res = CliRunner().invoke(main, [*drive, "--out", str(tmp_path / "drive")])
    assert res.exit_code == 0, res.output
    import imageio.v2 as imageio

    gif = list((tmp_path / "drive").glob("*_drive.gif"))
    assert len(gif) == 1 and len(imageio.mimread(gif[0])) == 4
    try:
        import av  # noqa: F401
        assert len(list((tmp_path / "drive").glob("*_drive.mp4"))) == 1
    except ImportError:
        pass
    acts.write_text("speed,yaw_rate,accel,curvature\n10,0,0,0\n8,0,fast,0\n")
    bad = CliRunner().invoke(main, [*drive, "--out", str(tmp_path / "drive_bad")])
    assert bad.exit_code == 2 and "line 3" in bad.output and "accel='fast'" in bad.output
    assert not (tmp_path / "drive_bad").exists() and "Traceback" not in bad.output


def test_resume_mid_epoch_equals_an_uninterrupted_run(tiny_cfg, tmp_path):
    # 27 train windows, batch 2, accumulation 2: 7 optimizer steps per epoch. Stop at step 3 (mid-epoch,
    # trainkit's ResumableSampler position in the checkpoint) and run on to step 10 (across an epoch end).
    common = ["training.max_steps=10", "logging.save_interval=100", "logging.eval_interval=100",
              "model.dynamics.dropout=0.2", "training.gradient_accumulation=2", "training.batch_size=2"]
    straight = tiny_cfg(*common, f"training.save_dir={tmp_path / 'a'}")
    _run(straight)
    half = tiny_cfg(*common, f"training.save_dir={tmp_path / 'b'}", "training.stop_after_steps=3")
    _run(half)
    stopped = load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")
    assert stopped["step"] == 3 and stopped["epoch"] == 0 and stopped["sampler"]["consumed"] == 12
    cfg, path = resolve_run_config(None, [*TINY, *common, f"data.data_root={straight.data.data_root}",
                                          f"training.save_dir={tmp_path / 'b'}", "training.resume=auto"], {})
    assert path is not None
    assert cfg.training.stop_after_steps is None   # a per-invocation setting: the resumed run does not stop again
    _run(cfg, resume_path=path)
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "latest.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")
    assert a["step"] == b["step"] == 10 and a["epoch"] == b["epoch"] == 1
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]


def test_resume_refuses_a_run_changing_flag_and_bad_flags_do_not_touch_the_run(tiny_cfg, tmp_path):
    cfg = tiny_cfg("training.max_steps=2", f"training.save_dir={tmp_path / 'r'}")
    _run(cfg)
    ckpt = tmp_path / "r" / "checkpoints" / "latest.pt"
    before = ckpt.read_bytes()
    base = ["train", "--save-dir", str(tmp_path / "r"), "--data-root", cfg.data.data_root]
    r = CliRunner().invoke(main, [*base, "--resume", "auto", "--set", "model.latent_dim=32"])
    assert r.exit_code == 2 and "model" in r.output and "--allow-config-change" in r.output
    r = CliRunner().invoke(main, [*base, "--resume", "auto", "--set", "data.val_fraction=0.5"])
    assert r.exit_code == 2 and "data.val_fraction" in r.output
    r = CliRunner().invoke(main, [*base, "--batch-size", "0"])
    assert r.exit_code == 2 and r.output.startswith("error: batch-size=0")
    r = CliRunner().invoke(main, base)          # no --resume into a run directory: refused, not overwritten
    assert r.exit_code == 2 and "already holds a run" in r.output
    assert ckpt.read_bytes() == before


def test_cli_bad_inputs_are_one_line_errors(tmp_path, tiny_data):
    cases = [
        (["train", "--data-root", str(tmp_path / "nope")], "processed dataset not found"),
        (["train", "--config", "nonexistent_recipe"], "config not found"),
        (["train", "--set", "model.no_such_key=1"], "unknown config key"),
        (["inspect", "--data-root", str(tmp_path)], "missing frames.npy"),
        (["prepare-dataset", "--dataset", "nuscenes", "--data-root", str(tmp_path / "raw")], "not found"),
        (["prepare-dataset", "--dataset", "carla"], "--data-root is required"),
        (["evaluate", "--checkpoint", str(tmp_path / "x.pt"), "--data-root", str(tiny_data)], "x.pt"),
        (["train", "--data-root", str(tiny_data), "--set", "data.sequence_length=40", "--set", "data.image_size=[32,18]",
          "--set", "model.decoder.init_size=4", "--save-dir", str(tmp_path / "s")], "longer than every"),
        (["train", "--data-root", str(tiny_data), "--use-dp", "--save-dir", str(tmp_path / "dp")], "--use-dp"),
        (["find-lr", "--min-lr", "1e-2", "--max-lr", "1e-3"], "max-lr"),
    ]
    for args, needle in cases:
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, (args, r.output)
        lines = [ln for ln in r.output.strip().splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and needle in lines[0], (args, r.output)
        assert "Traceback" not in r.output


def test_inspect_reports_scenes_and_action_units(tiny_data):
    r = CliRunner().invoke(main, ["inspect", "--data-root", str(tiny_data), "--json"])
    desc = json.loads(r.output)
    assert len(desc["scenes"]) == 4 and desc["scenes"][0]["frames"] == 12
    assert desc["scenes"][0]["duration_s"] == pytest.approx(1.1)
    assert [a["unit"] for a in desc["actions"]] == ["m/s", "rad/s", "m/s^2", "1/m"]
    assert 3.0 <= desc["actions"][0]["min"] <= desc["actions"][0]["mean"] <= desc["actions"][0]["max"] <= 16.0


def test_the_guides_command_lines_run_from_the_package_folder(tmp_path):
    """`python scripts/prepare_dataset.py --dataset nuscenes --data-root data/nuscenes` then
    `python scripts/train.py --config configs/training/base.yaml --data-root data/processed/nuscenes`
    (tiny sizes through --set; the commands and paths are the guide's)."""
    work = tmp_path / "w"
    make_nuscenes(work / "data" / "nuscenes")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "WORLDMODEL_CACHE": str(tmp_path / "cache")}
    scripts = PKG / "scripts"
    r = subprocess.run([sys.executable, str(scripts / "prepare_dataset.py"), "--dataset", "nuscenes", "--data-root",
                        "data/nuscenes", "--image-size", "32x18"], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (work / "data" / "processed" / "nuscenes" / "index.json").is_file()
    small = [f"--set={s}" for s in TINY if not s.startswith(("data.sequence_length", "training.batch_size"))]
    r = subprocess.run([sys.executable, str(scripts / "train.py"), "--config", "configs/training/base.yaml",
                        "--data-root", "data/processed/nuscenes", *small, "--set=data.sequence_length=3",
                        "--set=eval.horizon=1", "--set=training.batch_size=1", "--set=training.max_steps=1",
                        "--save-dir", "runs/guide"], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "train/loss:" in r.stderr and (work / "runs" / "guide" / "checkpoints" / "latest.pt").is_file()


def test_ddp_two_processes_same_params_own_randomness_rank0_writes(tiny_data, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU): both ranks train, end with identical parameters, draw from
    their own random streams and train on different windows; only rank 0 writes the run directory."""
    report, run = tmp_path / "report", tmp_path / "ddp"
    report.mkdir()
    r = run_torchrun(PKG / "tests" / "_ddp_worker.py", report, *TINY, f"data.data_root={tiny_data}",
                     f"training.save_dir={run}", "training.backend=gloo", "training.distributed=true",
                     "training.max_steps=3", "model.dynamics.dropout=0.2", "logging.eval_interval=3",
                     "logging.save_interval=3", env={"WORLDMODEL_CACHE": str(tmp_path / "cache")}, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    ranks = [json.loads((report / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert [x["world_size"] for x in ranks] == [2, 2]
    assert ranks[0]["digest"] == ranks[1]["digest"]                 # DDP kept the replicas identical
    assert ranks[0]["draw"] != ranks[1]["draw"]                     # per-rank random streams
    assert ranks[0]["windows"] != ranks[1]["windows"]               # each rank its own shard
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if "train/loss" in row]
    assert steps == sorted(set(steps)) and len(steps) == 3          # one writer: no duplicated rows
    assert (run / "checkpoints" / "latest.pt").is_file()
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 3


def test_bare_train_is_the_cpu_quick_start_and_nothing_else_is():
    # `uv run worldmodel train` is the README's quick start: with neither --config nor --data-root it must be the
    # CPU recipe (the guide's 70M model at 256x144 takes minutes per step on a CPU). A given config, data root
    # or resume keeps what the user asked for.
    from worldmodel.cli import quick_start_config

    assert quick_start_config(None, {}) == "synthetic_cpu"
    assert quick_start_config(None, {"training.batch_size": 4}) == "synthetic_cpu"
    assert quick_start_config("configs/training/base.yaml", {}) == "configs/training/base.yaml"
    assert quick_start_config(None, {"data.data_root": "data/processed/nuscenes"}) is None
    assert quick_start_config(None, {"training.resume": "auto"}) is None
    assert quick_start_config(None, {}, ["data.data_root=somewhere"]) is None


def test_stop_at_an_eval_step_is_resumable_and_val_recon_loss_is_per_batch(tiny_cfg, tmp_path):
    # audit M1: stop_after_steps at an eval step that is not a save step used to leave only best.pt;
    # audit H3: val/recon_loss was divided by the number of images (4 windows x 3 frames here), not batches
    cfg = tiny_cfg("training.max_steps=10", "logging.eval_interval=4", "logging.save_interval=5",
                   "training.stop_after_steps=4", f"training.save_dir={tmp_path / 's'}")
    _run(cfg)
    latest = load_checkpoint(tmp_path / "s" / "checkpoints" / "latest.pt")
    assert latest["step"] == 4
    rows = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/recon_loss" in r and r["step"] == 4][0]["val/recon_loss"]
    train_loss = [r for r in rows if "train/recon_loss" in r and r["step"] == 4][0]["train/recon_loss"]
    assert val > train_loss / 3, (val, train_loss)   # same model, same kind of frames: same order of magnitude


def test_open_loop_video_reaches_wandb_as_a_video(tmp_path):
    import numpy as np
    import wandb

    from trainkit.tracking import Tracker
    from worldmodel.videos import log_video

    logged = []

    class FakeRun:
        def log(self, data, step):
            logged.append((data, step))

    tracker = Tracker(tmp_path / "run", enabled=True, tensorboard=False)
    tracker._wandb_run = FakeRun()
    frames = (np.random.default_rng(0).random((5, 20, 30, 3)) * 255).astype(np.uint8)
    log_video(tracker, "val/open_loop", frames, 7)
    tracker.close()
    (data, step), = logged
    assert step == 7 and isinstance(data["val/open_loop"], wandb.Video)
    assert (tmp_path / "run" / "samples" / "val_open_loop_00000007.gif").read_bytes()[:4] == b"GIF8"


def test_allow_config_change_lr_is_applied_on_resume(tiny_cfg, tmp_path):
    # audit M2: the checkpoint's scheduler restored the old base LRs, so --lr with --allow-config-change only
    # changed config.yaml; the resumed run must train with the new LRs (here: every module's LR x 10)
    cfg = tiny_cfg("training.max_steps=3", "training.stop_after_steps=2", f"training.save_dir={tmp_path / 'l'}")
    _run(cfg)
    old = load_checkpoint(tmp_path / "l" / "checkpoints" / "latest.pt")["scheduler"]["base_lrs"]
    for key in ("training.max_grad_norm=0.5", "training.use_amp=true"):   # audit M4: refused without the flag
        r = CliRunner().invoke(main, ["train", "--save-dir", str(tmp_path / "l"), "--data-root", cfg.data.data_root,
                                      "--resume", "auto", "--set", key])
        assert r.exit_code == 2 and key.split("=")[0] in r.output, r.output
    r = CliRunner().invoke(main, ["train", "--save-dir", str(tmp_path / "l"), "--data-root", cfg.data.data_root,
                                  "--resume", "auto", "--lr", str(cfg.optimizer.lr * 10), "--allow-config-change"])
    assert r.exit_code == 0, r.output
    state = load_checkpoint(tmp_path / "l" / "checkpoints" / "latest.pt")
    assert state["step"] == 3
    assert state["scheduler"]["base_lrs"] == pytest.approx([10 * v for v in old], rel=1e-9)


def test_sigterm_during_validation_stops_it_within_a_batch_and_saves(tiny_cfg, monkeypatch):
    """Issue 24: a stop signal during validation was honoured only after all of it (and its rollouts). The
    validation loop now polls trainkit's stop flag per batch: the rollouts never start, the partial validation
    is neither logged nor ranked for best, and the step is saved resumable."""
    import signal

    import worldmodel.evaluate as ev

    calls = {"val_batches": 0, "rollouts": 0}
    losses, rollouts = ev.compute_losses, ev.rollout_metrics

    def losses_with_sigterm(*args, **kwargs):
        calls["val_batches"] += 1
        if calls["val_batches"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return losses(*args, **kwargs)

    def counted_rollouts(*args, **kwargs):
        calls["rollouts"] += 1
        return rollouts(*args, **kwargs)

    monkeypatch.setattr(ev, "compute_losses", losses_with_sigterm)
    monkeypatch.setattr(ev, "rollout_metrics", counted_rollouts)
    cfg = tiny_cfg("training.max_steps=4", "logging.eval_interval=2", "logging.save_interval=100",
                   "training.batch_size=2")
    _run(cfg)
    assert calls == {"val_batches": 1, "rollouts": 0}
    run = Path(cfg.training.save_dir)
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 2
    assert not (run / "checkpoints" / "best.pt").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any(k.startswith("val/") for r in rows for k in r)
