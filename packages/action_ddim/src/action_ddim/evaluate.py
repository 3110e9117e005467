"""Validation (used by training and by `action-ddim evaluate`), sampling and reconstruction commands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from trainkit.device import autocast, make_generator, resolve_device
from trainkit.errors import UserError
from trainkit.runsafety import raise_if_stopped

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
    S = d.num_inference_steps if num_inference_steps is None else num_inference_steps
    was_training = model.training
    model.eval()
    norm = dataset.normalizer
    origs, recons, loss_sum, n = [], [], 0.0, 0
    g = make_generator(device, 0)
    for start in range(0, len(indices), EVAL_BATCH):
        raise_if_stopped()  # SIGTERM: end within one batch, not after the whole validation (issue 24)
        idx = indices[start:start + EVAL_BATCH]
        raw = torch.from_numpy(dataset.raw_batch(idx))
        x0 = norm.encode(raw).to(device)
        _, rec = diffusion.reconstruct(model, x0, S, spacing=d.spacing, clip=d.clip_reconstruction)
        origs.append(raw.numpy())
        recons.append(norm.decode_continuous(rec.float()).cpu().numpy())
        loss_sum += seeded_loss_sum(model, diffusion, x0, g).item()
        n += x0.numel()
    orig, recon = np.concatenate(origs), np.concatenate(recons)
    out = {f"val/{k}": v for k, v in M.reconstruction_metrics(orig, recon).items()}
    out["val/loss"] = loss_sum / max(n, 1)
    n_gen = cfg.train.num_gen_samples
    samples = None
    if n_gen:
        raise_if_stopped()
        x = draw_samples(model, diffusion, n_gen, orig.shape[1], S, d, device, seed=1)
        samples = norm.decode(x.float()).cpu().numpy()
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


def floor_split(dataset: ActionDataset, n: int, seed: int = 2, max_draws: int = FLOOR_DRAWS
                ) -> tuple[list[int], list[int], str]:
    """Split ``dataset`` into (reference, held-out) indices for the real-vs-real floor.

    The floor must come from data held out the same way as the data it is compared with: when the
    sequences come from two or more users (import-log metadata) or sessions (files), whole groups are
    held out, so a split by user gets a between-user floor. The held-out part holds up to ``max_draws``
    draws of ``n`` and never more than half the data. One group only: a seeded random split (a
    within-group floor, which is lower: it says so). Returns the indices and a one-line description.
    """
    labels, kind = dataset.sequence_groups()
    N = len(labels)
    want = n * max_draws
    names = sorted(set(labels))
    rng = np.random.default_rng(seed)
    if n > 0 and len(names) >= 2:
        held: list[str] = []
        count = 0
        for g in [names[i] for i in rng.permutation(len(names))]:
            size = int(np.sum(labels == g))
            if count >= want or count + size > N // 2 or len(held) == len(names) - 1:
                continue
            held.append(g)
            count += size
        if count >= n:
            mask = np.isin(labels, held)
            heldout = np.flatnonzero(mask)
            heldout = np.sort(rng.permutation(heldout)[:want]).tolist()
            rest = np.flatnonzero(~mask).tolist()
            return rest, heldout, (f"between-{kind} floor: {len(held)} held-out {kind}(s) ({count} sequences) "
                                   f"against {len(names) - len(held)} other {kind}(s)")
    perm = rng.permutation(N).tolist()
    k = n * min(max_draws, (N // 2) // n) if n else 0
    if not k:
        return perm, [], f"no floor: fewer than 2 x {n} sequences"
    return sorted(perm[k:]), sorted(perm[:k]), (f"within-{kind} floor: {k} random sequences held out "
                                                f"({'one ' + kind + ' only' if len(names) < 2 else 'groups too large'};"
                                                " lower than a between-user floor)")


PROGRESS_KEYS = {"progress/c2st": "gen/c2st_accuracy", "progress/c2st_floor": "gen/c2st_accuracy_floor",
                 "progress/speed_w1_ratio": "gen/speed_w1_ratio",
                 "progress/path_length_w1_ratio": "gen/path_length_w1_ratio"}


def progress_fidelity(m: dict, prefix: str = "val/") -> dict[str, float]:
    """The epoch line's fidelity estimate (``progress/*``) from fidelity metrics (missing ones are NaN)."""
    return {k: float(m.get(prefix + v, float("nan"))) for k, v in PROGRESS_KEYS.items()}


