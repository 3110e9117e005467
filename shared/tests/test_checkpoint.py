import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import trainkit as tk
from trainkit.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from trainkit.errors import UserError

HERE = Path(__file__).parent


def run_toy(*args):
    """The toy loop in this process (a fresh process per run is what the torchrun test does)."""
    import contextlib
    import io

    import toy_loop

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        toy_loop.main([str(a) for a in args])
    return out.getvalue()


def logged(run_dir):
    """metrics.jsonl rows without wall time, and every TensorBoard curve as (step, value) pairs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("time")
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    curves = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return rows, curves


def assert_same_run(straight, resumed, ranks=(0,)):
    for rank in ranks:
        a = json.loads((straight / f"result_rank{rank}.json").read_text())
        b = json.loads((resumed / f"result_rank{rank}.json").read_text())
        assert a["step"] == b["step"] and not a["stopped"] and not b["stopped"]
        assert a["params"] == b["params"]  # bit-identical: dropout, shuffled loader, accumulation, LR, skips
        assert a["ema_params"] == b["ema_params"]
        assert a["num_skipped"] == b["num_skipped"] == 1  # the injected NaN step, skipped in both
    rows_a, curves_a = logged(straight)
    rows_b, curves_b = logged(resumed)
    assert rows_a == rows_b  # each step logged once, same values (metrics.jsonl)
    assert set(curves_a) >= {"train/loss", "train/lr", "train/grad_norm", "train/epoch_loss"}
    assert curves_a == curves_b  # and the same TensorBoard curves


def assert_stopped_mid_epoch(run_dir, result):
    state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert result["stopped"] and state["step"] == result["step"]
    assert 0 < state["sampler"]["consumed"] < state["sampler"]["num_samples"]  # really mid-epoch
    assert state["stepper"]["micro_index"] == 0  # on an accumulation boundary
    assert state["step"] % result["steps_per_epoch"] != 0


def test_sigterm_mid_epoch_then_resume_is_bit_identical(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--epochs", "3", "--accum", "2", "--nan_loss_at_step", "3"]  # 8 steps per epoch
    run_toy("--run_dir", str(straight), *common)
    printed = run_toy("--run_dir", str(resumed), *common, "--sigterm_at_step", "11")
    assert "received SIGTERM: saved checkpoint at step 11" in printed
    first = json.loads((resumed / "result_rank0.json").read_text())
    assert_stopped_mid_epoch(resumed, first)
    assert first["params"] != json.loads((straight / "result_rank0.json").read_text())["params"]
    run_toy("--run_dir", str(resumed), *common, "--resume", "auto")
    assert_same_run(straight, resumed)
    rows, _ = logged(resumed)
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, 25))


def test_full_state_loads_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    np.random.rand(3)
    state = tk.training_state(model=model, optimizer=opt, scheduler=sched, scaler=scaler, ema=tk.EMA(model), step=7,
                              epoch=2, best_metric=np.float64(0.5), config={"lr": 1e-3, "name": "x"})
    path = save_checkpoint(tmp_path / "c.pt", state)
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 7 and loaded["format_version"] == 1 and isinstance(loaded["best_metric"], float)
    expected_np = np.random.rand(2)
    np.random.rand(5)
    torch.rand(1)
    model2 = torch.nn.Linear(3, 2)
    meta = tk.restore_training_state(loaded, model=model2, optimizer=torch.optim.AdamW(model2.parameters()))
    assert meta["epoch"] == 2 and meta["config"] == {"lr": 1e-3, "name": "x"}
    assert torch.equal(model2.weight, model.weight)
    assert np.array_equal(np.random.rand(2), expected_np)  # numpy RNG restored


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    real_save = torch.save

    def exploding_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temp file left behind


def test_auto_resume_skips_truncated_newest(tmp_path, capsys):
    mgr = CheckpointManager(tmp_path, keep_last=5, filename="ckpt_{step:04d}.pt")
    mgr.save({"step": 1}, step=1)
    mgr.save({"step": 2}, step=2)
    newest = tmp_path / "ckpt_0003.pt"
    mgr.save({"step": 3}, step=3)
    for p in (newest, tmp_path / "latest.pt"):
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        os.utime(p, None)
    with pytest.warns(UserWarning, match="skipping unusable checkpoint"):
        chosen = mgr.resolve_resume("auto")
    assert chosen == tmp_path / "ckpt_0002.pt"
    assert "ckpt_0003.pt" in capsys.readouterr().out


def test_keep_last_and_best(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2, filename="e{epoch:03d}.pt", best_metric="val", best_mode="max")
    for epoch, val in enumerate([0.1, 0.5, 0.3, 0.2], start=1):
        mgr.save({"epoch": epoch}, step=epoch, epoch=epoch, metrics={"val": val})
    assert sorted(p.name for p in tmp_path.glob("e*.pt")) == ["e003.pt", "e004.pt"]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    assert load_checkpoint(tmp_path / "latest.pt")["epoch"] == 4


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Exploit(marker)}, bad, pickle_module=pickle)
    with pytest.raises(UserError) as e:
        load_checkpoint(bad)
    assert "refused" in str(e.value) and str(bad) in str(e.value)
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    for i, junk in enumerate([b"not a checkpoint at all", b"junk\n", b"", b"\x80\x02}q\x00"]):
        path = tmp_path / f"junk{i}.pt"
        path.write_bytes(junk)
        with pytest.raises(UserError, match="corrupt or truncated") as e:
            load_checkpoint(path)
        assert str(path) in str(e.value)


def test_restore_into_wrong_model_is_user_error(tmp_path):
    state = tk.training_state(model=torch.nn.Linear(3, 2))
    with pytest.raises(UserError, match="does not match"):
        tk.restore_training_state(state, model=torch.nn.Linear(4, 2))


def test_unwrap_compiled_model_keys():
    model = torch.nn.Linear(2, 2)

    class Wrapper(torch.nn.Module):  # what torch.compile returns: the module under _orig_mod
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    assert list(tk.unwrap_model(Wrapper(model)).state_dict()) == ["weight", "bias"]


def test_resume_under_more_processes_gives_each_rank_its_own_stream(monkeypatch):
    # A single-process checkpoint (one RNG state, no rng_per_rank) resumed under torchrun with 2 ranks at an
    # epoch end (allowed): every rank restored the same state and then drew identical noise/timesteps.
    from trainkit.checkpoint import restore_training_state, training_state

    model = torch.nn.Linear(2, 2)
    torch.manual_seed(0)
    state = training_state(model=model, step=3, epoch=1)
    assert "rng_per_rank" not in state
    draws = {}
    for rank in (0, 1, 1):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
        restore_training_state(state, model=model)
        monkeypatch.undo()
        draw = (torch.rand(4).tolist(), float(np.random.rand()))
        assert draws.setdefault(rank, draw) == draw  # deterministic per rank
    assert draws[0] != draws[1]  # different per-step randomness per rank
    restore_training_state(state, model=model)  # a single process still restores the saved stream exactly
    torch.manual_seed(0)
    expected = torch.rand(4)
    restore_training_state(state, model=model)
    assert torch.equal(torch.rand(4), expected)
