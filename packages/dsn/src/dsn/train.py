"""REINFORCE training of a DSN policy (baseline BiLSTM or advanced), read top to bottom.

Per video and step: the policy gives probabilities p [T]; N episodes of actions are drawn from
Bernoulli(p) at once; each episode's diversity-representativeness reward (dsn.reward) becomes an
advantage A (``reward_advantage``: by default R minus the mean of the step's other episodes, divided by
the episodes' reward std; the original's per-video moving average is ``reward_baseline=moving_average``);
the loss is

    -mean_episodes (mean_t log pi(a_t)) * A  +  beta * (mean_t p_t - budget_ratio)^2  -  c_ent * H(p)

(summed over episodes, as in the original code, when the advantage is not normalised). Adam, gradient
clipping (trainkit OptimizerStep), one checkpoint per epoch. A fixed part of the split's training videos
(``select_fraction``) is never trained on: it is scored after every epoch and ``best.pt`` is the best epoch
on it. The test videos are only monitored (``val/*`` every ``eval_every`` epochs), never used to choose.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributions import Bernoulli

from trainkit.checkpoint import CheckpointManager, load_checkpoint, restore_training_state, save_checkpoint, training_state
from trainkit.cli import prepare_run_dir
from trainkit.runsafety import EvalStopped, check_run_target
from trainkit.config import config_changes, config_to_dict, load_config, resolve_resume_config, save_config
from trainkit.device import check_precision, make_grad_scaler, resolve_device, seed_everything
from trainkit.distributed import GracefulStop
from trainkit.errors import UserError
from trainkit.progress import progress
from trainkit.step import OptimizerStep
from trainkit.tracking import Tracker

from .cache import LRUCache, VideoWork, content_hash
from .config import RUN_DEFINING, TrainConfig
from .evaluate import check_sequence_length, evaluate_scores, policy_probs, score_videos, select_keyframes
from .model import build_model, count_parameters
from .reward import batched_reward, compute_reward

CHECKPOINT_NAME = "dsn_checkpoint_ep{epoch}.pt"


def checkpoint_payload(model, cfg: TrainConfig, *, epoch: int, train_state: dict | None = None) -> dict:
    """The guide's formats: baseline ``{"encoder", "policy", ...}``, advanced ``{"model", "config", "model_type"}``.

    ``config`` is the model's DSNConfig as a plain dict (``torch.load`` with ``weights_only=True`` reads it);
    the run's full config and trainkit's resume state ride along under extra keys.
    """
    if cfg.model.model_type == "baseline":
        payload = {"encoder": model.encoder.state_dict(), "policy": model.policy.state_dict()}
    else:
        payload = {"model": model.state_dict()}
    payload.update({"config": config_to_dict(cfg.model), "model_type": cfg.model.model_type, "epoch": int(epoch),
                    "train_config": config_to_dict(cfg)})
    if train_state is not None:
        payload["train_state"] = train_state
    return payload


def reward_advantage(rewards: torch.Tensor, moving_baseline: float, cfg: TrainConfig) -> torch.Tensor:
    """Per-episode advantage ``[N]``.

    ``moving_average`` (the original DSN): R - b_video, b a moving average over epochs. The rewards of one
    video's episodes differ by ~0.005 around ~0.85, so this advantage is mostly the lag of b, shared by all
    episodes; ``episodes``: R minus the mean of the *other* episodes of the same step (leave-one-out, unbiased),
    which keeps only what tells the episodes apart. ``advantage_norm`` divides by the episodes' reward std,
    so the policy-gradient term keeps one scale next to the budget regulariser whatever the reward's spread.
    """
    if cfg.reward_baseline == "episodes" and rewards.numel() > 1:
        n = rewards.numel()
        advantage = (rewards - rewards.mean()) * n / (n - 1)
    else:
        advantage = rewards - moving_baseline
    if cfg.advantage_norm and rewards.numel() > 1:
        advantage = advantage / (rewards.std() + 1e-6)
    return advantage


def reinforce_step(model, keys: list[str], feats: dict, digests: dict, work: VideoWork, baselines: dict,
                   cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss for a batch of videos (mean over videos) and the batch's statistics."""
    probs = policy_probs(model, [feats[k] for k in keys], [digests[k] for k in keys], work, cfg.precision)
    losses, rewards_all, sel, ent, mean_p = [], [], [], [], []
    for i, key in enumerate(keys):
        p = probs[i, : feats[key].shape[0]]
        dist = Bernoulli(probs=p)
        actions = dist.sample((cfg.num_episodes,))  # [N, T]
        log_probs = dist.log_prob(actions).mean(1)  # [N]
        div_mat, rep_mat = work.reward_matrices(digests[key], feats[key], cfg.temporal_cutoff, cfg.rep_squared)
        rewards = batched_reward(div_mat, rep_mat, actions)
        advantage = reward_advantage(rewards, baselines[key], cfg)
        entropy = dist.entropy().mean()
        # The original sums over episodes; with normalised advantages the mean keeps the policy-gradient term
        # on one scale whatever num_episodes is, so budget_beta means the same for 5 or 32 episodes.
        pg = log_probs * advantage
        pg = pg.mean() if cfg.advantage_norm else pg.sum()
        loss = -pg + cfg.budget_beta * (p.mean() - cfg.budget_ratio) ** 2
        if cfg.entropy_coef:
            loss = loss - cfg.entropy_coef * entropy
        losses.append(loss)
        baselines[key] = cfg.baseline_momentum * baselines[key] + (1 - cfg.baseline_momentum) * float(rewards.mean())
        rewards_all.append(float(rewards.mean()))
        sel.append(float(actions.mean()))
        ent.append(float(entropy.detach()))
        mean_p.append(float(p.detach().mean()))
    stats = {"train/mean_reward": float(np.mean(rewards_all)), "train/sel_ratio": float(np.mean(sel)),
             "train/entropy": float(np.mean(ent)), "train/mean_prob": float(np.mean(mean_p))}
    return torch.stack(losses).mean(), stats


