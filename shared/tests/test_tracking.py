import json
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainkit.tracking import Tracker, resolve_wandb_mode


def read_events(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_scalars_images_figures_histograms_text(tmp_path):
    with Tracker(tmp_path) as tr:
        for step in (1, 2, 3):
            tr.log_scalars({"train/loss": 1.0 / step, "val/acc": 0.5}, step)
        tr.log_image("samples/img", np.random.rand(8, 8, 3), 3)
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        png = tr.log_figure("val/reconstructions", fig, 3)
        tr.log_histogram("weights", np.random.randn(100), 3)
        tr.log_text("notes", "hello", 3)
    acc = read_events(tmp_path)
    assert set(acc.Tags()["scalars"]) == {"train/loss", "val/acc"}
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("train/loss")] == [(1, 1.0), (2, 0.5), (3, 0.3333)]
    assert set(acc.Tags()["images"]) == {"samples/img", "val/reconstructions"}
    assert acc.Tags()["histograms"] == ["weights"]
    assert "notes/text_summary" in acc.Tags()["tensors"]
    assert png.exists() and png.parent.name == "samples"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["train/loss"] == 1.0


def test_resume_purges_steps_from_the_interrupted_run(tmp_path):
    with Tracker(tmp_path) as tr:
        for step in range(1, 6):
            tr.log_scalars({"loss": float(step)}, step)
    time.sleep(1.1)  # a new event file name (timestamped)
    with Tracker(tmp_path, purge_step=4) as tr:  # resumed from a checkpoint at step 3
        for step in range(4, 7):
            tr.log_scalars({"loss": 10.0 * step}, step)
    events = read_events(tmp_path).Scalars("loss")
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in events] == [1, 2, 3, 40, 50, 60]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_disabled_tracker_writes_nothing(tmp_path):
    tr = Tracker(tmp_path / "rank1", enabled=False)
    tr.log_scalars({"a": 1.0}, 1)
    fig, _ = plt.subplots()
    tr.log_figure("f", fig, 1)
    tr.close()
    assert not (tmp_path / "rank1").exists()


def test_wandb_mode_resolution(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.setattr("trainkit.tracking._has_wandb_key", lambda: False)
    mode, why = resolve_wandb_mode(None)
    assert mode == "offline" and "no W&B API key" in why
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode(None) == ("disabled", None)
    monkeypatch.setattr("trainkit.tracking._has_wandb_key", lambda: True)
    monkeypatch.setattr("trainkit.tracking._reachable", lambda host, port=443, timeout=2.0: False)
    mode, why = resolve_wandb_mode("online")
    assert mode == "offline" and "not reachable" in why


def test_wandb_offline_without_key_or_network_writes_run_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr("trainkit.tracking._has_wandb_key", lambda: False)
    start = time.time()
    tr = Tracker(tmp_path, wandb_project="trainkit-test", config={"lr": 0.1})
    assert tr.wandb_mode == "offline"
    tr.log_scalars({"train/loss": 0.5}, 1)
    tr.log_image("img", np.zeros((4, 4, 3)), 1)
    tr.close()
    assert time.time() - start < 120  # "never hangs": W&B start-up alone took 61 s on the loaded shared machine
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))
    assert list(runs[0].glob("files/media/images/img_1_*.png"))
    assert (tmp_path / "wandb_run_id.txt").read_text() in runs[0].name


def test_log_scalars_accepts_zero_dim_tensors(tmp_path):
    import torch

    with Tracker(tmp_path, tensorboard=False) as tr:
        tr.log_scalars({"train/grad_norm": torch.tensor(2.5), "train/loss": torch.tensor(0.25, dtype=torch.bfloat16),
                        "train/lr": 1e-3, "skip": None}, 4)
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["train/grad_norm"] == 2.5 and row["train/loss"] == 0.25 and row["train/lr"] == 1e-3
    assert list(row)[2:] == ["train/grad_norm", "train/loss", "train/lr"] and "skip" not in row
