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


def _sigterm_at_call(monkeypatch, n):
    """Deliver a real SIGTERM while the ``n``-th training loss is computed (GracefulStop catches it)."""
    import os
    import signal

    import amt.train as T

    calls = {"n": 0}
    real = T.compute_losses

    def losses(*a, **k):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(T, "compute_losses", losses)


def test_resume_matches_uninterrupted_run(synthetic_root, tmp_path, monkeypatch):
    # 32 crops, batch 8, accumulation 2: 4 micro-batches = 2 optimizer steps per epoch, 3 epochs.
    full = train(config_for_run(None, _tiny_cfg(synthetic_root, tmp_path / "full", **{"training.num_epochs": 3})),
                 log=lambda m: None)
    part = _tiny_cfg(synthetic_root, tmp_path / "part", **{"training.num_epochs": 3, "training.stop_after_epoch": 1})
    train(config_for_run(None, part), log=lambda m: None)
    latest = tmp_path / "part" / "checkpoints" / "latest.pth"
    assert load_checkpoint(latest)["epoch"] == 1
    # resume with only the flag: the checkpoint's config is the run's config; stop_after_epoch was an
    # invocation setting, not saved, so this resume runs on (and is stopped mid-epoch 2 by a SIGTERM)
    cfg = config_for_run(None, [f"training.resume={latest}"])
    assert cfg.data.image_size == 64 and cfg.training.num_epochs == 3 and cfg.training.stop_after_epoch is None
    assert "stop_after_epoch: null" in (tmp_path / "part" / "config.yaml").read_text()
    _sigterm_at_call(monkeypatch, 2)  # 2nd micro-batch of epoch 2 = the end of its first accumulation window
    log = []
    train(cfg, log=log.append)
    assert any("stopping on SIGTERM after step 3 (16 of 32 crops of epoch 2)" in m for m in log), log
    mid = load_checkpoint(latest)
    assert mid["epoch"] == 1 and mid["step"] == 3 and mid["rank_extra_per_rank"][0]["epoch_partial"]["n"] == 2
    monkeypatch.undo()
    log = []
    resumed = train(config_for_run(None, [f"training.resume={latest}"]), log=log.append)
    assert any("16 crops into epoch 2" in m for m in log), log
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest.pth")
    b = load_checkpoint(latest)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]["module"]:
        assert torch.equal(a["ema"]["module"][k], b["ema"]["module"][k]), k
    assert resumed["metrics"]["val/mpjpe"] == pytest.approx(full["metrics"]["val/mpjpe"], rel=1e-6)
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    loss_of = lambda d: {r["step"]: r["train/epoch_loss"] for r in rows(d) if "train/epoch_loss" in r}  # noqa: E731
    assert loss_of(tmp_path / "part")[4] == pytest.approx(loss_of(tmp_path / "full")[4], rel=1e-6)  # mid-epoch sums
    # both best.pth and the EMA weights load with weights_only
    assert "ema" in torch.load(tmp_path / "full" / "checkpoints" / "best.pth", weights_only=True)
    # a run-changing flag on resume is refused, naming the key, and the run is untouched
    from trainkit.errors import UserError
    before = latest.stat().st_mtime_ns
    with pytest.raises(UserError, match="image_size"):
        config_for_run(None, [f"training.resume={latest}", "data.image_size=96"])
    with pytest.raises(UserError, match="use_amp"):  # audit L1: an fp32 run resumed in bf16 was silent
        config_for_run(None, [f"training.resume={latest}", "training.use_amp=true"])
    with pytest.raises(UserError, match="already trained 3 epochs"):  # a finished run: nothing to do, nothing written
        train(config_for_run(None, [f"training.resume={latest}"]), log=lambda m: None)
    assert latest.stat().st_mtime_ns == before
    # --output_dir naming another folder on resume is refused (the run continues in its own folder)
    with pytest.raises(UserError, match="output_dir"):
        config_for_run(None, [f"training.resume={latest}"], {"output_dir": str(tmp_path / "elsewhere")})
    # extending the finished run follows the new 4-epoch schedule (not the old one's min_lr)
    ext = config_for_run(None, [f"training.resume={latest}", "training.num_epochs=4"], allow_config_change=True)
    train(ext, log=lambda m: None)
    lr7 = next(r["train/lr_hand_decoder"] for r in rows(tmp_path / "part") if r.get("step") == 7 and "train/lr_hand_decoder" in r)
    fresh = WarmRestartSchedule(2, 4, 0, ext.training.T_0, ext.training.T_mult, ext.training.min_lr / ext.training.learning_rate)
    # the LR the 7th optimizer step used: schedule(6)
    assert lr7 == pytest.approx(ext.training.learning_rate * fresh(6), rel=1e-6) and lr7 > 10 * ext.training.min_lr


