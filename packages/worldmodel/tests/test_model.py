import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from trainkit.config import config_to_dict, load_config
from trainkit.errors import UserError
from trainkit.step import OptimizerStep

from worldmodel.config import Config, configs_root, resolve_config_path
from worldmodel.data import ProcessedDataset, WindowDataset, collate
from worldmodel.evaluate import build_model
from worldmodel.losses import SsimGradLoss, compute_losses
from worldmodel.lr_finder import lr_range_test
from worldmodel.metrics import psnr_per_image, ssim_per_image
from worldmodel.model import to_unit
from worldmodel.train import build_optimizer, effective_warmup, lr_factor

from .conftest import TINY


def _cfg(*extra):
    return load_config(Config, None, [*TINY, *extra])


def _batch(tiny_data, n=4, length=4):
    w = WindowDataset(ProcessedDataset(tiny_data), "train", length, 1, 1)
    b = collate([w[i] for i in range(0, n * 3, 3)])
    return b["frames"], b["actions"]


def test_psnr_ssim_match_scikit_image():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 20, 30, generator=g)
    b = (a + 0.1 * torch.randn(3, 3, 20, 30, generator=g)).clamp(0, 1)
    for i in range(3):
        x, y = a[i].permute(1, 2, 0).numpy().astype(np.float64), b[i].permute(1, 2, 0).numpy().astype(np.float64)
        assert float(psnr_per_image(b[i:i + 1], a[i:i + 1])) == pytest.approx(
            peak_signal_noise_ratio(x, y, data_range=1.0), abs=1e-3)
        ref = structural_similarity(x, y, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert float(ssim_per_image(b[i:i + 1], a[i:i + 1])) == pytest.approx(ref, abs=1e-4)


def test_shipped_base_configs_are_the_defaults_and_names_resolve():
    defaults = config_to_dict(Config())
    for rel in ("model/base.yaml", "training/base.yaml"):
        assert config_to_dict(load_config(Config, configs_root() / rel)) == defaults, rel
        assert yaml.safe_load((configs_root() / rel).read_text())   # and the files are not empty
    assert resolve_config_path("configs/training/base.yaml") == configs_root() / "training/base.yaml"
    assert resolve_config_path("quick_prototype") == configs_root() / "recipes/quick_prototype.yaml"
    cfg = load_config(Config, resolve_config_path("memory_efficient"))
    assert cfg.training.use_gradient_checkpointing and cfg.model.latent_dim == 128 and cfg.training.batch_size == 4
    assert cfg.optimizer.encoder_lr == 1e-5      # what the recipe leaves out comes from the base configs
    with pytest.raises(UserError, match="config not found"):
        resolve_config_path("no_such_recipe")


def test_zero_and_negative_values_are_refused_not_treated_as_missing():
    for bad in ("training.batch_size=0", "optimizer.encoder_lr=0", "training.max_steps=0", "data.frame_skip=0",
                "logging.eval_interval=-1", "model.action_dim=3"):
        with pytest.raises(UserError):
            _cfg(bad)


def test_perceptual_auto_falls_back_on_frames_too_small_for_lpips(monkeypatch, tmp_path):
    from worldmodel import losses

    monkeypatch.setattr(losses, "alexnet_weights_cached", lambda: tmp_path / "alexnet.pth")   # "cached"
    said = []
    assert losses.build_perceptual("auto", (48, 27), said.append).name == "ssim_grad"
    assert "below" in said[0]
    with pytest.raises(UserError, match="loss.perceptual"):
        losses.build_perceptual("lpips", (48, 27))


def test_reference_decoder_starts_as_copy_last_frame_and_warps_by_the_flow():
    from worldmodel.model import warp

    img = torch.rand(1, 3, 6, 8)
    shifted = warp(img, torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 6, 8))
    assert torch.allclose(shifted[..., :-1], img[..., 1:], atol=1e-6)     # output(x) = input(x + 1)
    torch.manual_seed(0)
    m = build_model(_cfg(), (32, 18), 4).eval()
    frames = torch.rand(2, 4, 3, 18, 32)
    with torch.no_grad():
        pred = m(frames, torch.randn(2, 4, 4))["predicted"]
    # untrained: zero flow and a mask of sigmoid(3) on the warp, so the 1-step prediction is ~ the last frame
    err_last = (to_unit(pred) - frames[:, :-1]).abs().mean()
    err_next = (to_unit(pred) - frames[:, 1:]).abs().mean()
    assert err_last < 0.1 < err_next


