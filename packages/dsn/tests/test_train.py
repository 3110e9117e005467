"""Training: the REINFORCE signal on tiny data, cache on/off equality, the eccv16 h5 schema without thumbnails."""
import json

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # the shared 2-core machine: tiny ops are much slower with thread contention

from dsn.config import DSNConfig, TrainConfig
from dsn.data import Video, write_dataset
from dsn.data import load_splits, load_videos
from dsn.evaluate import evaluate_checkpoint, load_policy
from dsn.reward import compute_reward
from dsn.train import train
from trainkit.errors import UserError


def tiny_dataset(root, *, n_videos=6, T=48, D=16, seed=0, frames=True, annotated=True):
    """Videos of 4 shots of unequal length (a feature cluster each); users pick the 'important' shot."""
    rng = np.random.default_rng(seed)
    videos = []
    for i in range(n_videos):
        cuts = np.sort(rng.choice(np.arange(3, T - 3), size=3, replace=False))
        bounds = np.concatenate([[0], cuts, [T]])
        centres = rng.normal(size=(4, D))
        feats = np.concatenate([c + 0.3 * rng.normal(size=(b1 - b0, D)) for c, b0, b1 in zip(centres, bounds, bounds[1:])])
        feats = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)
        stride = 15
        cps = np.stack([bounds[:-1] * stride, bounds[1:] * stride - 1], 1)
        user = gt = None
        if annotated:
            important = int(rng.integers(4))
            user = np.zeros((3, T * stride), dtype=np.float32)
            for u in range(3):
                s = important if u else (important + 1) % 4
                user[u, cps[s, 0] : cps[s, 0] + (cps[s, 1] - cps[s, 0]) // 2] = 1
            gt = user.mean(0)[::stride].astype(np.float32)
        thumbs = None
        if frames:
            colours = rng.integers(0, 255, size=(4, 3))
            thumbs = np.concatenate([np.broadcast_to(c, (b1 - b0, 8, 8, 3)) for c, b0, b1 in zip(colours, bounds, bounds[1:])])
            thumbs = np.clip(thumbs + rng.integers(-10, 10, size=thumbs.shape), 0, 255).astype(np.uint8)
        videos.append(Video(key=f"video_{i + 1}", features=feats, picks=np.arange(T) * stride, n_frames=T * stride,
                            change_points=cps, n_frame_per_seg=cps[:, 1] - cps[:, 0] + 1, user_summary=user,
                            gtscore=gt, frames=thumbs, fps=30.0))
    keys = [v.key for v in videos]
    write_dataset(root, videos, [{"train_keys": keys[:-2], "test_keys": keys[-2:]}])
    return root


def small_cfg(root, save_dir, **kw):
    model = kw.pop("model", {})
    m = DSNConfig(**{"enc_hidden": 16, "num_attn_heads": 2, "num_attn_layers": 1, "num_scales": 2, **model})
    return TrainConfig(model=m, dataset_root=str(root), save_dir=str(save_dir), device="cpu", quiet=True,
                       **{"epochs": 2, "eval_ms_swd": False, **kw})


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("tiny"))


def expected_rewards(model, videos, keys, n=400):
    """(E[R] under the policy, E[R] under a constant policy with the same mean p), averaged over videos.

    Many episodes from a fixed generator make this a low-noise measurement; the second number removes
    the reward's dependence on how many steps are picked.
    """
    g = torch.Generator().manual_seed(0)
    pol, flat = [], []
    with torch.no_grad():
        for k in keys:
            x = torch.from_numpy(videos[k].features)
            p = model(x[None])[0]
            pol.append(compute_reward(x, (torch.rand(n, len(p), generator=g) < p).float()).mean().item())
            flat.append(compute_reward(x, (torch.rand(n, len(p), generator=g) < p.mean()).float()).mean().item())
    return float(np.mean(pol)), float(np.mean(flat))


