"""Checkpoints: the guide's two formats, its loading snippet, weights_only loading, exact resume."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # the shared 2-core machine: tiny ops are much slower with thread contention

from dsn import DSNAdvanced, DSNBaseline, DSNConfig
from dsn.evaluate import load_policy
from dsn.train import train
from trainkit.errors import UserError

# The tiny dataset builder lives in test_train.py; load it by path (tests are not a package).
_spec = importlib.util.spec_from_file_location("_dsn_test_train", Path(__file__).with_name("test_train.py"))
_tt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tt)
tiny_dataset, small_cfg = _tt.tiny_dataset, _tt.small_cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("tiny"))


def test_advanced_format_and_guide_snippet(data, tmp_path):
    summary = train(small_cfg(data, tmp_path / "run", epochs=1), log=lambda m: None)
    path = tmp_path / "run" / "dsn_checkpoint_ep1.pt"
    assert summary["last_checkpoint"] == str(path) and summary["checkpoint"] == str(tmp_path / "run" / "best.pt")
    # The guide's snippet, unchanged (torch.load's default is weights_only=True in torch >= 2.6).
    checkpoint = torch.load(path)
    config = checkpoint["config"]
    model = DSNAdvanced(config)
    model.load_state_dict(checkpoint["model"])
    assert checkpoint["model_type"] == "advanced"
    assert isinstance(config, dict) and config["in_dim"] == 16 and config["num_attn_layers"] == 1
    assert "train_state" in checkpoint and checkpoint["train_config"]["epochs"] == 1
    x = torch.randn(1, 30, 16)
    loaded, _ = load_policy(path)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_baseline_format(data, tmp_path):
    train(small_cfg(data, tmp_path / "run", epochs=1, model={"model_type": "baseline"}), log=lambda m: None)
    checkpoint = torch.load(tmp_path / "run" / "dsn_checkpoint_ep1.pt", weights_only=True)
    assert {"encoder", "policy", "config", "model_type"} <= set(checkpoint)
    assert "model" not in checkpoint and checkpoint["model_type"] == "baseline"
    model = DSNBaseline(checkpoint["config"])
    model.encoder.load_state_dict(checkpoint["encoder"])
    model.policy.load_state_dict(checkpoint["policy"])
    loaded, _ = load_policy(tmp_path / "run" / "dsn_checkpoint_ep1.pt")
    x = torch.randn(1, 20, 16)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))


def _params(run_dir, epoch):
    model, ckpt = load_policy(run_dir / f"dsn_checkpoint_ep{epoch}.pt")
    return model.state_dict(), ckpt


# Wall-clock fields differ, and the in-memory cache starts cold in a resumed process (its counters say so).
SKIP = ("time", "cache/")


def _assert_same_run(a_dir, b_dir, epoch):
    (pa, ca), (pb, cb) = _params(a_dir, epoch), _params(b_dir, epoch)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert ca["train_state"]["extra"]["baselines"] == cb["train_state"]["extra"]["baselines"]
    sa, sb = ca["train_state"]["optimizer"]["state"], cb["train_state"]["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    last = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()][-1]
    la, lb = last(a_dir), last(b_dir)
    assert {k: v for k, v in la.items() if not k.startswith(SKIP)} == \
        {k: v for k, v in lb.items() if not k.startswith(SKIP)}


@pytest.mark.parametrize("model_type", ["advanced", "baseline"])
def test_resume_is_bit_identical(data, tmp_path, model_type):
    m = {"model_type": model_type, "dropout": 0.1}  # dropout: the RNG state must be restored too
    train(small_cfg(data, tmp_path / "straight", epochs=2, model=m), log=lambda m: None)
    train(small_cfg(data, tmp_path / "resumed", epochs=1, model=m), log=lambda m: None)
    with pytest.raises(UserError, match="run directory already holds a run"):
        train(small_cfg(data, tmp_path / "resumed", epochs=2, model=m), log=lambda m: None)
    train(small_cfg(data, tmp_path / "resumed", epochs=2, model=m), resume="auto", log=lambda m: None)
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed", 2)


def test_mid_epoch_stop_then_resume_is_bit_identical(data, tmp_path, monkeypatch):
    import trainkit.distributed as D

    train(small_cfg(data, tmp_path / "straight", epochs=2), log=lambda m: None)
    calls = {"n": 0}

    def should_stop(self):
        calls["n"] += 1
        return calls["n"] == 6  # epoch 2 (4 videos per epoch + one end-of-epoch check), second video

    monkeypatch.setattr(D.GracefulStop, "should_stop", should_stop)
    out = train(small_cfg(data, tmp_path / "resumed", epochs=2), log=lambda m: None)
    assert out["stopped"] and (tmp_path / "resumed" / "latest.pt").exists()
    assert not (tmp_path / "resumed" / "dsn_checkpoint_ep2.pt").exists()
    monkeypatch.undo()
    train(small_cfg(data, tmp_path / "resumed", epochs=2), resume="auto", log=lambda m: None)
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed", 2)


def test_bad_checkpoint_is_a_user_error(tmp_path):
    bad = tmp_path / "dsn_checkpoint_ep1.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="dsn_checkpoint_ep1.pt"):
        load_policy(bad)
    torch.save({"config": DSNConfig(in_dim=4, enc_hidden=8, num_attn_heads=2).to_dict(), "model_type": "advanced",
                "model": {"nope": torch.zeros(1)}}, bad)
    with pytest.raises(UserError, match="does not hold a dsn model"):
        load_policy(bad)


def _cli(*args):
    from click.testing import CliRunner

    from dsn.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], prog_name="dsn")


def test_resume_takes_the_checkpoints_config_and_refuses_run_changing_flags(data, tmp_path):
    """issue 13 item 2: `dsn train --resume` restores the run's config and refuses flags that change the run."""
    import yaml

    run = tmp_path / "run"
    small = ["--enc_hidden", 16, "--num_attn_heads", 2, "--num_attn_layers", 1, "--num_scales", 2, "--quiet",
             "--device", "cpu", "--set", "eval_ms_swd=false", "--set", "eval_every=0"]
    assert _cli("train", "--dataset_root", data, "--save_dir", run, "--epochs", 1, "--lr", "3e-4", *small).exit_code == 0
    snapshot = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.suffix in (".pt", ".yaml")}
    other = tiny_dataset(tmp_path / "other", seed=5)
    for flags, key in [(["--dataset_root", other], "dataset_root"), (["--lr", "0.5"], "lr"),
                       (["--enc_hidden", 32], "model.enc_hidden"), (["--seed", 7], "seed"),
                       (["--set", "budget_beta=3"], "budget_beta")]:
        r = _cli("train", "--resume", "auto", "--save_dir", run, "--epochs", 2, *flags)
        assert r.exit_code == 2, (flags, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: resuming would change '{key}' from "), lines
        # nothing in the run folder was touched
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.suffix in (".pt", ".yaml")} == snapshot
    # No flags: everything (data, the small model, lr) comes from the checkpoint, not from the defaults.
    r = _cli("train", "--resume", "auto", "--save_dir", run, "--epochs", 2, "--quiet")
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["enc_hidden"] == 16 and saved["lr"] == 3e-4 and saved["epochs"] == 2
    assert saved["dataset_root"] == str(data)
    # --resume PATH without --save_dir continues in that run folder
    r = _cli("train", "--resume", run / "dsn_checkpoint_ep2.pt", "--epochs", 3, "--quiet")
    assert r.exit_code == 0, r.output
    assert (run / "dsn_checkpoint_ep3.pt").exists()
    # An explicit override flag accepts the change, and config.yaml records what the run now uses.
    r = _cli("train", "--resume", "auto", "--save_dir", run, "--epochs", 4, "--lr", "0.5", "--allow_config_change", "--quiet")
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((run / "config.yaml").read_text())["lr"] == 0.5