def test_evaluate_writes_the_toolkit_result_file(synthetic_root, tmp_path, make_hand_crops):
    from amt.evaluate import evaluate_checkpoint

    train(config_for_run(None, _tiny_cfg(synthetic_root, tmp_path / "run", **{"training.num_epochs": 1})),
          log=lambda m: None)
    res = tmp_path / "res.txt"
    r = evaluate_checkpoint(str(tmp_path / "run" / "checkpoints" / "best.pth"), split="s0_test", results=str(res),
                            device="cpu", log=lambda m: None)
    assert set(r["model"]) >= {"mpjpe", "pa_mpjpe", "pa_mpjpe_proper", "mpjpe_abs", "auc_pa", "pck_5px"}
    assert r["mean_pose_camera_frame"]["mpjpe"] > 0 and r["canonical_hand_source"].startswith("checkpoint")
    # the canonical hand is a real baseline: far better than the camera-frame blob on PA
    assert r["canonical_hand"]["pa_mpjpe"] < 0.8 * r["mean_pose_camera_frame"]["pa_mpjpe"]
    assert r["ratio_to_canonical"]["pa_mpjpe"] == pytest.approx(r["model"]["pa_mpjpe"] / r["canonical_hand"]["pa_mpjpe"])
    assert 0.0 <= r["frames_beating_canonical"]["pa_mpjpe"] <= 1.0
    rows = [line.split(",") for line in res.read_text().splitlines()]
    index = DexYCBIndex(synthetic_root, "s0_test")
    assert all(len(row) == 64 for row in rows)  # index + 21 x 3 numbers
    assert [int(row[0]) for row in rows] == sorted(f.tk_index for f in index.frames)  # toolkit indices, -1 frames skipped
    # the numbers are camera-frame mm (left hands mirrored back): their error against the label files is
    # the absolute MPJPE the report prints
    from amt.data import read_labels
    by_index = {f.tk_index: f for f in index.frames}
    errs = [np.linalg.norm(np.array(row[1:], float).reshape(21, 3) - read_labels(by_index[int(row[0])].label)["joint_3d"] * 1000,
                           axis=1).mean() for row in rows]
    assert np.mean(errs) == pytest.approx(r["model"]["mpjpe_abs"], rel=1e-3)
    assert any(f.mano_side == "left" for f in index.frames)  # (s0_test of this data has left hands)

    # the same checkpoint on a folder in the real hand-crop layout: one line per frame, frame index then 63 mm
    crops, J, _ = make_hand_crops(tmp_path / "crops", n=5)
    res2 = tmp_path / "res_real.txt"
    r2 = evaluate_checkpoint(str(tmp_path / "run" / "checkpoints" / "best.pth"), results=str(res2), device="cpu",
                             cli_values={"data.root": str(crops)}, log=lambda m: None)
    rows = [line.split(",") for line in res2.read_text().splitlines()]
    assert r2["num_frames"] == 5 and [int(row[0]) for row in rows] == list(range(5)) and all(len(x) == 64 for x in rows)
    errs = [np.linalg.norm(np.array(row[1:], float).reshape(21, 3) - J[int(row[0])] * 1000, axis=1).mean() for row in rows]
    assert np.mean(errs) == pytest.approx(r2["model"]["mpjpe_abs"], rel=1e-3)

    # `amt predict` on the same crops, unlabelled: JSON joints whose projections are the listed 2-D points
    import json

    from click.testing import CliRunner

    from amt.cli import main

    intr = tmp_path / "K.json"
    intr.write_text(json.dumps({"fx": 300, "fy": 300, "cx": 31.5, "cy": 31.5}))
    out = tmp_path / "pred"
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "best.pth"),
                                    "--images", str(crops / "images"), "--out", str(out), "--intrinsics", str(intr),
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "joints.json").read_text())
    assert [d["file"] for d in doc["images"]] == [f"{i:05d}.jpg" for i in range(5)]
    for d in doc["images"]:
        J, uv = np.array(d["joints_3d_mm"]), np.array(d["joints_2d_px"])
        p = J @ np.array(d["K"]).T
        assert J.shape == (21, 3) and np.allclose(p[:, :2] / p[:, 2:], uv, atol=0.02)
        assert (out / "overlays" / d["file"].replace(".jpg", ".png")).is_file()
    bad = CliRunner().invoke(main, ["predict", "--checkpoint", "x.pth", "--images", str(crops / "images"), "--out",
                                    str(out)])
    assert bad.exit_code == 2 and "--fov / --intrinsics" in bad.output