@pytest.mark.parametrize("model_type", ["baseline", "advanced"])
def test_training_signal(data, tmp_path, model_type):
    cfg = small_cfg(data, tmp_path / "run", model={"model_type": model_type}, epochs=30, lr=3e-3,
                    budget_ratio=0.1, eval_every=0, seed=3, keep_last=30)
    train(cfg, log=lambda m: None)
    videos = load_videos(data)
    keys = load_splits(data)[0]["train_keys"]
    first, _ = load_policy(tmp_path / "run" / "dsn_checkpoint_ep1.pt")
    last, _ = load_policy(tmp_path / "run" / "dsn_checkpoint_ep30.pt")
    r_first, flat_first = expected_rewards(first, videos, keys)
    r_last, flat_last = expected_rewards(last, videos, keys)
    # The policy's expected reward rises, and by more than a same-ratio constant policy's does.
    assert r_last > r_first + 0.01, (r_first, r_last)
    assert r_last - flat_last > r_first - flat_first + 0.005, (r_first, flat_first, r_last, flat_last)
    # The selection ratio settles near the budget (the head starts there; the regulariser keeps it there).
    sel = [r["train/sel_ratio"] for r in metrics(tmp_path / "run")]
    assert abs(np.mean(sel[-10:]) - 0.1) < 0.03, sel


def test_budget_regulariser_pulls_selection_ratio_to_budget(data, tmp_path):
    # Start far away (p = 0.5): the regulariser alone must bring the ratio down to the budget.
    import dsn.train as T

    cfg = small_cfg(data, tmp_path / "run", epochs=25, lr=3e-3, budget_ratio=0.1, eval_every=0)
    original = T.build_model
    T.build_model = lambda c, init_prob=None: original(c, init_prob=0.5)
    try:
        train(cfg, log=lambda m: None)
    finally:
        T.build_model = original
    sel = [r["train/sel_ratio"] for r in metrics(tmp_path / "run")]
    assert sel[0] > 0.3
    assert abs(np.mean(sel[-5:]) - 0.1) < 0.04, sel


def test_cache_on_off_identical_parameters(data, tmp_path):
    outs = {}
    for use_cache in (True, False):
        cfg = small_cfg(data, tmp_path / f"c{int(use_cache)}", use_cache=use_cache, epochs=3, eval_every=1)
        summary = train(cfg, log=lambda m: None)
        model, _ = load_policy(summary["checkpoint"])
        outs[use_cache] = (model.state_dict(), summary)
    on, off = outs[True][0], outs[False][0]
    assert all(torch.equal(on[k], off[k]) for k in on)
    assert outs[True][1]["val"] == outs[False][1]["val"]
    stats = outs[True][1]["cache"]
    # 4 training videos x (reward matrices + pooled inputs) miss once, then hit in later epochs.
    assert stats["cache/size"] > 0 and stats["cache/hits"] > 0 and 0 < stats["cache/hit_rate"] < 1
    rows = metrics(tmp_path / "c1")
    assert [r["cache/hits"] for r in rows] == sorted(r["cache/hits"] for r in rows)
    assert "cache/hits" not in metrics(tmp_path / "c0")[0]


def test_eccv16_schema_without_thumbnails_trains_and_evaluates(eccv16_root, tmp_path):
    # conftest's fixture: the SumMe/TVSum layout written with h5py directly (float n_frames, int32 picks,
    # float user summaries, gtsummary, video_name, no thumbnails).
    summary = train(small_cfg(eccv16_root, tmp_path / "run", epochs=1), log=lambda m: None)
    assert summary["val"]["MS_SWD"] is None and summary["val"]["F"] is not None
    result = evaluate_checkpoint(summary["checkpoint"], eccv16_root, split_index=1)
    for name in ("model", "random", "uniform"):
        assert result[name]["MS_SWD"] is None
        assert result[name]["F"] is not None and 0 <= result[name]["F"] <= 100
        assert result[name]["RecErr"] is not None
    assert result["uniform"]["kendall_tau"] is None
    assert any("MS_SWD skipped" in n for n in result["info"]["notes"])


def test_bad_split_and_feature_size_are_user_errors(data, tmp_path):
    with pytest.raises(UserError, match=r"split index 7 out of range \(--split_index\)"):
        train(small_cfg(data, tmp_path / "a", split_index=7), log=lambda m: None)
    cfg = small_cfg(data, tmp_path / "b")
    cfg.model.in_dim = 99
    with pytest.raises(UserError, match="model.in_dim=99"):
        train(cfg, log=lambda m: None)


