import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader, Subset

from amt.cli import main
from amt.config import Config
from amt.data import DexYCBIndex, HandCropDataset
from amt.evaluate import metrics_from_predictions, predict
from amt.losses import compute_losses
from amt.metrics import procrustes_align
from amt.model import AMTModel
from amt.train import WarmRestartSchedule, config_for_run, train
from trainkit.checkpoint import load_checkpoint
from trainkit.config import load_config


def test_overfit_a_handful_of_samples_and_refinement_helps(synthetic_root):
    torch.manual_seed(0)
    ds = Subset(HandCropDataset(DexYCBIndex(synthetic_root, "s0_train"), 64), list(range(8)))
    batch = next(iter(DataLoader(ds, batch_size=8)))
    model = AMTModel(backbone="cnn", image_size=64, hidden_dim=32, num_heads=4, num_decoder_layers=1,
                     num_refinement_steps=2, cnn_width=8)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    w = dict(hand_pose=1, hand_pose_refined=1.2, hand_2d=0.3, root=1, object_position=0.5, diversity=0.01,
             physics_penetration=0.0)
    for _ in range(300):
        model.train()
        loss, _ = compute_losses(model(batch["image"], batch["K"]), batch, w, 0.5)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(batch["image"], batch["K"])
    coarse = (out["joints_rel"] - batch["joints_rel"]).norm(dim=-1).mean().item() * 1000
    refined = (out["refined"][-1] - batch["joints_rel"]).norm(dim=-1).mean().item() * 1000
    mean_pose = (batch["joints_rel"].mean(0) - batch["joints_rel"]).norm(dim=-1).mean().item() * 1000
    assert refined < 8.0 and refined < 0.25 * mean_pose, (coarse, refined, mean_pose)  # mm
    assert refined < coarse, (coarse, refined)


def _tiny_cfg(root, run_dir, **over):
    sets = ["model.backbone=cnn", f"data.root={root}", f"output_dir={run_dir}", "data.image_size=64",
            "model.cnn_width=8", "model.hidden_dim=32", "model.num_heads=4", "model.num_decoder_layers=1",
            "model.freeze_layers=0", "model.dropout=0.1", "training.batch_size=8", "training.num_epochs=2",
            "training.use_amp=false", "training.accumulation_steps=2", "training.T_0=1", "training.log_freq=1",
            "data.max_train_samples=32", "data.max_val_samples=8", "training.quiet=true",
            "optimizations.memory.gradient_checkpointing=false", "training.save_freq=1"]
    sets += [f"{k}={v}" for k, v in over.items()]
    return sets


def test_resume_matches_uninterrupted_run(synthetic_root, tmp_path):
    full = train(config_for_run(None, _tiny_cfg(synthetic_root, tmp_path / "full")), log=lambda m: None)
    part = _tiny_cfg(synthetic_root, tmp_path / "part", **{"training.stop_after_epoch": 1})
    train(config_for_run(None, part), log=lambda m: None)
    latest = tmp_path / "part" / "checkpoints" / "latest.pth"
    assert load_checkpoint(latest)["epoch"] == 1
    # resume with only the flag: the checkpoint's config is the run's config
    cfg = config_for_run(None, [f"training.resume={latest}"])
    assert cfg.data.image_size == 64 and cfg.training.num_epochs == 2 and cfg.training.stop_after_epoch == 1
    cfg = config_for_run(None, [f"training.resume={latest}", "training.stop_after_epoch=2"])
    resumed = train(cfg, log=lambda m: None)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest.pth")
    b = load_checkpoint(latest)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]["module"]:
        assert torch.equal(a["ema"]["module"][k], b["ema"]["module"][k]), k
    assert resumed["metrics"]["val/mpjpe"] == pytest.approx(full["metrics"]["val/mpjpe"], rel=1e-6)
    # both best.pth and the EMA weights load with weights_only
    assert "ema" in torch.load(tmp_path / "full" / "checkpoints" / "best.pth", weights_only=True)
    # a run-changing flag on resume is refused, naming the key, and the run is untouched
    from trainkit.errors import UserError
    before = latest.stat().st_mtime_ns
    with pytest.raises(UserError, match="image_size"):
        config_for_run(None, [f"training.resume={latest}", "data.image_size=96"])
    assert latest.stat().st_mtime_ns == before


def test_warm_restart_schedule_ends_annealed():
    s = WarmRestartSchedule(steps_per_epoch=10, num_epochs=100, warmup_steps=5, T_0=10, T_mult=2, min_ratio=0.0)
    assert s.bounds == [0.0, 100.0, 300.0, 1000.0]  # 10, 20 epochs, then the rest (70) ends at the last step
    assert s(0) == pytest.approx(0.2) and s(5) == pytest.approx(1.0)
    assert s(99) < 0.01 and s(100) == pytest.approx(1.0) and s(999) < 1e-4
    short = WarmRestartSchedule(steps_per_epoch=10, num_epochs=15, warmup_steps=0, T_0=5, T_mult=2, min_ratio=0.1)
    assert short.bounds == [0.0, 50.0, 150.0] and short(149) == pytest.approx(0.1, abs=1e-3)


def test_cli_bad_inputs_one_line_errors(tmp_path, synthetic_root):
    r = CliRunner()
    cases = [
        (["train", "--data_root", str(tmp_path / "missing"), "--config", "configs/cpu.yaml",
          "--output_dir", str(tmp_path / "r1")], "DexYCB root not found"),
        (["train", "--config", "configs/cpu.yaml", "--split", "s7", "--output_dir", str(tmp_path / "r2")], "unknown split"),
        (["train", "--config", "configs/cpu.yaml", "--set", "training.batch_size=0"], "batch_size"),
        (["train", "--config", "nope.yaml"], "config file not found"),
        (["evaluate", "--checkpoint", str(tmp_path / "x.pth")], "x.pth"),
        (["train", "--config", "configs/cpu.yaml", "--set", "model.backbone=resnet"], "model.backbone"),
    ]
    for args, expected in cases:
        out = r.invoke(main, args)
        res = (out.exit_code, out.stderr)
        assert res[0] == 2 and expected in res[1] and res[1].count("\n") == 1 and "Traceback" not in res[1], (args, res)
    assert not (tmp_path / "r1").exists() or not any((tmp_path / "r1").iterdir())


def test_cli_config_shipped_names_resolve():
    from amt.config import resolve_config_path
    for name in ("configs/cpu.yaml", "cpu.yaml", "cpu", "default_config"):
        cfg = load_config(Config, resolve_config_path(name))
        assert cfg.model.backbone in ("cnn", "dinov2_vitl14")
    g = load_config(Config, resolve_config_path("configs/default_config.yaml"))
    assert g.model.hidden_dim == 1024 and g.training.T_0 == 10 and len(g.stages) == 3 and g.precision == "bf16"
