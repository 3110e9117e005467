"""Fidelity metrics (issue 11): gesture rule, kinematics, C2ST, floors and ratios, evaluate/plot wiring."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from action_ddim import metrics as M
from action_ddim.augmentation import GeneratorSettings, generate_sequence, generate_sequences


def _still(n, x=0.5, y=0.5, press=0):
    s = np.zeros((n, 3))
    s[:, 0], s[:, 1], s[:, 2] = x, y, press
    return s


def _line(n, p0, p1, press):
    s = np.zeros((n, 3))
    s[:, :2] = np.linspace(p0, p1, n)
    s[:, 2] = press
    return s


def test_gesture_rule_on_hand_built_sequence():
    # 30 Hz: tap 3 steps (0.1 s), idle 6 still released steps, long press 15 steps (0.5 s, jitter-free),
    # swipe: 8 pressed steps moving 0.3, drag: 20 pressed steps moving 0.3, then a moving release.
    parts = [_line(5, (0.1, 0.1), (0.5, 0.5), 0), _still(3, press=1), _still(6), _still(15, press=1),
             _line(4, (0.5, 0.5), (0.52, 0.5), 0),
             _line(8, (0.52, 0.5), (0.82, 0.5), 1), _line(4, (0.82, 0.5), (0.5, 0.2), 0),
             _line(20, (0.5, 0.2), (0.5, 0.5), 1), _line(3, (0.5, 0.5), (0.9, 0.9), 0)]
    seq = np.concatenate(parts)
    kinds = M.detect_gestures(seq, rate_hz=30)
    assert kinds == ["tap", "idle", "long_press", "swipe", "drag"]
    # The same durations at 60 Hz are half as long: the 15-step press is no longer a long press.
    assert M.detect_gestures(seq, rate_hz=60)[:3] == ["tap", "idle", "tap"]
    counts = M.gesture_counts(seq[None], 30)
    assert counts.tolist() == [[1, 1, 1, 1, 1]]
    assert M.total_variation([0.5, 0.5, 0], [0, 0.5, 0.5]) == pytest.approx(0.5)


def test_gesture_rule_agrees_with_the_generators_contacts():
    rng = np.random.default_rng(3)
    s = GeneratorSettings()
    agree = total = 0
    for _ in range(60):
        seq, events = generate_sequence(rng, s, return_events=True)
        truth = ["long_press" if b - a >= 12 else "tap" for k, a, b in events if k == "press" and b < s.seq_len]
        found = [k for k in M.detect_gestures(seq) if k in ("tap", "long_press")]
        # Contacts cut by the window end are left out of the truth; compare the common prefix.
        n = min(len(truth), len(found))
        agree += sum(a == b for a, b in zip(truth[:n], found[:n]))
        total += n
    assert total > 60 and agree / total > 0.95


def test_acceleration_and_jerk_by_hand():
    s = np.zeros((1, 5, 3))
    s[0, :, 0] = [0, 0.1, 0.3, 0.6, 1.0]  # velocities 0.1, 0.2, 0.3, 0.4: acceleration 0.1, jerk 0
    assert M.step_accelerations(s) == pytest.approx([0.1, 0.1, 0.1])
    assert M.step_jerks(s) == pytest.approx([0.0, 0.0], abs=1e-12)


def test_c2st_near_chance_for_real_vs_real_and_high_for_jittery_fakes():
    real_a = generate_sequences(96, seed=11)
    real_b = generate_sequences(96, seed=12)
    same = M.c2st_accuracy(real_a, real_b, seed=0)
    assert 0.35 <= same <= 0.65
    assert M.c2st_accuracy(real_a, real_b, seed=0) == same  # deterministic by seed
    fake = real_b.copy()
    fake[..., :2] = np.clip(fake[..., :2] + np.random.default_rng(0).normal(0, 0.01, fake[..., :2].shape), 0, 1)
    assert M.c2st_accuracy(real_a, fake, seed=0) > 0.9


def test_fidelity_metrics_floor_and_ratio():
    ref = generate_sequences(128, seed=21)
    draws = [generate_sequences(32, seed=30 + k) for k in range(3)]
    real_samples = generate_sequences(32, seed=40)
    m = M.fidelity_metrics(ref, real_samples, draws)
    per_draw = [M.fidelity_metrics(ref, d, []) for d in draws]
    for k in M.FLOORED:
        floor = np.mean([p[k] for p in per_draw])
        assert m[f"{k}_floor"] == pytest.approx(floor)
        assert m[f"{k}_ratio"] == pytest.approx(m[k] / floor)
        assert m[f"{k}_ratio"] < 4  # another real draw is about as far as the floor
    assert "gen/c2st_accuracy_floor" in m and abs(m["gen/c2st_accuracy_floor"] - 0.5) < 0.2
    fractions = [m[f"gen/gesture_frac_data/{g}"] for g in M.GESTURE_KINDS]
    assert sum(fractions) == pytest.approx(1.0)
    # Smooth but frozen sequences (no presses, no motion): far from the data on every distance.
    frozen = np.repeat(real_samples[:, :1], 64, axis=1)
    frozen[..., 2] = 0
    bad = M.fidelity_metrics(ref, frozen, draws)
    assert bad["gen/speed_w1_ratio"] > 10 and bad["gen/path_length_w1_ratio"] > 10
    assert bad["gen/gesture_tv_ratio"] > 3 and bad["gen/c2st_accuracy"] > 0.9
    assert not M.fidelity_goal_met(bad)
    assert np.isnan(M.fidelity_metrics(ref, real_samples, []).get("gen/speed_w1_ratio", np.nan))


def _tiny_checkpoint(tmp_path):
    from trainkit.config import config_to_dict

    from action_ddim.config import Config
    from action_ddim.data import Normalizer
    from action_ddim.train import build_model

    cfg = Config()
    cfg.model.d_model, cfg.model.num_layers, cfg.model.nhead = 16, 1, 2
    cfg.diffusion.num_inference_steps = 4
    torch.manual_seed(0)
    model = build_model(cfg, 64)
    torch.nn.init.normal_(model.head.weight, std=0.05)  # untrained but not a zero output
    path = tmp_path / "tiny.pt"
    torch.save({"config": config_to_dict(cfg), "model": model.state_dict(),
                "extra": {"seq_len": 64, "normalizer": Normalizer().to_dict()}}, path)
    return path


def test_evaluate_prints_floors_and_writes_samples_beside_real(tmp_path):
    from action_ddim.augmentation import generate_click_dataset
    from action_ddim.cli import main

    data = generate_click_dataset(tmp_path / "d", num_train=16, num_val=24, seq_len=64, seed=5)
    ckpt = _tiny_checkpoint(tmp_path)
    png = tmp_path / "plots" / "cmp.png"
    args = ["evaluate", "--checkpoint", str(ckpt), "--data_dir", str(data / "val"), "--num_gen_samples", "8",
            "--json", "--plot", str(png)]
    split = CliRunner().invoke(main, args, catch_exceptions=False)
    assert split.exit_code == 0, split.output
    m = json.loads(split.output)
    # 24 validation sequences: one draw of 8 held out for the floor, the samples compared with the other 16.
    for k in M.FLOORED:
        assert m[f"val/{k}_ratio"] == pytest.approx(m[f"val/{k}"] / m[f"val/{k}_floor"])
    assert m["val/gen/c2st_accuracy"] > 0.7  # an untrained denoiser's samples are easy to tell apart
    assert png.is_file() and png.stat().st_size > 10_000
    assert (png.parent / "cmp_dist.png").stat().st_size > 5_000  # speed / pause / press-run distributions
    with_real = CliRunner().invoke(main, args[:-2] + ["--real_dir", str(data / "train")], catch_exceptions=False)
    m2 = json.loads(with_real.output)
    assert m2["val/gen/speed_w1"] != m["val/gen/speed_w1"]  # the whole val set is the reference now
    assert m2["val/mse"] == m["val/mse"]  # reconstruction metrics always use every sequence
    gen_only = json.loads(CliRunner().invoke(main, args[:-2] + ["--gen_only"], catch_exceptions=False).output)
    assert "val/mse" not in gen_only
    assert {k: v for k, v in m.items() if "/gen/" in k} == gen_only  # the same samples and floors
    bad = CliRunner().invoke(main, args[:-1] + [str(tmp_path / "x.jpg")])
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and "--plot" in bad.output


def test_fidelity_config_loads_and_differs_from_the_guide_only_where_documented():
    from trainkit.config import load_config

    from action_ddim.config import Config, default_config_path

    cfg = load_config(Config, default_config_path().with_name("fidelity.yaml"))
    assert (cfg.model.d_model, cfg.model.num_layers, cfg.model.nhead) == (64, 3, 4)
    assert (cfg.train.lr, cfg.train.warmup_steps, cfg.train.ema_decay, cfg.diffusion.eta) == (1e-3, 200, 0.999, 1.0)
    assert cfg.data.num_train == 20000 and cfg.train.num_gen_samples == 256
    # The low-noise choices (README "Fidelity"): velocities, no x0 clipping, a lower sigma_0.
    assert (cfg.data.increment_scale, cfg.diffusion.clip_sample, cfg.diffusion.cosine_offset) == (20.0, False, 2e-4)
    # Local convolutions, the running position beside the velocities, 30 epochs decaying to 5%, 200 sampling steps.
    assert (cfg.model.conv_kernel, cfg.model.position_features) == (5, True)
    assert (cfg.train.num_epochs, cfg.train.min_lr_ratio, cfg.diffusion.num_inference_steps) == (30, 0.05, 200)
    assert not cfg.model.increment_features and cfg.diffusion.timestep_power == 1.0 and cfg.diffusion.min_snr_gamma == 0


def test_training_logs_floors_and_the_samples_vs_real_figure(tmp_path):
    from action_ddim.augmentation import generate_click_dataset
    from action_ddim.cli import main

    data = generate_click_dataset(tmp_path / "d", num_train=24, num_val=8, seq_len=64, seed=9)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "train", "--data_dir", str(data / "train"), "--val_data_dir", str(data / "val"), "--save_dir", str(run),
        "--num_epochs", "1", "--batch_size", "8", "--d_model", "16", "--nhead", "2", "--num_layers", "1",
        "--num_inference_steps", "4", "--quiet", "--set", "train.num_gen_samples=4"],
        env={"WANDB_MODE": "disabled"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/gen/c2st_accuracy" in r][-1]
    # The floor comes from the validation set (audit M4): one file -> one draw of 4 held out of its 8.
    assert "within-session floor: 4 random sequences" in result.output
    for k in M.FLOORED:
        assert val[f"val/{k}_ratio"] == pytest.approx(val[f"val/{k}"] / val[f"val/{k}_floor"])
    assert any((run / "samples").glob("val_samples_vs_real_epoch_1_*.png"))