@torch.no_grad()
def quick_fidelity(model, diffusion: Diffusion, dataset: ActionDataset, cfg: Config, device, n: int,
                   reference: np.ndarray, heldout: np.ndarray | None, rate_hz: float) -> dict[str, float]:
    """``progress/*`` from ``n`` fresh samples (seeded, so epochs are comparable) against ``reference``."""
    was_training = model.training
    model.eval()
    x = draw_samples(model, diffusion, n, dataset.seq_len, cfg.diffusion.num_inference_steps, cfg.diffusion, device,
                     seed=1)
    model.train(was_training)
    samples = dataset.normalizer.decode(x.float()).cpu().numpy()
    return progress_fidelity(M.fidelity_metrics(reference, samples, heldout_draws(heldout, n), rate_hz=rate_hz), "")


def format_progress(p: dict[str, float], n: int) -> str:
    """`` | fidelity (64 samples): c2st 0.98 (floor 0.62), W1 speed 12.0x path 9.1x the floor``."""
    return (f" | fidelity ({n} samples): c2st {p['progress/c2st']:.2f} (floor {p['progress/c2st_floor']:.2f}), "
            f"W1 speed {p['progress/speed_w1_ratio']:.1f}x path {p['progress/path_length_w1_ratio']:.1f}x the floor")


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


