"""Open-loop prediction videos for TensorBoard and W&B at evaluation steps (DreamerV3-style "openl" videos).

TensorBoard: ``SummaryWriter.add_video`` when moviepy is installed; otherwise the very summary it would write
(an animated GIF in an image summary, shown in the Images tab with the same tag) encoded with imageio, since
moviepy is not a dependency of this package. W&B: ``wandb.Video`` from a GIF file under ``RUN/samples/``
(``wandb.Video`` needs moviepy for raw arrays, not for a file).
"""

from __future__ import annotations

import io

import numpy as np
import torch


def video_frames(rows: list[torch.Tensor], pad: int = 1) -> np.ndarray:
    """rows: tensors [T, 3, H, W] in [0, 1], one per panel (e.g. ground truth, prediction) -> uint8
    [T, H', W', 3] with the panels side by side in every frame."""
    t = rows[0].shape[0]
    _, h, w = rows[0].shape[1:]
    out = np.ones((t, h + 2 * pad, (w + pad) * len(rows) + pad, 3), np.float32)
    for j, r in enumerate(rows):
        x = pad + j * (w + pad)
        out[:, pad:pad + h, x:x + w] = r.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return (out * 255 + 0.5).astype(np.uint8)


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    import imageio.v2 as imageio

    buf = io.BytesIO()
    imageio.mimsave(buf, list(frames), format="GIF", duration=1.0 / fps, loop=0)
    return buf.getvalue()


def log_video(tracker, tag: str, frames: np.ndarray, step: int, fps: float = 4.0) -> None:
    """``frames`` uint8 [T, H, W, 3] to TensorBoard (video summary) and W&B (``wandb.Video``). Uses the
    Tracker's writer and run, which trainkit's Tracker has no video method for; a failure here only warns."""
    if not getattr(tracker, "enabled", False):
        return
    tb = getattr(tracker, "_tb", None)
    if tb is not None:
        try:
            import moviepy  # noqa: F401

            tb.add_video(tag, torch.from_numpy(frames).permute(0, 3, 1, 2)[None], global_step=step, fps=fps)
        except ImportError:
            from torch.utils.tensorboard.summary import Summary

            t, h, w, c = frames.shape
            image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=gif_bytes(frames, fps))
            tb._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
    run = getattr(tracker, "_wandb_run", None)
    if run is not None:
        try:
            import wandb

            path = tracker.run_dir / "samples" / f"{tag.replace('/', '_')}_{step:08d}.gif"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(gif_bytes(frames, fps))
            tracker._wandb_log({tag: wandb.Video(str(path), format="gif")}, step)
        except Exception as err:  # W&B must never take a training run down
            print(f"warning: W&B video failed ({type(err).__name__}: {err})", flush=True)


@torch.no_grad()
def open_loop_video(model, frames: torch.Tensor, actions: torch.Tensor, context: int) -> np.ndarray:
    """Ground truth | open-loop rollout with the true actions | copy-last-frame, side by side, for the
    frames after ``context``; several windows are stacked vertically. frames [B, T, 3, H, W] in [0, 1]."""
    horizon = frames.shape[1] - context
    pred = model.rollout(frames[:, :context], actions, horizon).float().cpu()
    gt = frames[:, context:].float().cpu()
    last = gt.new_empty(gt.shape).copy_(frames[:, context - 1:context].float().cpu().expand_as(gt))
    return np.concatenate([video_frames([gt[i], pred[i], last[i]]) for i in range(frames.shape[0])], axis=1)


__all__ = ["log_video", "open_loop_video", "video_frames", "gif_bytes"]