def test_decoder_keeps_the_aspect_ratio_and_refuses_a_mismatched_init_size():
    m = build_model(_cfg(), (32, 18), 4)
    out = m(torch.rand(2, 4, 3, 18, 32), torch.randn(2, 4, 4))
    assert out["reconstructed"].shape == (2, 4, 3, 18, 32) and out["predicted"].shape == (2, 3, 3, 18, 32)
    with torch.device("meta"):
        m = build_model(Config(), (256, 144), 10)       # the guide's model on 16:9 nuScenes frames: exact
    assert m.decoder.init == (9, 16)
    with pytest.raises(UserError, match="init_size 4"):
        build_model(Config(), (64, 36), 10)


def test_per_module_learning_rates_reach_their_param_groups_and_schedule_keeps_ratios():
    cfg = _cfg("optimizer.lr=1e-3", "optimizer.encoder_lr=1e-4", "optimizer.dynamics_lr=2e-3",
               "optimizer.decoder_lr=5e-4", "scheduler.min_lr=1e-5")
    model = build_model(cfg, (32, 18), 4)
    opt = build_optimizer(model, cfg)
    owner = {id(p): name for name in ("encoder", "dynamics", "decoder") for p in getattr(model, name).parameters()}
    want = {"encoder": 1e-4, "dynamics": 2e-3, "decoder": 5e-4}
    seen = set()
    for g in opt.param_groups:
        assert all(owner[id(p)] == g["module"] for p in g["params"])
        assert g["lr"] == want[g["module"]]
        assert g["weight_decay"] == (0.0 if g["name"].endswith("_no_decay") else cfg.optimizer.weight_decay)
        seen |= {id(p) for p in g["params"]}
    assert seen == {id(p) for p in model.parameters()}
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(5, 50, 1e-5 / 1e-3, "cosine"))
    for _ in range(50):
        opt.step()
        sched.step()
    lrs = {g["module"]: g["lr"] for g in opt.param_groups}
    assert lrs["encoder"] == pytest.approx(1e-6) and lrs["dynamics"] == pytest.approx(2e-5)  # floor keeps ratios
    assert effective_warmup(1000, 300) == 30 and effective_warmup(1000, 100000) == 1000 and effective_warmup(0, 50) == 0
    assert effective_warmup(1000, 2875) == 1000         # a 2,875-step run keeps the guide's 1000-step warmup