def test_resume_refuses_a_split_that_now_holds_other_videos(tmp_path):
    root = tiny_dataset(tmp_path / "d")
    train(small_cfg(root, tmp_path / "run", epochs=1, eval_every=0), log=lambda m: None)
    keys = [f"video_{i}" for i in range(1, 7)]
    (root / "splits.json").write_text(json.dumps([{"train_keys": keys[1:5], "test_keys": [keys[0], keys[5]]}]))
    with pytest.raises(UserError, match="^split 0 of .* holds other videos than the run being resumed"):
        train(small_cfg(root, tmp_path / "run", epochs=2, eval_every=0), resume="auto", log=lambda m: None)


def test_sigterm_during_validation_saves_the_epoch_without_it(data, tmp_path, monkeypatch):
    """Issue 24: validation polls trainkit's stop flag per video; a SIGTERM there stops within one video and
    saves the finished epoch (resumable) without the partial validation (no best checkpoint from it)."""
    import os
    import signal

    import dsn.evaluate as E

    calls = {"n": 0}
    real = E.policy_probs

    def probs(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1 and not torch.is_grad_enabled():  # the first scored video of the first validation
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(E, "policy_probs", probs)
    out = train(small_cfg(data, tmp_path / "run", epochs=2), log=lambda m: None)
    assert out["stopped"] and calls["n"] == 1
    ckpt = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and not (tmp_path / "run" / "best.pt").exists()
