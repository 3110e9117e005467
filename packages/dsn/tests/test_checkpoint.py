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
    assert summary["checkpoint"] == str(path)
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