def test_keyframe_selection_to_budget():
    from dsn.evaluate import select_keyframes

    s = np.array([0.9, 0.8, 0.85, 0.1, 0.2, 0.3, 0.1, 0.05, 0.0, 0.0])
    # k = 0.2 * 10 = 2. Plain top-k takes the two best neighbours; suppression (radius 10 // 4 = 2) moves on.
    assert select_keyframes(s, 0.2, "topk").tolist() == [0, 2]
    assert select_keyframes(s, 0.2, "nms").tolist() == [0, 5]
    # Too little room to suppress: still exactly k keyframes.
    assert len(select_keyframes(np.linspace(0, 1, 7), 0.9, "nms")) == 6
    with pytest.raises(UserError, match="unknown keyframe selection"):
        select_keyframes(s, 0.2, "best")


def test_learned_positions_shorter_than_a_video_fail_before_training(data, tmp_path):
    # The tiny videos have 48 steps; a 40-step learned table used to raise mid-training (issue 13 item 8).
    cfg = small_cfg(data, tmp_path / "run", model={"pos_encoding_type": "learned", "max_len": 40})
    with pytest.raises(UserError, match=r"^video 'video_\d+' has 48 steps, more than .*model.max_len=40"):
        train(cfg, log=lambda m: None)
    assert not (tmp_path / "run").exists()
    cfg = small_cfg(data, tmp_path / "ok", epochs=1, eval_every=0, model={"pos_encoding_type": "learned", "max_len": 48})
    assert train(cfg, log=lambda m: None)["checkpoint"]


def test_cache_counts_training_lookups_only(data, tmp_path):
    # issue 13 item 13: validation lookups used to be counted in cache/hit_rate. The advanced model caches two
    # entries per training video (reward matrices, pooled inputs): all misses in epoch 1, all hits in epoch 2.
    summary = train(small_cfg(data, tmp_path / "run", epochs=2, eval_every=1, select_fraction=0.0), log=lambda m: None)
    assert summary["cache"]["cache/size"] == 2 * 4
    assert summary["cache"]["cache/hits"] == 2 * 4 and summary["cache"]["cache/hit_rate"] == 0.5


def test_selection_split_is_fixed_disjoint_and_sized():
    from dsn.train import selection_split

    keys = [f"video_{i}" for i in range(1, 25)]
    fit, sel = selection_split(keys, 0.2, split_index=3)
    assert len(sel) == 5 and len(fit) == 19 and not set(fit) & set(sel) and set(fit) | set(sel) == set(keys)
    assert selection_split(keys, 0.2, split_index=3) == (fit, sel)  # the same for every seed and model
    assert selection_split(keys, 0.2, split_index=4)[1] != sel
    assert selection_split(keys, 0.0, split_index=3) == (keys, [])
    assert selection_split(["a"], 0.2, split_index=0) == (["a"], [])
    assert selection_split(["a", "b", "c"], 0.2, split_index=0)[1].__len__() == 1


def test_best_checkpoint_is_the_best_epoch_on_held_out_training_videos(data, tmp_path):
    """best.pt is the epoch with the highest select/score (later epoch on ties), scored on training videos that
    are never trained on and never test videos; the last epoch is not kept by default."""
    cfg = small_cfg(data, tmp_path / "run", epochs=4, eval_every=0, lr=3e-3)
    summary = train(cfg, log=lambda m: None)
    rows = metrics(tmp_path / "run")
    scores = [r["select/score"] for r in rows]
    assert scores == [r["select/kendall_tau"] for r in rows]  # annotated data: per-annotator tau
    best = max(range(len(scores)), key=lambda i: (scores[i], i)) + 1
    ckpt = torch.load(summary["checkpoint"], weights_only=True)
    assert summary["checkpoint"].endswith("best.pt") and ckpt["epoch"] == best == summary["best_epoch"]
    assert rows[-1]["select/best_epoch"] == best
    split = ckpt["train_state"]["extra"]["split_keys"]
    from dsn.train import selection_split

    fit, sel = selection_split(split["train_keys"], cfg.select_fraction, cfg.split_index)
    assert sel and not set(sel) & set(split["test_keys"])
    assert set(ckpt["train_state"]["extra"]["baselines"]) == set(fit)  # only the fit videos were trained on
    # without a selection part the last epoch is the result
    last = train(small_cfg(data, tmp_path / "last", epochs=1, eval_every=0, select_fraction=0.0), log=lambda m: None)
    assert last["checkpoint"].endswith("dsn_checkpoint_ep1.pt") and last["best_epoch"] is None
