"""Validation (used by training and by `action-ddim evaluate`), sampling and reconstruction commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from trainkit.device import autocast, resolve_device
from trainkit.errors import UserError

from . import metrics as M
from .config import Config
from .data import ActionDataset, validate_actions
from .diffusion import Diffusion

EVAL_BATCH = 256


@torch.no_grad()
def validate(model, diffusion: Diffusion, dataset: ActionDataset, indices, cfg: Config, device,
             num_inference_steps: int | None = None) -> dict[str, float]:
    """Every ``val/`` metric on ``dataset[indices]`` with ``model`` (the EMA weights during training).

    Reconstructions: DDIM inversion then decoding, eta = 0, S steps each way. Generation: as many
    unconditional samples as ``train.num_gen_samples`` (eta and clipping as configured) compared with
    the same validation sequences. All random draws use fixed seeds, so repeated calls agree.
    """
    d = cfg.diffusion
    S = num_inference_steps or d.num_inference_steps
    was_training = model.training
    model.eval()
    norm = dataset.normalizer
    origs, recons, loss_sum, n = [], [], 0.0, 0
    g = torch.Generator(device="cpu").manual_seed(0)
    for start in range(0, len(indices), EVAL_BATCH):
        idx = indices[start:start + EVAL_BATCH]
        raw = torch.from_numpy(dataset.raw_batch(idx))
        x0 = norm.encode(raw).to(device)
        _, rec = diffusion.reconstruct(model, x0, S, spacing=d.spacing, clip=d.clip_reconstruction)
        origs.append(raw.numpy())
        recons.append(norm.decode_continuous(rec.float()).cpu().numpy())
        # Validation diffusion loss at fixed (seeded) timesteps and noise, so epochs are comparable.
        t = torch.randint(0, diffusion.T, (len(idx),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        t, noise = t.to(device), noise.to(device)
        out = model(diffusion.q_sample(x0, t, noise), t)
        loss_sum += torch.nn.functional.mse_loss(out.float(), diffusion.target(x0, t, noise).float(),
                                                 reduction="sum").item()
        n += x0.numel()
    orig, recon = np.concatenate(origs), np.concatenate(recons)
    out = {f"val/{k}": v for k, v in M.reconstruction_metrics(orig, recon).items()}
    out["val/loss"] = loss_sum / max(n, 1)
    n_gen = cfg.train.num_gen_samples
    if n_gen:
        gen = torch.Generator(device="cpu").manual_seed(1)
        samples = []
        for start in range(0, n_gen, EVAL_BATCH):
            b = min(EVAL_BATCH, n_gen - start)
            xT = torch.randn((b, *orig.shape[1:]), generator=gen).to(device)
            x = diffusion.sample(model, xT.shape, S, eta=d.eta, spacing=d.spacing, clip=d.clip_sample, x_T=xT,
                                 generator=gen if d.eta > 0 else None)
            samples.append(norm.decode(x.float()).cpu().numpy())
        out.update({f"val/{k}": v for k, v in M.generation_metrics(orig, np.concatenate(samples)).items()})
    model.train(was_training)
    return out


def evaluate_checkpoint(checkpoint: str, data_dir: str, num_inference_steps: int | None, device_spec: str,
                        seq_len: int | None, num_gen_samples: int | None = None, *, config_path=None, overrides=(),
                        precision: str = "fp32") -> dict[str, float]:
    from .train import load_for_inference

    device = resolve_device(device_spec)
    model, diffusion, norm, cfg, ckpt_len = load_for_inference(checkpoint, device, config_path, overrides)
    ds = ActionDataset(data_dir, seq_len or ckpt_len, flag="--data_dir", normalizer=norm)
    if ds.seq_len != ckpt_len:
        raise UserError(f"sequences have {ds.seq_len} steps but the model was trained on {ckpt_len}",
                        f"--data_dir {data_dir}", f"data with seq_len {ckpt_len}")
    if num_gen_samples is not None:
        cfg.train.num_gen_samples = num_gen_samples
    steps = num_inference_steps or cfg.diffusion.num_inference_steps
    if not 1 <= steps <= diffusion.T:
        raise UserError(f"num_inference_steps={steps}", "--num_inference_steps", f"between 1 and {diffusion.T}")
    with autocast(device, precision):
        return validate(model, diffusion, ds, list(range(len(ds))), cfg, device, steps)


def format_metrics(m: dict[str, float]) -> str:
    width = max(len(k) for k in m)
    return "\n".join(f"{k:<{width}}  {v:.6g}" for k, v in m.items())


def metrics_json(m: dict[str, float]) -> str:
    return json.dumps({k: (v if np.isfinite(v) else None) for k, v in m.items()})


def sample_to_file(checkpoint: str, num_samples: int, out: str, num_inference_steps: int | None, eta: float | None,
                   seed: int, device_spec: str, *, config_path=None, overrides=(), precision: str = "fp32"
                   ) -> tuple[Path, Path]:
    from .plots import plot_samples
    from .train import load_for_inference

    if num_samples < 1:
        raise UserError(f"num_samples={num_samples}", "--num_samples", "a positive integer")
    device = resolve_device(device_spec)
    model, diffusion, norm, cfg, seq_len = load_for_inference(checkpoint, device, config_path, overrides)
    d = cfg.diffusion
    steps = num_inference_steps or d.num_inference_steps
    eta = d.eta if eta is None else eta
    if eta < 0:
        raise UserError(f"eta={eta}", "--eta", "eta >= 0")
    if not 1 <= steps <= diffusion.T:
        raise UserError(f"num_inference_steps={steps}", "--num_inference_steps", f"between 1 and {diffusion.T}")
    g = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, num_samples, EVAL_BATCH):
        b = min(EVAL_BATCH, num_samples - start)
        xT = torch.randn((b, seq_len, 3), generator=g).to(device)
        with autocast(device, precision):
            x = diffusion.sample(model, xT.shape, steps, eta=eta, spacing=d.spacing, clip=d.clip_sample, x_T=xT,
                                 generator=g if eta > 0 else None)
        chunks.append(norm.decode(x.float()).cpu().numpy())
    seqs = np.concatenate(chunks).astype(np.float32)
    seqs[..., :2] = np.clip(seqs[..., :2], 0.0, 1.0)  # the dataset format requires x, y in [0, 1]
    out_path = _npy_path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(out_path, seqs.reshape(-1, 3))
    fig = plot_samples(seqs[:16], title=f"{num_samples} samples, {steps} DDIM steps, eta={eta}")
    png = out_path.with_suffix(".png")
    fig.savefig(png, dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out_path, png


def reconstruct_file(checkpoint: str, input_path: str, out: str, num_inference_steps: int | None,
                     device_spec: str, *, config_path=None, overrides=(), precision: str = "fp32"
                     ) -> tuple[Path, dict[str, float]]:
    from .train import load_for_inference

    device = resolve_device(device_spec)
    model, diffusion, norm, cfg, seq_len = load_for_inference(checkpoint, device, config_path, overrides)
    src = Path(input_path)
    if not src.is_file():
        raise UserError("input file does not exist", f"--input {src}", "a float32 [N*seq_len, 3] .npy file")
    try:
        arr = np.load(src, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UserError("unreadable .npy file", f"--input {src}", f"a float32 [N*seq_len, 3] array ({e})")
    validate_actions(arr, src, seq_len)
    steps = num_inference_steps or cfg.diffusion.num_inference_steps
    if not 1 <= steps <= diffusion.T:
        raise UserError(f"num_inference_steps={steps}", "--num_inference_steps", f"between 1 and {diffusion.T}")
    raw = np.array(arr, dtype=np.float32).reshape(-1, seq_len, 3)
    recons = []
    for start in range(0, len(raw), EVAL_BATCH):
        x0 = norm.encode(torch.from_numpy(raw[start:start + EVAL_BATCH])).to(device)
        with autocast(device, precision):
            _, rec = diffusion.reconstruct(model, x0, steps, spacing=cfg.diffusion.spacing,
                                           clip=cfg.diffusion.clip_reconstruction)
        recons.append(norm.decode_continuous(rec.float()).cpu().numpy())
    recon = np.concatenate(recons)
    summary = M.reconstruction_metrics(raw, recon)
    fmt = recon.copy()
    fmt[..., :2] = np.clip(fmt[..., :2], 0.0, 1.0)
    fmt[..., 2] = M.press_decoded(recon[..., 2])
    out_path = _npy_path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(out_path, fmt.astype(np.float32).reshape(-1, 3))
    return out_path, summary


def _npy_path(out: str) -> Path:
    p = Path(out)
    if p.suffix != ".npy":
        raise UserError("output must be a .npy file", f"--out {out}", "a path ending in .npy")
    return p


__all__ = ["validate", "evaluate_checkpoint", "sample_to_file", "reconstruct_file"]
