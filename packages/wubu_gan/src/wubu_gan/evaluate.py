"""Validation and `wubu-gan evaluate`: prediction (encoder on the input frames only, rollout) vs copy-last-frame and
constant-velocity, plus reconstruction, `wubu-gan sample`, image grids."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from trainkit.checkpoint import load_checkpoint
from trainkit.config import config_from_dict
from trainkit.errors import UserError
from trainkit.runsafety import check_replaceable, raise_if_stopped, swap_in

from .config import TrainConfig
from .data import VideoClips, build_datasets, flow_between, prepare_videos
from .metrics import lpips_model, lpips_per_frame, psnr_per_frame, ssim_per_frame, to_unit
from .model import WuBuGen, decide_flow, warp


def move(batch: dict, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    frames = batch["frames"].to(device, non_blocking=True)
    flow = batch["flow"].to(device, non_blocking=True) if "flow" in batch else None
    return frames, flow


def tensor_flow(a: torch.Tensor, b: torch.Tensor, method: str = "ilk") -> torch.Tensor:
    """Flow a -> b for batches of frames (N, C, H, W) in [-1, 1] -> (N, 2, H, W) px (data.flow_between's convention)."""
    to_img = lambda x: (to_unit(x.float()).permute(0, 2, 3, 1).cpu().numpy() * 255.0)  # noqa: E731
    ia, ib = to_img(a), to_img(b)
    out = np.stack([flow_between(ia[i], ib[i], method) for i in range(ia.shape[0])])
    return torch.from_numpy(out).to(a.device)


def constant_velocity(last: torch.Tensor, last_flow: torch.Tensor, horizon: int) -> torch.Tensor:
    """Constant-velocity baseline: the last context flow applied again, h times, to the last frame.

    last (B, C, H, W); last_flow (B, 2, H, W) px with last_prev(p) ~ last(p + flow(p)) -> (B, horizon, C, H, W).
    Content at p in the last frame moves to p + flow, so frame h is the last frame backward-warped by -h * flow
    (one resampling per horizon, not h compounding ones)."""
    return torch.stack([warp(last, -h * last_flow) for h in range(1, horizon + 1)], 1)


@torch.no_grad()
def rollout(G, frames: torch.Tensor, flow: torch.Tensor | None, cfg: TrainConfig, horizon: int,
            flow_method: str = "ilk") -> torch.Tensor:
    """Autoregressive prediction of ``horizon`` frames after the first T_in of ``frames``: each step the encoder
    and generator see only the last T_in frames (predictions fed back); flows between frames the model made are
    computed with ``flow_method`` when the encoder's motion branch needs them. -> (B, horizon, C, H, W)."""
    Tin = cfg.num_input_frames
    seq = list(frames[:, :Tin].unbind(1))
    enc = G.encoder
    need_flow = enc.use_motion and enc.raft is None
    flows = list(flow[:, :Tin - 1].unbind(1)) if (need_flow and flow is not None) else []
    out = []
    while len(out) < horizon:
        ctx = torch.stack(seq[-Tin:], 1)
        ctx_flow = torch.stack(flows[-(Tin - 1):], 1) if need_flow and Tin > 1 else None
        pred, _, _ = G.predict(ctx, ctx_flow)
        for j in range(pred.shape[1]):
            if need_flow:
                flows.append(tensor_flow(seq[-1], pred[:, j], flow_method))
            seq.append(pred[:, j])
            out.append(pred[:, j])
    return torch.stack(out[:horizon], 1)


class _Scores:
    """Per-frame PSNR / SSIM / LPIPS / MSE of several predictors, kept per horizon (1-based)."""

    def __init__(self, names, lpips_net=None):
        self.lpips_net = lpips_net
        self.acc = {n: {} for n in names}

    def add(self, name: str, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target (B, H_pred, C, H, W) in [-1, 1]; column j is horizon j + 1."""
        for j in range(pred.shape[1]):
            p, t = pred[:, j].float(), target[:, j].float()
            a = self.acc[name].setdefault(j + 1, {"psnr": [], "ssim": [], "lpips": [], "mse": []})
            a["mse"].append((p - t).pow(2).flatten(1).mean(1).cpu())
            p01, t01 = to_unit(p), to_unit(t)
            a["psnr"].append(psnr_per_frame(p01, t01).cpu())
            a["ssim"].append(torch.from_numpy(ssim_per_frame(p01, t01)))
            if self.lpips_net is not None:
                a["lpips"].append(lpips_per_frame(self.lpips_net, p01, t01).cpu())

    @staticmethod
    def _mean(parts):
        return float(torch.cat(parts).double().mean()) if parts else None

    def summary(self, name: str, n: int, horizons=None) -> dict:
        """avg_val_* over the frames of ``horizons`` (default all), plus psnr / ssim per horizon."""
        per = self.acc[name]
        hs = sorted(per) if horizons is None else [h for h in horizons if h in per]
        cat = lambda k: [x for h in hs for x in per[h][k]]  # noqa: E731
        return {"avg_val_psnr": self._mean(cat("psnr")), "avg_val_ssim": self._mean(cat("ssim")),
                "avg_val_lpips": self._mean(cat("lpips")), "avg_val_recon_mse": self._mean(cat("mse")),
                "psnr": {str(h): self._mean(per[h]["psnr"]) for h in sorted(per)},
                "ssim": {str(h): self._mean(per[h]["ssim"]) for h in sorted(per)},
                "num_clips": n}


def _subset(dataset, max_clips: int) -> list[int]:
    n = len(dataset) if not max_clips else min(max_clips, len(dataset))
    # A fixed, evenly spaced subset keeps validation comparable across epochs and resumes.
    return np.linspace(0, len(dataset) - 1, n).round().astype(int).tolist() if n < len(dataset) else list(range(n))


def _last_flow(frames: torch.Tensor, flow: torch.Tensor | None, Tin: int, method: str) -> torch.Tensor:
    """Flow of the last context pair (T_in - 2 -> T_in - 1): the data's when it has flow, else computed."""
    if Tin < 2:
        return torch.zeros_like(frames[:, 0, :2])
    if flow is not None:
        return flow[:, Tin - 2].float()
    return tensor_flow(frames[:, Tin - 2], frames[:, Tin - 1], method)


@torch.no_grad()
def validate(G, dataset: VideoClips, cfg: TrainConfig, device, lpips_net=None, max_clips: int = 0,
             batch_size: int = 8, horizon: int | None = None) -> dict:
    """Prediction metrics (z = mu of the encoder on the input frames only) and the baselines, on the targets.

    Returns {"model", "reconstruction", "copy_last_frame", "constant_velocity"}, each with avg_val_psnr / ssim /
    lpips (None without weights) / recon_mse (MSE on [-1, 1], the scale of train/loss_recon) over the first
    ``horizon`` predicted frames, and psnr / ssim per horizon. "model" is prediction: the encoder never sees the
    target or the flow into it; with ``horizon`` > num_predict_frames it is an autoregressive rollout.
    "reconstruction" is training's posterior (encoder reads the whole clip, target included), over the clip's
    own predicted frames. The best checkpoint and the lambda_KL controller read "model"."""
    was_training = G.training
    G.eval()
    Tin, P = cfg.num_input_frames, cfg.num_predict_frames
    horizon = P if horizon is None else horizon
    idx = _subset(dataset, max_clips)
    scores = _Scores(("model", "reconstruction", "copy_last_frame", "constant_velocity"), lpips_net)
    method = cfg.flow_fallback
    for i in range(0, len(idx), batch_size):
        raise_if_stopped()  # a training run's SIGTERM ends validation within one batch (issue 24); never in evaluate
        items = [dataset[j] for j in idx[i:i + batch_size]]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        frames, flow = move(batch, device)
        target = frames[:, Tin:Tin + horizon]
        h = target.shape[1]
        scores.add("model", rollout(G, frames, flow, cfg, h, method), target)
        clip = frames[:, :Tin + P]
        recon, _, _ = G(clip, flow[:, :Tin + P - 1] if flow is not None else None, sample=False)
        scores.add("reconstruction", recon, frames[:, Tin:Tin + P])
        scores.add("copy_last_frame", frames[:, Tin - 1:Tin].expand_as(target), target)
        scores.add("constant_velocity", constant_velocity(frames[:, Tin - 1], _last_flow(frames, flow, Tin, method), h),
                   target)
    raise_if_stopped()  # also after the last batch: the epoch's images and rollout videos would follow
    G.train(was_training)
    n = len(idx)
    return {name: scores.summary(name, n) for name in scores.acc}


@torch.no_grad()
def latent_report(G, dataset: VideoClips, cfg: TrainConfig, device, max_clips: int = 200, batch_size: int = 8,
                  num_z: int = 4, seed: int = 0) -> dict:
    """Does the latent carry the clip? On the clip's own predicted frames (reconstruction path):

    - kl_nats_per_clip: KL(q(z | clip) || N(0, I)), summed over latent dims (collapse: ~0);
    - swap_cost_db: PSNR with z = mu of the clip minus PSNR with z = mu of another clip (batch rolled by one);
    - prior_psnr / posterior_psnr: prediction with z ~ N(0, I) (encoder unused) against z = mu(clip);
    - diversity: mean over contexts of the per-pixel std across ``num_z`` prior samples, on [0, 1]."""
    was_training = G.training
    G.eval()
    Tin, P = cfg.num_input_frames, cfg.num_predict_frames
    idx = _subset(dataset, max_clips)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    kl, own, swap, prior, spread = [], [], [], [], []
    gen_fn = G.generator
    for i in range(0, len(idx), batch_size):
        raise_if_stopped()  # a training run's SIGTERM ends validation within one batch (issue 24); never in evaluate
        items = [dataset[j] for j in idx[i:i + batch_size]]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        frames, flow = move(batch, device)
        clip = frames[:, :Tin + P]
        mu, logvar = G.encoder(clip, flow[:, :Tin + P - 1] if flow is not None else None)
        kl.append((-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(1).cpu())
        ctx = frames[:, :Tin] if gen_fn.use_context else None
        target = to_unit(frames[:, Tin:Tin + P].flatten(0, 1).float())
        score = lambda pred: psnr_per_frame(to_unit(pred.flatten(0, 1).float()), target).cpu()  # noqa: E731
        own.append(score(gen_fn(mu, ctx)))
        if mu.shape[0] > 1:
            swap.append(score(gen_fn(mu.roll(1, 0), ctx)))
        samples = []
        for _ in range(num_z):
            z = torch.randn(mu.shape, generator=gen).to(device)
            pred = gen_fn(z, ctx)
            prior.append(score(pred))
            samples.append(to_unit(pred.float()))
        spread.append(torch.stack(samples).std(0).flatten(1).mean(1).cpu())
    G.train(was_training)
    mean = lambda xs: float(torch.cat(xs).double().mean()) if xs else None  # noqa: E731
    own_db, swap_db = mean(own), mean(swap)
    return {"kl_nats_per_clip": mean(kl), "posterior_psnr": own_db, "swapped_latent_psnr": swap_db,
            "swap_cost_db": None if swap_db is None else own_db - swap_db, "prior_psnr": mean(prior),
            "diversity": mean(spread), "num_z": num_z, "num_clips": len(idx)}


def load_generator(path, device) -> tuple[WuBuGen, TrainConfig, dict]:
    """The VAE (encoder + generator) and its config from a `wubu-gan train` checkpoint."""
    state = load_checkpoint(path, map_location=device)
    if "config" not in state or "gen" not in state:
        raise UserError("not a wubu-gan checkpoint", str(path), "a file written by `wubu-gan train`")
    saved = dict(state["config"])
    saved.setdefault("gen_context_skip", False)  # checkpoints from before the context path decoded from z alone
    saved.setdefault("disc_see_context", False)
    saved.setdefault("disc_output", "global")
    saved.setdefault("gen_output", "residual")  # checkpoints from before --gen_output predicted an rgb residual
    cfg = config_from_dict(TrainConfig, saved, where=str(path))
    flow_kind = state.get("flow_kind", "none")
    if flow_kind == "raft" and decide_flow(cfg, cfg.image_h, cfg.image_w)[0] != "raft":
        raise UserError("checkpoint was trained with RAFT flow, whose weights are not in the local torch cache",
                        str(path), "the RAFT weight file in torch.hub's checkpoints folder")
    G = WuBuGen(cfg, flow_kind).to(device)
    try:
        # The generator EMA when the run kept one (what validation scored and the best checkpoint was chosen by).
        G.load_state_dict(state["gen_ema"] if state.get("gen_ema") is not None else state["gen"])
    except RuntimeError as err:
        raise UserError("checkpoint weights do not match its config", str(path), " ".join(str(err).split())[:200])
    G.eval()
    return G, cfg, state


def evaluate_checkpoint(path, video_path=None, device="cpu", use_lpips=True, max_clips: int = 0, log=print,
                        horizon: int = 5) -> dict:
    """Prediction (encoder on the input frames only; rollout h = 1..horizon) against copy-last-frame and
    constant-velocity, plus reconstruction, on a video (all its clips) or the run's validation split."""
    device = torch.device(device)
    G, cfg, state = load_generator(path, device)
    flow_method = cfg.flow_fallback if state.get("flow_kind", "none") not in ("none", "raft") else None
    Tin, skip = cfg.num_input_frames, cfg.frame_skip
    T = Tin + max(horizon, cfg.num_predict_frames)  # long enough for the rollout and for reconstruction
    span = (T - 1) * skip + 1
    if video_path:
        sources = prepare_videos(video_path, cfg.image_h, cfg.image_w, "--video_data_path", T, skip, flow_method)
        dataset = VideoClips(sources, [(i, s) for i, v in enumerate(sources) for s in range(v.num_frames - span + 1)], T, skip)
        where = str(video_path)
    else:
        _, val = build_datasets(cfg, log=log, flow_method=flow_method, generate_demo=False)
        # The validation clips' starts with the longer span; a start whose rollout would run past its video is
        # dropped. Frames past a validation block's end (h > num_predict_frames) may be guard or training frames.
        starts = [(i, s) for i, s in val.index if s + span <= val.sources[i].num_frames]
        dataset = VideoClips(val.sources, starts, T, skip)
        where = f"validation split of {cfg.video_data_path}"
    if not len(dataset):
        raise UserError(f"no clip of {T} frames (T_in {Tin} + horizon {horizon}) fits", where, "a longer video or a smaller --horizon")
    net, reason = lpips_model(device, (cfg.image_h, cfg.image_w)) if use_lpips else (None, "LPIPS not requested")
    result = validate(G, dataset, cfg, device, net, max_clips=max_clips, horizon=horizon)
    result["latent"] = latent_report(G, dataset, cfg, device, max_clips=min(max_clips or 200, 200))
    sources = {src for src, _ in dataset.index}
    if video_path and len(sources) > 1:  # a folder: every video's own figures too (--max_clips per video)
        result["per_video"] = {}
        for src in sorted(sources):
            one = VideoClips(dataset.sources, [x for x in dataset.index if x[0] == src], T, skip)
            r = validate(G, one, cfg, device, None, max_clips=max_clips, horizon=horizon)
            result["per_video"][dataset.sources[src].path.name] = {
                k: {"psnr": r[k]["psnr"], "ssim": r[k]["ssim"]} for k in ("model", "copy_last_frame", "constant_velocity")
            } | {"num_clips": r["model"]["num_clips"]}
    result["info"] = {"checkpoint": str(path), "data": where, "num_clips": result["model"]["num_clips"],
                      "step": state.get("step"), "lpips_note": reason, "horizons": list(range(1, horizon + 1)),
                      "model": "prediction: encoder on the input frames only, z = mu, predictions fed back for h > "
                               f"{cfg.num_predict_frames}",
                      "reconstruction": "encoder reads the whole clip, target included (training's posterior)"}
    return result


def frames_to_grid(videos: torch.Tensor, pad: int = 2) -> np.ndarray:
    """(N, T, C, H, W) in [-1, 1] -> HWC uint8 grid: one row per sample, one column per frame."""
    v = to_unit(videos).cpu()
    n, t, c, h, w = v.shape
    grid = torch.ones(c, n * (h + pad) + pad, t * (w + pad) + pad)
    for i in range(n):
        for j in range(t):
            grid[:, pad + i * (h + pad): pad + i * (h + pad) + h, pad + j * (w + pad): pad + j * (w + pad) + w] = v[i, j]
    if c == 1:
        grid = grid.expand(3, -1, -1)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def fixed_noise(n: int, latent_dim: int, seed: int, device) -> torch.Tensor:
    from trainkit.device import make_generator

    return torch.randn(n, latent_dim, generator=make_generator(device, seed), device=device)


SAMPLE_FILES = ("samples.png", "samples.gif")


@torch.no_grad()
def sample_checkpoint(path, out_dir, num_samples: int | None = None, seed: int | None = None, device="cpu",
                      replace: bool = False, one_context: bool = False, interpolate: bool = False) -> dict:
    """Fixed-noise generations: ``samples.png`` (rows = samples, columns = frames) and ``samples.gif``.

    ``--out`` must be a new or empty folder, or (with ``replace``) a folder holding only an earlier sample
    output; the new files are rendered next to it first and swapped in only once they exist, so a bad
    checkpoint or a crash never deletes anything, and ``replace`` can never wipe a run folder."""
    import shutil
    import tempfile

    import imageio.v2 as imageio

    device = torch.device(device)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError("not a folder", f"--out {out}", "a new or empty folder for samples.png and samples.gif")
    if out.is_dir() and any(out.iterdir()):
        others = sorted(p.name for p in out.iterdir() if p.name not in SAMPLE_FILES)
        if not replace:
            raise UserError("output folder is not empty", f"--out {out}", "a new or empty folder, or --replace")
        if others:
            raise UserError(f"--replace only replaces an earlier sample output; the folder also holds {others[0]!r}",
                            f"--out {out}", f"a folder holding only {' and '.join(SAMPLE_FILES)}, or a new one")
    # trainkit's rule as well (audit A4): never ., ~, / or an ancestor of the working directory
    check_replaceable(out, flag="--replace" if replace else "--out", legacy_markers=SAMPLE_FILES)
    G, cfg, _ = load_generator(path, device)
    num_samples = cfg.demo_num_samples if num_samples is None else num_samples
    seed = cfg.seed if seed is None else seed  # training's fixed noise: fixed_noise(demo_num_samples, ..., cfg.seed)
    z = fixed_noise(num_samples, cfg.latent_dim, seed, device)
    context = None
    if G.generator.use_context:  # continue the last input frames of evenly spaced validation clips
        _, val_set = build_datasets(cfg, log=lambda *a: None, generate_demo=False)
        idx = np.linspace(0, len(val_set) - 1, num_samples).round().astype(int).tolist()
        if one_context:  # one context, num_samples latents: what z changes about the future
            idx = [idx[len(idx) // 2]] * num_samples
        clips = torch.stack([val_set[i]["frames"] for i in idx]).to(device)
        context = clips[:, :cfg.num_input_frames]
    if interpolate:  # rows: z from mu(first validation clip) to mu(last one), all continuing the first's context
        _, val_set = build_datasets(cfg, log=lambda *a: None, generate_demo=False)
        ends = [val_set[0], val_set[len(val_set) - 1]]
        clips = torch.stack([e["frames"] for e in ends]).to(device)
        flow = torch.stack([e["flow"] for e in ends]).to(device) if "flow" in ends[0] else None
        mu, _ = G.encoder(clips, flow)
        t = torch.linspace(0, 1, num_samples, device=device)[:, None]
        z = (1 - t) * mu[:1] + t * mu[1:]
        context = clips[:1, :cfg.num_input_frames].expand(num_samples, -1, -1, -1, -1) if G.generator.use_context else None
    videos = G.generator(z, context)
    diversity = float(to_unit(videos.float()).std(0).mean()) if num_samples > 1 and (one_context or interpolate) else float("nan")
    if context is not None:  # first columns: the input frames each sample continues
        videos = torch.cat([context, videos], 1)
    grid = frames_to_grid(videos)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        imageio.imwrite(tmp / "samples.png", grid)
        # GIF: frame j shows every sample's frame j side by side.
        frames = [frames_to_grid(videos[:, j:j + 1].permute(1, 0, 2, 3, 4)) for j in range(videos.shape[1])]
        imageio.mimsave(tmp / "samples.gif", frames, duration=0.2, loop=0)
        swap_in(tmp, out)  # the old samples are moved aside and deleted only once the new ones are in place
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return {"png": str(out / "samples.png"), "gif": str(out / "samples.gif"), "num_samples": num_samples,
            "frames": int(videos.shape[1]), "diversity": diversity}