def test_lr_finder_keeps_ratios_stops_on_divergence_and_restores(tiny_data):
    cfg = _cfg("optimizer.lr=1e-3", "optimizer.encoder_lr=1e-4", "optimizer.dynamics_lr=1e-3",
               "optimizer.decoder_lr=5e-4")
    model = build_model(cfg, (32, 18), 4)
    opt = build_optimizer(model, cfg)
    frames, actions = _batch(tiny_data)
    stepper = OptimizerStep(model, opt, grad_clip=1.0)
    before = copy.deepcopy(model.state_dict())

    def step_fn():
        loss = compute_losses(model(frames, actions), frames, cfg.loss, SsimGradLoss())["loss"]
        stepper.backward(loss)
        return loss.detach()

    res = lr_range_test(opt, step_fn, ref_lr=1e-3, min_lr=1e-5, max_lr=1e-1, num_iter=6)
    for row, lr in zip(res["group_lrs"], res["lrs"]):
        by_module = {g["module"]: v for g, v in zip(opt.param_groups, row)}
        assert by_module["encoder"] / by_module["dynamics"] == pytest.approx(0.1)
        assert by_module["decoder"] / lr == pytest.approx(0.5)
    assert res["lrs"][0] == pytest.approx(1e-5) and res["lrs"][-1] <= 1e-1
    # a loss that explodes stops the test early
    losses = iter([1.0, 0.9, 0.8, 50.0, 500.0, 5000.0, 1.0, 1.0])
    res2 = lr_range_test(opt, lambda: next(losses), ref_lr=1e-3, min_lr=1e-5, max_lr=1e-1, num_iter=8)
    assert res2["stopped_early"] and len(res2["lrs"]) < 8
    # run_lr_finder restores; here check that the model did move (so restoring is meaningful)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_run_lr_finder_restores_model_and_writes_plot(tiny_data, tmp_path, monkeypatch):
    from worldmodel import lr_finder

    cfg = _cfg(f"data.data_root={tiny_data}", "training.gradient_accumulation=2")
    captured = {"forwards": 0}
    real, real_stepper, real_scaler = lr_finder.build_model, lr_finder.make_stepper, lr_finder.make_grad_scaler

    def spy(*a, **k):
        captured["model"] = real(*a, **k)
        captured["init"] = copy.deepcopy(captured["model"].state_dict())
        captured["model"].register_forward_hook(lambda *_: captured.__setitem__("forwards", captured["forwards"] + 1))
        return captured["model"]

    def stepper_spy(model, optimizer, scaler, cfg):
        captured["stepper"] = real_stepper(model, optimizer, scaler, cfg)
        captured["scaler"] = scaler
        return captured["stepper"]

    def scaler_spy(device, precision):
        captured["scaler_args"] = (device.type, precision)
        return real_scaler(device, precision)

    monkeypatch.setattr(lr_finder, "build_model", spy)
    monkeypatch.setattr(lr_finder, "make_stepper", stepper_spy)
    monkeypatch.setattr(lr_finder, "make_grad_scaler", scaler_spy)
    res = lr_finder.run_lr_finder(cfg, min_lr=1e-5, max_lr=1e-1, num_iter=8, plot_path=str(tmp_path / "lr.png"),
                                  log=lambda *a: None)
    assert Path(res["plot"]).stat().st_size > 1000
    # the training step: accumulation over gradient_accumulation micro-batches, and the AMP scaler training builds
    assert captured["stepper"].accum_steps == 2 and captured["forwards"] == 2 * len(res["lrs"])
    assert captured["scaler_args"] == ("cpu", "fp32") and captured["stepper"].scaler is captured["scaler"]
    assert all(torch.equal(captured["init"][k], v) for k, v in captured["model"].state_dict().items())
    assert math.isfinite(res["suggested_lr"]) and 1e-5 <= res["suggested_lr"] <= 1e-1
    assert res["suggested_module_lrs"]["encoder"] == pytest.approx(res["suggested_lr"] * 0.1)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_data):
    cfg = _cfg("model.dynamics.dropout=0.0")
    frames, actions = _batch(tiny_data)
    torch.manual_seed(0)
    a = build_model(cfg, (32, 18), 4)
    b = copy.deepcopy(a)
    b.enable_gradient_checkpointing()
    la = compute_losses(a(frames, actions), frames, cfg.loss, SsimGradLoss())["loss"]
    lb = compute_losses(b(frames, actions), frames, cfg.loss, SsimGradLoss())["loss"]
    la.backward()
    lb.backward()
    assert float(la) == pytest.approx(float(lb), rel=1e-6)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), n


