"""Prediction / rollout videos to TensorBoard (an animated GIF image summary, what ``add_video`` writes, without
needing moviepy) and W&B (``wandb.Video`` of the same GIF file)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from .evaluate import frames_to_grid


def gif_bytes(videos: torch.Tensor, fps: int = 4) -> tuple[bytes, int, int]:
    """(N, T, C, H, W) in [-1, 1] -> GIF whose frame t shows every row's frame t stacked vertically."""
    import imageio.v2 as imageio

    frames = [frames_to_grid(videos[:, t:t + 1]) for t in range(videos.shape[1])]
    buf = io.BytesIO()
    imageio.mimsave(buf, frames, format="GIF", duration=1.0 / fps, loop=0)
    return buf.getvalue(), frames[0].shape[0], frames[0].shape[1]


def log_video(tracker, tag: str, videos: torch.Tensor, step: int, fps: int = 4) -> Path | None:
    """One video under ``tag`` at ``step``; returns the GIF written for W&B (None when W&B is off)."""
    if not getattr(tracker, "enabled", True):
        return None
    data, h, w = gif_bytes(videos.detach().float().cpu(), fps)
    tb = getattr(tracker, "_tb", None)
    if tb is not None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        image = Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=data)
        tb.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
    run = getattr(tracker, "_wandb_run", None)
    if run is None:
        return None
    path = Path(tracker.run_dir) / "videos" / f"{tag.replace('/', '_')}_{step}.gif"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    import wandb

    tracker._wandb_log({tag: wandb.Video(str(path), format="gif")}, step)
    return path


def val_rollout_videos(G, val_set, cfg, device, horizon: int = 5, n: int = 2) -> torch.Tensor | None:
    """Rows: (truth, prediction) pairs for ``n`` validation clips long enough for a ``horizon``-frame rollout;
    each row is the input frames then h = 1..horizon. None when no validation clip is long enough."""
    from .data import VideoClips
    from .evaluate import move, rollout

    Tin, skip = cfg.num_input_frames, cfg.frame_skip
    T = Tin + horizon
    span = (T - 1) * skip + 1
    starts = [(i, s) for i, s in val_set.index if s + span <= val_set.sources[i].num_frames]
    if not starts:
        return None
    clips = VideoClips(val_set.sources, starts, T, skip)
    idx = np.linspace(0, len(clips) - 1, min(n, len(clips))).round().astype(int).tolist()
    items = [clips[i] for i in idx]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    frames, flow = move(batch, device)
    was = G.training
    G.eval()
    with torch.no_grad():
        pred = rollout(G, frames, flow, cfg, horizon, cfg.flow_fallback)
    G.train(was)
    predicted = torch.cat([frames[:, :Tin], pred], 1)
    return torch.stack([frames, predicted], 1).flatten(0, 1)  # truth, prediction, truth, prediction, ...
