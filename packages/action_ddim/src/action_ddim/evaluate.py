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
             num_inference_steps: int | None = None, *, heldout: np.ndarray | None = None,
             gen_reference: np.ndarray | None = None, rate_hz: float = M.DEFAULT_RATE_HZ,
             return_samples: bool = False):
    """Every ``val/`` metric on ``dataset[indices]`` with ``model`` (the EMA weights during training).

    Reconstructions: DDIM inversion then decoding, eta = 0, S steps each way. Generation: as many
    unconditional samples as ``train.num_gen_samples`` (eta and clipping as configured) compared with
    the same validation sequences (or ``gen_reference``, data units). ``heldout`` (real sequences in
    data units that are not in the reference, e.g. training sequences) gives every generation distance
    its real-vs-real floor and ratio (``metrics.fidelity_metrics``). All random draws use fixed seeds,
    so repeated calls agree. With ``return_samples`` returns ``(metrics, samples)``.
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
    samples = None
    if n_gen:
        samples = draw_samples(model, diffusion, norm, n_gen, orig.shape[1], cfg, device, S)
        reference = orig if gen_reference is None else gen_reference
        fid = M.fidelity_metrics(reference, samples, heldout_draws(heldout, n_gen), rate_hz=rate_hz)
        out.update({f"val/{k}": v for k, v in fid.items()})
    model.train(was_training)
    return (out, samples) if return_samples else out


# The real-vs-real floor averages this many disjoint held-out draws (as many sequences as samples each),
# so the floor itself is not one noisy draw.
FLOOR_DRAWS = 5


def heldout_draws(heldout: np.ndarray | None, n: int, max_draws: int = FLOOR_DRAWS) -> list[np.ndarray]:
    """Disjoint slices of ``n`` held-out real sequences (at most ``max_draws``; none if fewer than ``n``)."""
    if heldout is None or n <= 0:
        return []
    return [heldout[k * n:(k + 1) * n] for k in range(min(max_draws, len(heldout) // n))]


@torch.no_grad()
def draw_samples(model, diffusion: Diffusion, norm, n: int, seq_len: int, cfg: Config, device,
                 num_inference_steps: int | None = None, seed: int = 1) -> np.ndarray:
    """``n`` unconditional samples in the dataset format (data units, press in {0, 1}), seeded (the same
    draws as validation's)."""
    d = cfg.diffusion
    S = num_inference_steps or d.num_inference_steps
    gen = torch.Generator(device="cpu").manual_seed(seed)
    chunks = []
    for start in range(0, n, EVAL_BATCH):
        b = min(EVAL_BATCH, n - start)
        xT = torch.randn((b, seq_len, 3), generator=gen).to(device)
        x = diffusion.sample(model, xT.shape, S, eta=d.eta, spacing=d.spacing, clip=d.clip_sample, x_T=xT,
                             generator=gen if d.eta > 0 else None)
        chunks.append(norm.decode(x.float()).cpu().numpy())
    return np.concatenate(chunks)


def read_rate_hz(directory) -> float:
    """Sampling rate of a data directory: ``rate_hz`` (import-log) or the generator's ``settings.sample_rate_hz``
    in its metadata.json; the generator's 30 Hz when neither is there."""
    meta = Path(directory) / "metadata.json"
    try:
        info = json.loads(meta.read_text())
        rate = info.get("rate_hz") or (info.get("settings") or {}).get("sample_rate_hz")
        return float(rate) if rate and float(rate) > 0 else M.DEFAULT_RATE_HZ
    except (OSError, ValueError, AttributeError, TypeError):
        return M.DEFAULT_RATE_HZ


def evaluate_checkpoint(checkpoint: str, data_dir: str, num_inference_steps: int | None, device_spec: str,
                        seq_len: int | None, num_gen_samples: int | None = None, *, config_path=None, overrides=(),
                        precision: str = "fp32", real_dir: str | None = None, plot: str | None = None,
                        gen_only: bool = False) -> dict[str, float]:
    """Every validation metric of a checkpoint on ``data_dir``.

    The real-vs-real floors of the generation metrics need real sequences that are not in the reference
    set: ``real_dir`` (e.g. the training directory) gives them; without it, ``FLOOR_DRAWS`` (fewer if
    the directory is small) seeded draws of ``num_gen_samples`` sequences are held out of ``data_dir``
    and the samples are compared with the rest. ``plot``: a PNG of samples beside real sequences.
    ``gen_only``: only the generation (fidelity) metrics, skipping the DDIM reconstructions.
    """
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
    n_gen = cfg.train.num_gen_samples
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(2)).tolist()
    gen_reference = None
    if real_dir is not None:
        real = ActionDataset(real_dir, ckpt_len, flag="--real_dir", normalizer=norm)
        if real.seq_len != ckpt_len:
            raise UserError(f"sequences have {real.seq_len} steps but the model was trained on {ckpt_len}",
                            f"--real_dir {real_dir}", f"data with seq_len {ckpt_len}")
        real_perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(2)).tolist()
        heldout = real.raw_batch(sorted(real_perm[:FLOOR_DRAWS * n_gen]))
    else:
        k = n_gen * min(FLOOR_DRAWS, (len(ds) // 2) // n_gen) if n_gen else 0
        heldout = ds.raw_batch(sorted(perm[:k])) if k else None
        gen_reference = ds.raw_batch(sorted(perm[k:]))
    rate_hz = read_rate_hz(data_dir)
    with autocast(device, precision):
        if gen_only:
            if not n_gen:
                raise UserError("--gen_only with no samples", "--num_gen_samples", "a positive number of samples")
            samples = draw_samples(model, diffusion, norm, n_gen, ckpt_len, cfg, device, steps)
            reference = gen_reference if gen_reference is not None else ds.raw_batch(list(range(len(ds))))
            fid = M.fidelity_metrics(reference, samples, heldout_draws(heldout, n_gen), rate_hz=rate_hz)
            m = {f"val/{k}": v for k, v in fid.items()}
        else:
            m, samples = validate(model, diffusion, ds, list(range(len(ds))), cfg, device, steps, heldout=heldout,
                                  gen_reference=gen_reference, rate_hz=rate_hz, return_samples=True)
    if plot is not None and samples is not None:
        from .plots import save_samples_vs_real

        real_show = ds.raw_batch(sorted(perm[-8:]))
        save_samples_vs_real(plot, samples[:8], real_show, rate_hz=rate_hz,
                             title=f"{Path(checkpoint).name}: samples ({steps} DDIM steps) | real ({data_dir})")
    return m


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
