"""Validation (z = mu), `wubu-gan evaluate` (model vs copy-last-input-frame), `wubu-gan sample`, image grids."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from trainkit.checkpoint import load_checkpoint
from trainkit.config import config_from_dict
from trainkit.errors import UserError

from .config import TrainConfig
from .data import VideoClips, build_datasets, prepare_videos
from .metrics import lpips_model, lpips_per_frame, psnr_per_frame, ssim_per_frame, to_unit
from .model import WuBuGen, decide_flow


def move(batch: dict, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    frames = batch["frames"].to(device, non_blocking=True)
    flow = batch["flow"].to(device, non_blocking=True) if "flow" in batch else None
    return frames, flow


@torch.no_grad()
def validate(G, dataset: VideoClips, cfg: TrainConfig, device, lpips_net=None, max_clips: int = 0,
             batch_size: int = 8) -> dict:
    """Metrics of the model (z = mu) and of the copy-last-input-frame baseline on the target frames.

    Returns {"model": {...}, "copy_last_frame": {...}} with avg_val_psnr / ssim / lpips (None without
    weights) / recon_mse (MSE on [-1, 1], the scale of train/loss_recon)."""
    was_training = G.training
    G.eval()
    n = len(dataset) if not max_clips else min(max_clips, len(dataset))
    # A fixed, evenly spaced subset keeps validation comparable across epochs and resumes.
    idx = np.linspace(0, len(dataset) - 1, n).round().astype(int).tolist() if n < len(dataset) else list(range(n))
    acc = {k: {"psnr": [], "ssim": [], "lpips": [], "mse": []} for k in ("model", "copy_last_frame")}
    Tin = cfg.num_input_frames
    for i in range(0, len(idx), batch_size):
        items = [dataset[j] for j in idx[i:i + batch_size]]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        frames, flow = move(batch, device)
        target = frames[:, Tin:]
        recon, _, _ = G(frames, flow, sample=False)
        copy = frames[:, Tin - 1:Tin].expand_as(target)
        for name, pred in (("model", recon), ("copy_last_frame", copy)):
            p = pred.reshape(-1, *pred.shape[2:]).float()
            t = target.reshape(-1, *target.shape[2:]).float()
            a = acc[name]
            a["mse"].append((p - t).pow(2).flatten(1).mean(1).cpu())
            p01, t01 = to_unit(p), to_unit(t)
            a["psnr"].append(psnr_per_frame(p01, t01).cpu())
            a["ssim"].append(torch.from_numpy(ssim_per_frame(p01, t01)))
            if lpips_net is not None:
                a["lpips"].append(lpips_per_frame(lpips_net, p01, t01).cpu())
    G.train(was_training)
    out = {}
    for name, a in acc.items():
        out[name] = {"avg_val_psnr": float(torch.cat(a["psnr"]).mean()),
                     "avg_val_ssim": float(torch.cat(a["ssim"]).double().mean()),
                     "avg_val_lpips": float(torch.cat(a["lpips"]).mean()) if a["lpips"] else None,
                     "avg_val_recon_mse": float(torch.cat(a["mse"]).mean()),
                     "num_clips": n}
    return out


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
        G.load_state_dict(state["gen"])
    except RuntimeError as err:
        raise UserError("checkpoint weights do not match its config", str(path), " ".join(str(err).split())[:200])
    G.eval()
    return G, cfg, state


def evaluate_checkpoint(path, video_path=None, device="cpu", use_lpips=True, max_clips: int = 0, log=print) -> dict:
    """Model vs copy-last-input-frame on a video (all its clips), or on the run's validation split when no path."""
    device = torch.device(device)
    G, cfg, state = load_generator(path, device)
    flow_method = cfg.flow_fallback if state.get("flow_kind", "none") not in ("none", "raft") else None
    if video_path:
        T, skip = cfg.total_frames, cfg.frame_skip
        sources = prepare_videos(video_path, cfg.image_h, cfg.image_w, "--video_data_path", T, skip, flow_method)
        span = (T - 1) * skip + 1
        dataset = VideoClips(sources, [(i, s) for i, v in enumerate(sources) for s in range(v.num_frames - span + 1)], T, skip)
        where = str(video_path)
    else:
        _, dataset = build_datasets(cfg, log=log, flow_method=flow_method, generate_demo=False)
        where = f"validation split of {cfg.video_data_path}"
    net, reason = lpips_model(device, (cfg.image_h, cfg.image_w)) if use_lpips else (None, "LPIPS not requested")
    result = validate(G, dataset, cfg, device, net, max_clips=max_clips)
    result["info"] = {"checkpoint": str(path), "data": where, "num_clips": result["model"]["num_clips"],
                      "step": state.get("step"), "lpips_note": reason}
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
    from .devices import make_generator

    return torch.randn(n, latent_dim, generator=make_generator(device, seed), device=device)


SAMPLE_FILES = ("samples.png", "samples.gif")


@torch.no_grad()
def sample_checkpoint(path, out_dir, num_samples: int | None = None, seed: int | None = None, device="cpu",
                      replace: bool = False) -> dict:
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
    G, cfg, _ = load_generator(path, device)
    num_samples = cfg.demo_num_samples if num_samples is None else num_samples
    seed = cfg.seed if seed is None else seed  # training's fixed noise: fixed_noise(demo_num_samples, ..., cfg.seed)
    z = fixed_noise(num_samples, cfg.latent_dim, seed, device)
    context = None
    if G.generator.use_context:  # continue the last input frames of evenly spaced validation clips
        _, val_set = build_datasets(cfg, log=lambda *a: None, generate_demo=False)
        idx = np.linspace(0, len(val_set) - 1, num_samples).round().astype(int).tolist()
        clips = torch.stack([val_set[i]["frames"] for i in idx]).to(device)
        context = clips[:, :cfg.num_input_frames]
    videos = G.generator(z, context)
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
        if out.is_dir():
            shutil.rmtree(out)  # empty, or only the earlier samples.png/gif (checked above)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return {"png": str(out / "samples.png"), "gif": str(out / "samples.gif"), "num_samples": num_samples,
            "frames": int(videos.shape[1])}