def seeded_loss_sum(model, diffusion: Diffusion, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Summed squared error of the training loss at timesteps and noise drawn from ``generator``.

    Validation uses a fixed-seed generator so that epochs are comparable. Stays on ``x0``'s device.
    """
    t = torch.randint(0, diffusion.T, (len(x0),), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    out = model(diffusion.q_sample(x0, t, noise), t)
    return torch.nn.functional.mse_loss(out.float(), diffusion.target(x0, t, noise).float(), reduction="sum")


@torch.no_grad()
def validation_loss(model, diffusion: Diffusion, dataset: ActionDataset, indices, device) -> float:
    """``val/loss`` alone (no reconstructions): the seeded diffusion loss per element on ``dataset[indices]``.

    Uses the same batches and generator sequence as :func:`validate`, so on the same indices it returns
    exactly ``validate(...)["val/loss"]``.
    """
    was_training = model.training
    model.eval()
    g = make_generator(device, 0)
    loss_sum, n = 0.0, 0
    for start in range(0, len(indices), EVAL_BATCH):
        raise_if_stopped()
        x0 = dataset.normalizer.encode(torch.from_numpy(dataset.raw_batch(indices[start:start + EVAL_BATCH])))
        x0 = x0.to(device)
        loss_sum += seeded_loss_sum(model, diffusion, x0, g).item()
        n += x0.numel()
    model.train(was_training)
    return loss_sum / max(n, 1)


@torch.no_grad()
def draw_samples(model, diffusion: Diffusion, num: int, seq_len: int, steps: int, d, device, *, seed: int,
                 eta: float | None = None) -> torch.Tensor:
    """``num`` unconditional DDIM samples in model space, on ``device``, from a generator seeded on it.

    ``d`` is the diffusion config (spacing, clipping, eta unless ``eta`` is given). A given seed gives
    the same samples on every run on the same device type (CPU and CUDA streams differ).
    """
    eta = d.eta if eta is None else eta
    gen = make_generator(device, seed)
    chunks = []
    for start in range(0, num, EVAL_BATCH):
        b = min(EVAL_BATCH, num - start)
        xT = torch.randn((b, seq_len, 3), generator=gen, device=device)
        chunks.append(diffusion.sample(model, xT.shape, steps, eta=eta, spacing=d.spacing, clip=d.clip_sample,
                                       x_T=xT, generator=gen if eta > 0 else None))
    return torch.cat(chunks)


def evaluate_checkpoint(checkpoint: str, data_dir: str, num_inference_steps: int | None, device_spec: str,
                        seq_len: int | None, num_gen_samples: int | None = None, *, config_path=None, overrides=(),
                        precision: str = "fp32", real_dir: str | None = None, plot: str | None = None,
                        gen_only: bool = False, log=None) -> dict[str, float]:
    """Every validation metric of a checkpoint on ``data_dir``.

    The real-vs-real floors of the generation metrics need real sequences that are not in the reference
    set: ``real_dir`` (e.g. the training directory) gives them; without it, ``FLOOR_DRAWS`` (fewer if
    the directory is small) seeded draws of ``num_gen_samples`` sequences are held out of ``data_dir``
    and the samples are compared with the rest. ``plot``: a PNG of samples beside real sequences.
    ``gen_only``: only the generation (fidelity) metrics, skipping the DDIM reconstructions.
    """
    from .train import load_for_inference

    _check_count("--seq_len", seq_len, 1)
    _check_count("--num_gen_samples", num_gen_samples, 0)
    _check_count("--num_inference_steps", num_inference_steps, 1)
    device = resolve_device(device_spec)
    model, diffusion, norm, cfg, ckpt_len = load_for_inference(checkpoint, device, config_path, overrides)
    ds = ActionDataset(data_dir, ckpt_len if seq_len is None else seq_len, flag="--data_dir", normalizer=norm)
    if ds.seq_len != ckpt_len:
        raise UserError(f"sequences have {ds.seq_len} steps but the model was trained on {ckpt_len}",
                        f"--data_dir {data_dir}", f"data with seq_len {ckpt_len}")
    if num_gen_samples is not None:
        cfg.train.num_gen_samples = num_gen_samples
    steps = inference_steps(num_inference_steps, cfg, diffusion)
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
        floor_note = f"floor from --real_dir {real_dir}"
    else:
        ref_idx, held_idx, floor_note = floor_split(ds, n_gen)
        heldout = ds.raw_batch(held_idx) if held_idx else None
        gen_reference = ds.raw_batch(ref_idx)
    rate_hz = read_rate_hz(data_dir)
    if log is not None:
        log(floor_note)
    with autocast(device, precision):
        if gen_only:
            if not n_gen:
                raise UserError("--gen_only with no samples", "--num_gen_samples", "a positive number of samples")
            x = draw_samples(model, diffusion, n_gen, ckpt_len, steps, cfg.diffusion, device, seed=1)
            samples = norm.decode(x.float()).cpu().numpy()
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
        # Beside it: speed, pause and press-run distributions of every sample against the reference.
        import matplotlib.pyplot as plt

        from .plots import plot_distributions

        reference = gen_reference if gen_reference is not None else ds.raw_batch(list(range(len(ds))))
        fig = plot_distributions(samples, reference, rate_hz=rate_hz,
                                 title=f"{Path(checkpoint).name}: {len(samples)} samples vs {len(reference)} real")
        fig.savefig(Path(plot).with_name(Path(plot).stem + "_dist.png"), dpi=80, bbox_inches="tight")
        plt.close(fig)
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

    _check_count("--num_samples", num_samples, 1)
    _check_count("--num_inference_steps", num_inference_steps, 1)
    if eta is not None and not (math.isfinite(eta) and eta >= 0):
        raise UserError(f"eta={eta}", "--eta", "a finite eta >= 0 (0 = deterministic DDIM, 1 = DDPM)")
    out_path = _npy_path(out)
    device = resolve_device(device_spec)
    model, diffusion, norm, cfg, seq_len = load_for_inference(checkpoint, device, config_path, overrides)
    d = cfg.diffusion
    steps = inference_steps(num_inference_steps, cfg, diffusion)
    eta = d.eta if eta is None else eta
    with autocast(device, precision):
        x = draw_samples(model, diffusion, num_samples, seq_len, steps, d, device, seed=seed, eta=eta)
    seqs = norm.decode(x.float()).cpu().numpy()
    seqs = seqs.astype(np.float32)
    seqs[..., :2] = np.clip(seqs[..., :2], 0.0, 1.0)  # the dataset format requires x, y in [0, 1]
    _make_parent(out_path)
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

    _check_count("--num_inference_steps", num_inference_steps, 1)
    out_path = _npy_path(out)
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
    steps = inference_steps(num_inference_steps, cfg, diffusion)
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
    _make_parent(out_path)
    np.save(out_path, fmt.astype(np.float32).reshape(-1, 3))
    return out_path, summary


def _check_count(flag: str, value: int | None, low: int) -> None:
    """``None`` means "not given" (use the checkpoint's value); anything below ``low`` is an error."""
    if value is not None and value < low:
        raise UserError(f"{flag.lstrip('-')}={value}", flag, f"an integer >= {low}")


def inference_steps(given: int | None, cfg: Config, diffusion: Diffusion) -> int:
    steps = cfg.diffusion.num_inference_steps if given is None else given
    if not 1 <= steps <= diffusion.T:
        raise UserError(f"num_inference_steps={steps}", "--num_inference_steps", f"between 1 and {diffusion.T}")
    return steps


def _npy_path(out: str) -> Path:
    """Check an output path before any work: a .npy name that is not a directory."""
    p = Path(out)
    if p.suffix != ".npy":
        raise UserError("output must be a .npy file", f"--out {out}", "a path ending in .npy")
    if p.is_dir():
        raise UserError("output path is a directory", f"--out {out}", "a .npy file path")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{parent} is a file, not a directory", f"--out {out}",
                            "a path whose parent folders are directories")
    return p


def _make_parent(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)


__all__ = ["validate", "evaluate_checkpoint", "sample_to_file", "reconstruct_file"]