def test_accumulation_equals_one_large_batch(tiny_data):
    cfg = _cfg("model.dynamics.dropout=0.0")
    frames, actions = _batch(tiny_data, n=4)
    torch.manual_seed(0)
    big = build_model(cfg, (32, 18), 4)
    small = copy.deepcopy(big)
    grads = {}
    for name, model, accum, chunks in (("big", big, 1, [slice(0, 4)]), ("acc", small, 2, [slice(0, 2), slice(2, 4)])):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        opt.register_step_pre_hook(lambda o, a, k, name=name, model=model: grads.__setitem__(
            name, [p.grad.clone() for p in model.parameters()]))
        stepper = OptimizerStep(model, opt, accum_steps=accum, grad_clip=None)
        for sl in chunks:
            with stepper.micro_batch():
                loss = compute_losses(model(frames[sl], actions[sl]), frames[sl], cfg.loss, SsimGradLoss())["loss"]
                out = stepper.backward(loss)
        assert out.stepped
    for g1, g2 in zip(grads["big"], grads["acc"]):
        assert torch.allclose(g1, g2, atol=1e-6, rtol=1e-4)
    for p, q in zip(big.parameters(), small.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_rollout_feeds_back_its_own_latents_and_depends_on_actions():
    torch.manual_seed(0)
    m = build_model(_cfg("model.dynamics.dropout=0.0"), (32, 18), 4).eval()
    torch.nn.init.normal_(m.dynamics.head.weight, std=0.1)   # an untrained head is zero (it copies the latent)
    ctx = torch.rand(2, 1, 3, 18, 32)
    acts = torch.randn(2, 8, 4)
    out = m.rollout(ctx, acts, 7)                             # longer than max_len 4: a sliding window
    assert out.shape == (2, 7, 3, 18, 32) and 0 <= out.min() and out.max() <= 1
    other = acts.clone()
    other[:, 2:] += 1.0
    out2 = m.rollout(ctx, other, 7)
    assert torch.allclose(out[:, :2], out2[:, :2]) and not torch.allclose(out[:, 3:], out2[:, 3:])


def test_curriculum_phases_grow_from_the_easiest_windows(tiny_data):
    from worldmodel.train import curriculum_subset

    cfg = _cfg("data.curriculum.enabled=true", "data.curriculum.num_phases=3", "data.curriculum.epochs_per_phase=2")
    w = WindowDataset(ProcessedDataset(tiny_data), "train", 4, 1, 1)
    score = w.difficulty()
    assert score.shape == (len(w),) and score.std() > 0
    order = np.argsort(score, kind="stable")
    p0, p1, p2 = (curriculum_subset(order, e, cfg) for e in (0, 2, 4))
    assert len(p0) < len(p1) < len(p2) == len(w) and set(p0) <= set(p1)
    assert score[p0].max() <= score[np.setdiff1d(order, p0)].min()          # phase 0 holds the easiest third
    assert curriculum_subset(order, 6, cfg) is None                           # after the phases: everything
    assert curriculum_subset(order, 0, _cfg()) is None                        # switched off in config


def test_ssim_loss_is_computed_in_fp32_inside_an_amp_autocast():
    torch.manual_seed(0)
    a, b = torch.rand(4, 3, 18, 32), torch.rand(4, 3, 18, 32)
    ref = SsimGradLoss()(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = SsimGradLoss()(a, b)
        m = ssim_per_image(a, torch.ones_like(a))
    assert amp.dtype == torch.float32 and float(amp) == pytest.approx(float(ref), rel=1e-5)
    assert m.dtype == torch.float32 and torch.allclose(m, ssim_per_image(a, torch.ones_like(a)))


def test_lr_flag_scales_every_module_lr_and_keeps_their_ratios():
    from worldmodel.train import resolve_run_config

    base, _ = resolve_run_config(None, [], {})
    cfg, _ = resolve_run_config(None, [], {"optimizer.lr": 2 * base.optimizer.lr})
    for name in ("encoder_lr", "dynamics_lr", "decoder_lr"):
        assert getattr(cfg.optimizer, name) == pytest.approx(2 * getattr(base.optimizer, name))
    cfg, _ = resolve_run_config(None, ["optimizer.encoder_lr=3e-5"], {"optimizer.lr": 2 * base.optimizer.lr})
    assert cfg.optimizer.encoder_lr == 3e-5          # an explicit --set still wins


def test_malformed_processed_datasets_are_one_line_errors(tiny_data, tmp_path):
    import json
    import shutil

    def broken(name, edit_index=None, frames=None):
        d = tmp_path / name
        shutil.copytree(tiny_data, d)
        if edit_index:
            idx = json.loads((d / "index.json").read_text())
            edit_index(idx)
            (d / "index.json").write_text(json.dumps(idx))
        if frames is not None:
            np.save(d / "frames.npy", frames)
        return d

    cases = [
        (broken("c1", lambda i: i.pop("action_normalisation")), "lacks action_normalisation"),
        (broken("c2", lambda i: i["scenes"][-1].update(length=i["scenes"][-1]["length"] + 50)), "spans frames"),
        (broken("c3", lambda i: i.pop("scenes")), "lacks scenes"),
        (broken("c4", frames=np.zeros((48, 18, 32, 2), np.uint8)), "frames.npy has shape"),
    ]
    for root, needle in cases:
        with pytest.raises(UserError, match=needle):
            ProcessedDataset(root)
    with pytest.raises(UserError, match="at least 11"):
        _cfg("data.image_size=[16,9]")


def test_per_channel_sensitivity_is_zero_for_a_channel_the_model_cannot_see(tiny_data):
    from worldmodel.evaluate import rollout_metrics

    torch.manual_seed(0)
    m = build_model(_cfg("model.dynamics.dropout=0.0"), (32, 18), 6).eval()
    torch.nn.init.normal_(m.dynamics.head.weight, std=0.3)   # an untrained head copies the latent
    with torch.no_grad():
        m.dynamics.a_in[0].weight[:, 0] = 0.0                  # blind to channel 0 (speed)
    data = ProcessedDataset(tiny_data)
    res = rollout_metrics(m, data, context=1, horizon=3, frame_skip=1, max_sequences=4, device="cpu",
                          per_channel=True)
    per = res["action_sensitivity"]["per_channel"]
    assert list(per) == data.index["action_names"] == ["speed", "yaw_rate", "accel", "curvature"]
    assert all(per["speed"][f"delta_psnr@{h}"] == 0.0 for h in (1, 2, 3))
    assert any(abs(per[name]["delta_psnr@3"]) > 1e-4 for name in ("yaw_rate", "accel", "curvature"))
    # without the flag (validation during training) the extra rollouts are not run
    plain = rollout_metrics(m, data, context=1, horizon=2, frame_skip=1, max_sequences=4, device="cpu")
    assert "per_channel" not in plain["action_sensitivity"]


def test_a_checkpoint_config_from_before_generator_versions_keeps_version_1():
    from worldmodel.config import upgrade_saved_config

    old = config_to_dict(_cfg())
    del old["data"]["synthetic_version"]
    new = upgrade_saved_config(old)
    assert new["data"]["synthetic_version"] == 1 and "synthetic_version" not in old["data"]
    assert load_config(Config, None, [], base=new).data.synthetic_version == 1
    assert upgrade_saved_config(config_to_dict(_cfg()))["data"]["synthetic_version"] == 2


def test_reference_every_k_moves_the_reference_to_the_predicted_frame_after_every_k_steps():
    torch.manual_seed(0)
    m = build_model(_cfg("model.dynamics.dropout=0.0"), (32, 18), 4).eval()
    torch.nn.init.normal_(m.dynamics.head.weight, std=0.1)
    torch.nn.init.normal_(m.decoder.to_rgb.weight, std=0.05)   # a flow/mask that is not the identity
    ctx, acts = torch.rand(2, 1, 3, 18, 32), torch.randn(2, 8, 4)
    ctx_mode = m.rollout(ctx, acts, 6, reference_every=0)
    assert torch.equal(ctx_mode, m.rollout(ctx, acts, 6))     # the recipe's default (rollout_reference context)
    every2 = m.rollout(ctx, acts, 6, reference_every=2)
    assert torch.equal(every2[:, :2], ctx_mode[:, :2]) and not torch.allclose(every2[:, 2:], ctx_mode[:, 2:])
    m.rollout_reference = "predicted"
    assert torch.equal(m.rollout(ctx, acts, 6), m.rollout(ctx, acts, 6, reference_every=1))


def test_action_csv_columns_by_name_and_one_line_errors(tmp_path):
    from worldmodel.drive import read_action_csv

    names = ["speed", "yaw_rate", "accel", "curvature"]
    good = tmp_path / "a.csv"
    good.write_text("yaw_rate, speed,accel,curvature\n0.1,10,0,0.01\n\n-0.2,5,-4,-0.04\n")
    arr = read_action_csv(good, names)
    assert arr.shape == (2, 4) and arr[1].tolist() == pytest.approx([5, -0.2, -4, -0.04])
    cases = {"speed,yaw,accel\n1,2,3\n": ("line 1", "unknown column(s) yaw; missing yaw_rate, curvature"),
             "speed,yaw_rate,accel,curvature\n1,2,3,4\n1,x,3,4\n": ("line 3", "yaw_rate='x' is not a number"),
             "speed,yaw_rate,accel,curvature\n1,2,3\n": ("line 2", "3 values for 4 columns"),
             "speed,yaw_rate,accel,curvature\n1,nan,3,4\n": ("line 2", "yaw_rate=nan"),
             "speed,yaw_rate,accel,curvature\n": ("", "no action rows"),
             "speed,speed,yaw_rate,accel,curvature\n1,1,2,3,4\n": ("line 1", "repeated speed")}
    for text, (where, what) in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(UserError) as err:
            read_action_csv(bad, names)
        assert what in str(err.value) and where in str(err.value), str(err.value)
    with pytest.raises(UserError, match="not found"):
        read_action_csv(tmp_path / "missing.csv", names)