def find_resume_checkpoint(save_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint ``--resume`` names: a path (checked to load), or for ``auto`` the newest loadable one."""
    if not resume:
        return None
    if resume != "auto":
        return CheckpointManager(save_dir, filename=CHECKPOINT_NAME).resolve_resume(resume)
    if not Path(save_dir).is_dir():
        return None
    return CheckpointManager(save_dir, filename=CHECKPOINT_NAME).resolve_resume("auto")


def resume_config(config_path, overrides, cli_values: dict, *, resume: str, allow_changes: bool = False) -> TrainConfig:
    """The config of ``dsn train --resume``: the checkpoint's config, with only the flags the user typed on top.

    A typed flag that changes what the run is (``RUN_DEFINING``: data, split, model, optimiser, reward, seed,
    evaluation protocol) is a one-line error naming the key, unless ``--allow_config_change``. Without a
    checkpoint to resume (``auto`` on an empty folder) the flags build a fresh config as usual.
    """
    fresh = load_config(TrainConfig, config_path, overrides, cli_values)
    path = find_resume_checkpoint(fresh.save_dir, resume)
    if path is None:
        return fresh
    saved = load_checkpoint(path).get("train_config")
    if not isinstance(saved, dict):
        raise UserError("checkpoint has no training config", str(path), "expected a dsn training checkpoint")
    base = config_to_dict(TrainConfig.from_saved(saved, where=str(path)))
    if resume != "auto" and "save_dir" not in cli_values:
        # `--resume RUN/dsn_checkpoint_ep3.pt` continues in RUN, not in the default folder.
        base["save_dir"] = str(Path(path).parent)
    return resolve_resume_config(TrainConfig, base, path=config_path, overrides=overrides, cli_values=cli_values,
                                 run_defining=RUN_DEFINING, allow_changes=allow_changes,
                                 override_flag="--allow_config_change", where=str(path))


def check_resumed_run(ckpt: dict, cfg: TrainConfig, split_keys: dict, where: str) -> None:
    """A resumed run must be the checkpoint's run: same run-defining settings and the same videos.

    Catches callers that build the config themselves (``dsn ablation`` re-run with other ``--set`` values,
    the Python API), and a dataset folder whose contents changed under the same path.
    """
    saved = config_to_dict(TrainConfig.from_saved(ckpt.get("train_config") or {}, where=where))
    for key, old, new in config_changes(saved, config_to_dict(cfg)):
        if key.split(".")[0] in RUN_DEFINING:
            raise UserError(f"resuming would change '{key}' from {old!r} to {new!r}, which changes what the run is",
                            where, "the checkpoint's value (use another --save_dir for a new run, or "
                                   "--allow_config_change)")
    saved_split = (ckpt.get("train_state") or {}).get("extra", {}).get("split_keys")
    if saved_split is not None and saved_split != split_keys:
        raise UserError(f"split {cfg.split_index} of {cfg.dataset_root or 'the default dataset'} holds other videos "
                        "than the run being resumed", where, "the dataset the run was trained on")


def selection_split(train_keys: list[str], fraction: float, split_index: int) -> tuple[list[str], list[str]]:
    """(fit_keys, select_keys): a fixed part of the split's *training* videos held out to choose the checkpoint.

    Deterministic in the split (not in the training seed), so every seed and both models of a split choose on
    the same videos; the test videos are never among them. ``fraction`` 0, or fewer than 2 training videos:
    no selection part (the last epoch is kept).
    """
    n = len(train_keys)
    n_select = min(n - 1, max(1, round(fraction * n))) if fraction > 0 and n >= 2 else 0
    order = np.random.default_rng([7919, split_index, n]).permutation(n)
    chosen = set(int(i) for i in order[:n_select])
    return ([k for i, k in enumerate(train_keys) if i not in chosen], [k for i, k in enumerate(train_keys) if i in chosen])


def selection_score(model, videos: list, work: VideoWork, cfg: TrainConfig, device, digests: dict) -> dict[str, float]:
    """Checkpoint-selection metrics on the held-out training videos: ``select/score`` (higher is better) is the
    per-annotator Kendall tau when they are annotated (``select_metric`` auto/kendall_tau), their F (``F``), or
    the DSN reward of the inference keyframes (``reward``, and ``auto`` without annotations)."""
    scores = score_videos(model, videos, work, device=device, precision=cfg.precision, digests=digests)
    out: dict[str, float] = {}
    annotated = all(v.user_summary is not None for v in videos)
    if annotated:
        m = evaluate_scores(videos, scores, budget_ratio=cfg.budget_ratio, proportion=cfg.summary_proportion,
                            f_mode=cfg.f_mode, ms_swd=False, selection=cfg.keyframe_selection)
        out.update({f"select/{k}": float(m[k]) for k in ("F", "kendall_tau") if m[k] is not None})
    rewards = []
    for v in videos:
        feats = torch.from_numpy(np.ascontiguousarray(v.features, dtype=np.float32))
        actions = torch.zeros(1, v.n_steps)
        actions[0, torch.from_numpy(select_keyframes(scores[v.key], cfg.budget_ratio, cfg.keyframe_selection))] = 1.0
        rewards.append(float(compute_reward(feats, actions, cfg.temporal_cutoff, cfg.rep_squared)[0]))
    out["select/reward"] = float(np.mean(rewards))
    metric = cfg.select_metric if cfg.select_metric != "auto" else ("kendall_tau" if annotated else "reward")
    if f"select/{metric}" not in out:
        raise UserError(f"select_metric={metric} needs annotated videos", "select_metric",
                        "auto or reward for a dataset without user_summary")
    out["select/score"] = out[f"select/{metric}"]
    return out


def load_training_data(cfg: TrainConfig):
    """(dataset_root, videos, train_keys, test_keys) for the configured split."""
    from .data import ensure_default_dataset, load_splits, load_videos

    root = Path(cfg.dataset_root) if cfg.dataset_root else ensure_default_dataset()
    splits = load_splits(root)
    if not 0 <= cfg.split_index < len(splits):
        raise UserError(f"split index {cfg.split_index} out of range", "--split_index",
                        f"expected 0..{len(splits) - 1} ({len(splits)} splits in {root})")
    train_keys = list(splits[cfg.split_index]["train_keys"])
    test_keys = list(splits[cfg.split_index]["test_keys"])
    videos = load_videos(root, keys=train_keys + test_keys)
    if not train_keys:
        raise UserError("split has no training videos", f"{root} split {cfg.split_index}", "expected train_keys")
    dims = {v.features.shape[1] for v in videos.values()}
    if len(dims) != 1:
        raise UserError(f"videos have different feature sizes {sorted(dims)}", str(root), "expected one D for all")
    return root, videos, train_keys, test_keys


def train(cfg: TrainConfig, *, resume: str | None = None, allow_config_change: bool = False, log=print,
          allow_rewind: bool = False) -> dict[str, Any]:
    """Train; returns a summary (final validation metrics, parameter count, timing, cache stats, paths).

    With ``resume``, ``cfg`` must describe the checkpoint's run (see ``resume_config`` for building it from
    flags); a run-defining difference is refused unless ``allow_config_change``.
    """
    # ---------------------------------------------------------------- setup
    device = resolve_device(cfg.device)
    check_precision(cfg.precision)
    if device.type == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    seed_everything(cfg.seed)
    root, videos, train_keys, test_keys = load_training_data(cfg)
    in_dim = next(iter(videos.values())).features.shape[1]
    if cfg.model.in_dim not in (0, in_dim):
        raise UserError(f"model.in_dim={cfg.model.in_dim}", str(root), f"expected {in_dim} (the dataset's feature size)")
    cfg.model.in_dim = in_dim
    check_sequence_length(cfg.model, videos, str(root))
    split_keys = {"train_keys": list(train_keys), "test_keys": list(test_keys)}
    # A part of the training videos chooses the checkpoint; the policy is trained on the rest.
    fit_keys, select_keys = selection_split(train_keys, cfg.select_fraction, cfg.split_index)
    # A resume must belong to the folder's run (run id) and not rewind it unless --allow_rewind; checked
    # before anything is written, and run.json is written only once the checkpoint has loaded.
    early_path = CheckpointManager(cfg.save_dir, filename=CHECKPOINT_NAME).resolve_resume(resume) if resume else None
    early = load_checkpoint(early_path) if early_path is not None else None
    identity = check_run_target(cfg.save_dir, state=early, resume_path=early_path, allow_rewind=allow_rewind,
                                step=((early or {}).get("train_state") or {}).get("step"))
    run_dir = prepare_run_dir(cfg.save_dir, resume=resume)
    if early is None:
        identity.commit()

    model = build_model(cfg.model, init_prob=cfg.budget_ratio).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    stepper = OptimizerStep(model, optimizer, scaler=make_grad_scaler(device, cfg.precision), grad_clip=cfg.grad_clip)
    cache = LRUCache(cfg.cache_size) if cfg.use_cache else None
    work = VideoWork(cache)
    # Scoring held-out videos bypasses the cache, so cache/* describe training lookups only.
    eval_work = VideoWork(None)
    feats = {k: torch.from_numpy(np.ascontiguousarray(v.features, dtype=np.float32)).to(device) for k, v in videos.items()}
    digests = {k: content_hash(f) for k, f in feats.items()}
    baselines = {k: 0.0 for k in fit_keys}
    manager = CheckpointManager(run_dir, keep_last=cfg.keep_last, filename=CHECKPOINT_NAME,
                                best_metric="select/score" if select_keys else None, best_mode="max")
    manager.run = identity

    start_epoch, step, epoch_pos, partial = 0, 0, 0, None
    resume_path = early_path
    if resume and resume_path is None:
        log(f"no checkpoint to resume in {run_dir}; starting from scratch")
    if resume_path is not None:
        ckpt = early
        if "train_state" not in ckpt:
            raise UserError("checkpoint has no training state", str(resume_path), "expected a dsn training checkpoint")
        if not allow_config_change:
            check_resumed_run(ckpt, cfg, split_keys, str(resume_path))
        meta = restore_training_state(ckpt["train_state"], model=model, optimizer=optimizer, where=str(resume_path))
        extra = meta["extra"] or {}
        stepper.load_state_dict(extra["stepper"])
        baselines.update({k: float(v) for k, v in extra["baselines"].items()})
        start_epoch, step = int(meta["epoch"]), int(meta["step"])
        manager.load_manager_state(ckpt)
        identity.commit()   # loaded: the folder may change now (a confirmed rewind is archived first)
        epoch_pos, partial = int(extra.get("epoch_pos", 0)), extra.get("partial")
        log(f"resumed from {resume_path} (epoch {start_epoch}, step {step})")
    save_config(cfg, run_dir)
    num_params = count_parameters(model)
    log(f"{cfg.model.model_type} model: {num_params:,} parameters; {len(fit_keys)} train + {len(select_keys)} "
        f"checkpoint-selection / {len(test_keys)} test videos from {root}; device {device}")

    tracker = Tracker(run_dir, config=config_to_dict(cfg), wandb_project=cfg.wandb_project,
                      purge_step=start_epoch + 1 if resume_path is not None else None)
    stop = GracefulStop()
    test_videos = [videos[k] for k in test_keys]
    select_videos = [videos[k] for k in select_keys]
    best_epoch = (ckpt.get("best_epoch") if resume_path is not None else None)
    has_frames = any(v.frames is not None for v in test_videos)
    if cfg.eval_ms_swd and test_videos and not has_frames:
        log("note: MS_SWD skipped (the dataset has no thumbnails)")

    def state_for_checkpoint(epoch_done: int, pos: int = 0, part: dict | None = None) -> dict:
        extra = {"stepper": stepper.state_dict(), "baselines": dict(baselines), "epoch_pos": pos, "split_keys": split_keys}
        if part is not None:
            extra["partial"] = part
        return training_state(model=model, optimizer=optimizer, step=step, epoch=epoch_done,
                              config=config_to_dict(cfg), extra=extra)

    # ---------------------------------------------------------------- loop
    val: dict[str, float | None] = {}
    train_time = 0.0
    try:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            t0 = time.perf_counter()
            # The order depends only on (seed, epoch), so a resumed run sees the same order.
            # A CPU generator: the permutation is a host-side list of indices, never a device tensor.
            order = torch.randperm(len(fit_keys), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch)).tolist()
            batches = [[fit_keys[i] for i in order[j : j + cfg.batch_size]] for j in range(0, len(order), cfg.batch_size)]
            sums = dict(partial) if partial else {}
            partial = None
            bar = progress(range(epoch_pos, len(batches)), total=len(batches), initial=epoch_pos,
                           desc=f"epoch {epoch + 1}/{cfg.epochs}", quiet=cfg.quiet)
            for b in bar:
                with stepper.micro_batch():
                    loss, stats = reinforce_step(model, batches[b], feats, digests, work, baselines, cfg)
                    out = stepper.backward(loss)
                step += 1
                stats["train/loss"] = float(loss.detach())
                stats["train/grad_norm"] = float(out.grad_norm) if out.grad_norm is not None else 0.0
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                sums["_n"] = sums.get("_n", 0) + 1
                bar.set_postfix(reward=f"{stats['train/mean_reward']:.4f}", sel=f"{stats['train/sel_ratio']:.3f}")
                if stop.should_stop() and b + 1 < len(batches):
                    # Mid-epoch: save where we are (latest.pt) so --resume auto continues from this video.
                    payload = checkpoint_payload(model, cfg, epoch=epoch, train_state=state_for_checkpoint(epoch, b + 1, sums))
                    payload["best_epoch"] = best_epoch
                    payload["manager"] = {"best_value": manager.best_value, "best_metric": manager.best_metric}
                    save_checkpoint(run_dir / CheckpointManager.LATEST, identity.stamp(payload))
                    identity.note_checkpoint(step)
                    log(f"stopped by signal at epoch {epoch + 1}, video batch {b + 1}/{len(batches)}; "
                        f"saved {run_dir / CheckpointManager.LATEST} (resume with --resume auto)")
                    return {"stopped": True, "run_dir": str(run_dir)}
            epoch_pos = 0
            train_time += time.perf_counter() - t0
            n = sums.pop("_n")
            scalars = {k: v / n for k, v in sums.items()}
            scalars["time/epoch_s"] = time.perf_counter() - t0
            if cache is not None:
                scalars.update(cache.stats())

            try:
                if test_videos and cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                    scores = score_videos(model, test_videos, eval_work, device=device, precision=cfg.precision,
                                          digests=digests)
                if select_videos:
                    select_scores = selection_score(model, select_videos, eval_work, cfg, device, digests)
            except EvalStopped:
                # SIGTERM during validation (trainkit eval_should_stop): the finished epoch is saved without it
                payload = checkpoint_payload(model, cfg, epoch=epoch + 1, train_state=state_for_checkpoint(epoch + 1))
                payload["best_epoch"] = best_epoch
                path = manager.save(payload, step=step, epoch=epoch + 1, metrics=None)
                log(f"stopped by signal during validation after epoch {epoch + 1} (its validation is skipped); "
                    f"saved {path} (resume with --resume auto)")
                return {"stopped": True, "run_dir": str(run_dir)}
            if test_videos and cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                val = evaluate_scores(test_videos, scores, budget_ratio=cfg.budget_ratio, proportion=cfg.summary_proportion,
                                      f_mode=cfg.f_mode, ms_swd=cfg.eval_ms_swd, selection=cfg.keyframe_selection)
                names = {"RecErr": "val/RecErr_mean", "Diversity": "val/Diversity_mean", "MS_SWD": "val/MS_SWD_mean",
                         "F": "val/F", "kendall_tau": "val/kendall_tau", "spearman_rho": "val/spearman_rho",
                         "kendall_tau_gtscore": "val/kendall_tau_gtscore", "spearman_rho_gtscore": "val/spearman_rho_gtscore"}
                scalars.update({names[k]: v for k, v in val.items() if v is not None})
            if select_videos:
                scalars.update(select_scores)
                if manager.is_better(scalars["select/score"]) or scalars["select/score"] == manager.best_value:
                    best_epoch = epoch + 1
                scalars["select/best_epoch"] = best_epoch
            tracker.log_scalars(scalars, step=epoch + 1)
            payload = checkpoint_payload(model, cfg, epoch=epoch + 1, train_state=state_for_checkpoint(epoch + 1))
            payload["best_epoch"] = best_epoch
            path = manager.save(payload, step=step, epoch=epoch + 1, metrics=scalars)
            if not cfg.quiet:
                shown = {k.split("/")[-1]: round(v, 4) for k, v in scalars.items()
                         if k.startswith(("train/mean_reward", "train/sel_ratio", "val/", "cache/hit_rate"))}
                log(f"epoch {epoch + 1}/{cfg.epochs} {shown} -> {path}")
            if stop.should_stop() and epoch + 1 < cfg.epochs:
                log(f"stopped by signal after epoch {epoch + 1}; resume with --resume auto")
                return {"stopped": True, "run_dir": str(run_dir)}
    finally:
        # Also on errors: put the signal handlers back and flush the event files.
        stop.restore()
        tracker.close()
    return {
        "stopped": False, "run_dir": str(run_dir), "dataset_root": str(root), "num_params": num_params,
        "train_time_s": train_time, "val": val, "cache": cache.stats() if cache is not None else None,
        # The checkpoint chosen on the selection videos (best.pt), else the last epoch's.
        "checkpoint": (str(run_dir / CheckpointManager.BEST) if select_keys and (run_dir / CheckpointManager.BEST).exists()
                       else str(manager.periodic_files()[-1]) if manager.periodic_files() else None),
        "best_epoch": best_epoch, "last_checkpoint": str(manager.periodic_files()[-1]) if manager.periodic_files() else None,
    }