def test_checkpoint_files_every_save_freq_epochs_are_all_kept(tmp_path):
    from amt.train import PthCheckpoints

    m = PthCheckpoints(tmp_path, keep_last=0, filename="epoch_{epoch:04d}.pth", best_metric="val/mpjpe")
    for ep, v in zip(range(1, 9), [5, 4, 6, 3, 7, 8, 9, 2]):
        m.save({"x": torch.tensor(ep)}, step=ep, epoch=ep, metrics={"val/mpjpe": float(v)}, periodic=ep % 2 == 0)
    assert sorted(p.name for p in tmp_path.glob("epoch_*")) == ["epoch_0002.pth", "epoch_0004.pth", "epoch_0006.pth",
                                                                  "epoch_0008.pth"]
    assert int(load_checkpoint(tmp_path / "latest.pth")["x"]) == 8 and int(load_checkpoint(tmp_path / "best.pth")["x"]) == 8
    m.save({"x": torch.tensor(9)}, step=9, epoch=9, metrics={"val/mpjpe": 1.0}, periodic=False)
    assert int(load_checkpoint(tmp_path / "best.pth")["x"]) == 9 and not (tmp_path / "epoch_0009.pth").exists()


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
        (["train", "--split", "s1_test", "--output_dir", str(tmp_path / "r3")], "--split"),
        (["evaluate", "--checkpoint", str(tmp_path / "x.pth"), "--results", str(tmp_path)], "not a writable file path"),
        (["train", "--output_dir", str(tmp_path / "r4"), "--set", "training.num_epochs=2",
          "--set", "stages=[{epochs: 2, freeze_all_except: []}]"], "freeze_all_except"),
    ]
    for args, expected in cases:
        out = r.invoke(main, args)
        res = (out.exit_code, out.stderr)
        assert res[0] == 2 and expected in res[1] and res[1].count("\n") == 1 and "Traceback" not in res[1], (args, res)
    assert not (tmp_path / "r1").exists() or not any((tmp_path / "r1").iterdir())


def test_cli_config_shipped_names_resolve():
    from amt.cli import default_config
    from amt.config import resolve_config_path
    # bare `amt train` is the quick start: the shipped CPU recipe, not the guide's ViT-L (on --resume, the checkpoint's)
    assert load_config(Config, default_config(None)).model.backbone == "cnn"
    assert default_config(None, {"training.resume": "x/checkpoints/latest.pth"}) is None
    for name in ("configs/cpu.yaml", "cpu.yaml", "cpu", "default_config"):
        cfg = load_config(Config, resolve_config_path(name))
        assert cfg.model.backbone in ("cnn", "dinov2_vitl14")
    # the guide's config with a shorter run: --set order does not matter, the stage sum is checked at the end
    for sets in (["training.num_epochs=10", "stages=[]"], ["stages=[]", "training.num_epochs=10"]):
        assert config_for_run(resolve_config_path("default_config"), sets).training.num_epochs == 10
    from trainkit.errors import UserError
    with pytest.raises(UserError, match="stages=\\[\\]"):
        config_for_run(resolve_config_path("default_config"), ["training.num_epochs=10"])
    g = load_config(Config, resolve_config_path("configs/default_config.yaml"))
    assert g.model.hidden_dim == 1024 and g.training.T_0 == 10 and len(g.stages) == 3 and g.precision == "bf16"


@pytest.mark.slow  # inductor compiles C++ kernels with gcc: ~1-3 CPU-minutes on first use
def test_torch_compile_trains_and_matches_eager(synthetic_root, tmp_path):
    """``optimizations.use_compile`` really compiles (inductor on CPU) and trains like the eager model."""
    over = {"training.num_epochs": 1, "data.max_train_samples": 16, "training.accumulation_steps": 1,
            "model.dropout": 0.0, "training.T_0": 1}
    eager = train(config_for_run(None, _tiny_cfg(synthetic_root, tmp_path / "eager", **over)), log=lambda m: None)
    torch._dynamo.reset()
    counters = __import__("torch._dynamo.utils", fromlist=["counters"]).counters
    counters.clear()
    comp = train(config_for_run(None, _tiny_cfg(synthetic_root, tmp_path / "comp", **over,
                                                **{"optimizations.use_compile": True})), log=lambda m: None)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo captured and compiled the model
    a = load_checkpoint(tmp_path / "eager" / "checkpoints" / "latest.pth")["model"]
    b = load_checkpoint(tmp_path / "comp" / "checkpoints" / "latest.pth")["model"]
    assert all(k in b for k in a)  # the compiled run saves the plain module's keys (no _orig_mod. prefix)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-3, worst  # same training up to kernel-fusion round-off
    assert comp["metrics"]["val/mpjpe"] == pytest.approx(eager["metrics"]["val/mpjpe"], rel=0.05)


def test_the_guides_top_level_scheduler_keys_and_physics_weight_are_honoured(tmp_path):
    # Guide, "Learning Rate Scheduling": `scheduler` / `T_0` / `T_mult` at the YAML top level; stage 2 calls the
    # penetration weight `physics`. Both spellings must set the real keys, not fail as unknown keys.
    from trainkit.config import load_config as load
    from amt.config import Config

    path = tmp_path / "guide.yaml"
    path.write_text('scheduler: "cosine"\nT_0: 4\nT_mult: 3\nloss_weights:\n  physics: 0.25\n')
    cfg = load(Config, path)
    assert (cfg.training.scheduler, cfg.training.T_0, cfg.training.T_mult) == ("cosine", 4, 3)
    assert cfg.loss_weights.physics_penetration == 0.25
    assert load(Config, None, ["loss_weights.physics=0.0"]).loss_weights.physics_penetration == 0.0


def test_sigterm_during_validation_saves_the_epoch_without_it(synthetic_root, tmp_path, monkeypatch):
    """Issue 24: validation polls trainkit's stop flag per batch, so a SIGTERM there ends it within one batch;
    the finished epoch is saved without the partial validation (not logged, not ranked for best.pth)."""
    import os
    import signal

    import amt.evaluate as E

    calls = {"n": 0}
    real = E.project_points

    def project_with_sigterm(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(E, "project_points", project_with_sigterm)
    cfg = _tiny_cfg(synthetic_root, tmp_path / "run", **{"data.max_val_samples": 16, "training.batch_size": 4,
                                                        "training.accumulation_steps": 1})
    log = []
    train(config_for_run(None, cfg), log=log.append)
    assert any("stopping on SIGTERM during validation after epoch 1" in m for m in log), log
    assert calls["n"] == 2  # both projections of the 1st of 4 validation batches; the 2nd never started
    ckpts = tmp_path / "run" / "checkpoints"
    assert load_checkpoint(ckpts / "latest.pth")["epoch"] == 1 and not (ckpts / "best.pth").exists()
