"""Noise schedules, the DDPM training loss and the DDIM sampler / inverter (Song et al., 2021).

Notation: abar_t = prod_{s<=t}(1 - beta_s) for integer t in [0, T). The forward marginal is
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. One DDIM step from t to an earlier kept step s:

    x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
    sigma  = eta * sqrt((1 - abar_s) / (1 - abar_t)) * sqrt(1 - abar_t / abar_s)
    x_s    = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z

The last step of sampling goes to abar = 1 (the clean data), as in the paper's code.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from trainkit.errors import UserError

SCHEDULES = ("cosine", "linear")
PREDICTION_TYPES = ("epsilon", "v", "x0")
SPACINGS = ("leading", "trailing")

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_alphas_cumprod(schedule: str, num_train_timesteps: int, *, force: bool = False,
                        cosine_offset: float = 0.008) -> torch.Tensor:
    """abar_t for t = 0..T-1 as float64.

    ``cosine_offset`` is the cosine schedule's s. Its lowest noise level is sigma_0 = sqrt(1 - abar_0):
    0.0064 (model units) for Nichol & Dhariwal's s = 0.008, chosen for 8-bit images (a pixel bin is
    0.0078). Pointer data has finer detail (the generator's sensor jitter is 0.003 in model units), and
    the sampler's last step returns a posterior mean at sigma_0, which smooths away detail below it:
    s = 0.0002 gives sigma_0 = 0.0019.
    """
    T = num_train_timesteps
    if T < 2:
        raise UserError(f"num_train_timesteps={T}", "--num_train_timesteps", "at least 2")
    if schedule == "cosine":
        # Nichol & Dhariwal (2021); betas capped at 0.999 so the last step stays finite.
        s = cosine_offset
        f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)], dtype=torch.float64)
    elif schedule == "linear":
        # Ho et al. (2020) endpoints, unscaled: with T < 1000 the last abar is far from 0
        # (T=100 ends at abar=0.36), so sampling from N(0, I) would start off-distribution.
        if T < 1000 and not force:
            raise UserError(f"linear schedule with num_train_timesteps={T}", "--schedule linear",
                            "num_train_timesteps >= 1000 (its final abar is far from 0 below that; "
                            "use --schedule cosine, or --set diffusion.force_schedule=true)")
        betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    else:
        raise UserError(f"unknown schedule {schedule!r}", "--schedule", f"one of {', '.join(SCHEDULES)}")
    return torch.cumprod(1 - betas, dim=0)


def ddim_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "leading") -> list[int]:
    """The S kept timesteps in the order sampling visits them (descending, unique)."""
    T, S = num_train_timesteps, num_steps
    if not 1 <= S <= T:
        raise UserError(f"{S} inference steps", "--num_inference_steps", f"between 1 and num_train_timesteps={T}")
    if spacing == "leading":
        ts = [i * (T // S) for i in range(S)]
    elif spacing == "trailing":
        ts = [int(round(T - i * T / S)) - 1 for i in range(S)][::-1]
    else:
        raise UserError(f"unknown spacing {spacing!r}", "diffusion.spacing", f"one of {', '.join(SPACINGS)}")
    return sorted(set(ts), reverse=True)


def check_generator(generator: torch.Generator | None, device: torch.device | str) -> None:
    """Fail fast, on any machine (CPU included), when a generator cannot draw on ``device``.

    ``make_generator("meta")`` returns a CPU-backed generator that stands for ``meta`` (``target_device``).
    """
    device = torch.device(device)
    if generator is None:
        return
    target = getattr(generator, "target_device", None) or generator.device
    if target.type != device.type:
        raise ValueError(f"a {target.type} generator cannot draw on {device}; "
                         f"make it with trainkit.device.make_generator({str(device)!r}, seed)")


class Diffusion:
    """Schedule + parameterisation; stateless apart from the abar table."""

    def __init__(self, schedule: str = "cosine", num_train_timesteps: int = 1000,
                 prediction_type: str = "epsilon", *, force_schedule: bool = False, timestep_power: float = 1.0,
                 cosine_offset: float = 0.008, min_snr_gamma: float = 0.0):
        if prediction_type not in PREDICTION_TYPES:
            raise UserError(f"unknown prediction type {prediction_type!r}", "--prediction_type",
                            f"one of {', '.join(PREDICTION_TYPES)}")
        self.schedule = schedule
        self.T = num_train_timesteps
        self.prediction_type = prediction_type
        if not timestep_power > 0:
            raise UserError(f"timestep_power={timestep_power}", "diffusion.timestep_power", "a number > 0 (1 = uniform)")
        self.timestep_power = float(timestep_power)
        if min_snr_gamma < 0:
            raise UserError(f"min_snr_gamma={min_snr_gamma}", "diffusion.min_snr_gamma", "0 (off) or a number > 0, e.g. 5")
        self.min_snr_gamma = float(min_snr_gamma)
        # float64 on the CPU: the master table, read as Python floats by the sampler.
        self.alphas_cumprod = make_alphas_cumprod(schedule, num_train_timesteps, force=force_schedule,
                                                  cosine_offset=cosine_offset)
        # Per (device, dtype) copies made once: MPS has no float64, and a host-to-device copy per
        # training step or sampling step is waste on any accelerator.
        self._tables: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def table(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """abar as ``dtype`` on ``device``, converted on the CPU first and cached."""
        key = (torch.device(device), dtype)
        if key not in self._tables:
            self._tables[key] = self.alphas_cumprod.to(dtype).to(key[0])
        return self._tables[key]

    # --- training ---------------------------------------------------------------------------
    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        a = self.table(like.device, like.dtype)[t]
        return a.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "x0":
            return x0
        a = self.abar(t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def sample_timesteps(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training timesteps: uniform on [0, T) for ``timestep_power`` 1 (the DDPM loss); for p > 1,
        t = floor(T * u**p), which puts more of training on the low-noise levels (P(t < k) = (k/T)**(1/p)).
        """
        if self.timestep_power == 1.0:
            return torch.randint(0, self.T, (n,), device=device, generator=generator)
        u = torch.rand((n,), device=device, generator=generator)
        return (u.pow(self.timestep_power) * self.T).long().clamp_(0, self.T - 1)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma weights (Hang et al., 2023) per sample: the x0 error weighted by min(SNR, gamma),
        written for this prediction type (v: min(SNR, gamma) / (SNR + 1); epsilon: / SNR; x0: as is).

        Why: with the plain loss, the v-target's error at SNR >> 1 (the low-noise end, where the sensor
        jitter is decided) is weighted like the x0 error times (SNR + 1), so a few high-SNR steps dominate
        or are drowned depending on the type; the clamp makes every noise level count about alike.
        """
        a = self.table(t.device, torch.float32)[t]
        snr = a / (1 - a).clamp_min(1e-12)
        w = snr.clamp(max=self.min_snr_gamma)
        if self.prediction_type == "v":
            return w / (snr + 1)
        if self.prediction_type == "epsilon":
            return w / snr
        return w

    def loss(self, model: Denoiser, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The DDPM simple loss: MSE between the model output and its target at a random t (uniform unless
        ``timestep_power`` != 1), each sample weighted by ``loss_weight`` when ``min_snr_gamma`` > 0."""
        check_generator(generator, x0.device)
        t = self.sample_timesteps(x0.shape[0], x0.device, generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        out = model(self.q_sample(x0, t, noise), t)
        if not self.min_snr_gamma:
            return F.mse_loss(out.float(), self.target(x0, t, noise).float())
        per_sample = (out.float() - self.target(x0, t, noise).float()).pow(2).flatten(1).mean(dim=1)
        return (self.loss_weight(t) * per_sample).mean()

    # --- sampling ---------------------------------------------------------------------------
    def split_output(self, out: torch.Tensor, x: torch.Tensor, a: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model output at a point x with abar = a -> (x0_hat, eps_hat)."""
        a = torch.as_tensor(a, dtype=x.dtype, device=x.device)
        if self.prediction_type == "epsilon":
            return (x - (1 - a).sqrt() * out) / a.sqrt(), out
        if self.prediction_type == "x0":
            return out, (x - a.sqrt() * out) / (1 - a).sqrt()
        return a.sqrt() * x - (1 - a).sqrt() * out, a.sqrt() * out + (1 - a).sqrt() * x

    def _levels(self, num_steps: int, spacing: str) -> tuple[list[int], list[float]]:
        """Kept timesteps (descending) and abar after each step (the last is 1.0)."""
        ts = ddim_timesteps(self.T, num_steps, spacing)
        prev = [float(self.alphas_cumprod[t]) for t in ts[1:]] + [1.0]
        return ts, prev

    @staticmethod
    def sigma(a_t: float, a_s: float, eta: float) -> float:
        return eta * math.sqrt((1 - a_s) / (1 - a_t)) * math.sqrt(max(1 - a_t / a_s, 0.0))

    def step(self, out: torch.Tensor, x: torch.Tensor, a_t: float, a_s: float, eta: float = 0.0,
             clip: bool = False, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM update x_t -> x_s; returns (x_s, x0_hat)."""
        x0, eps = self.split_output(out, x, a_t)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        sig = self.sigma(a_t, a_s, eta)
        x_s = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sig**2, 0.0)) * eps
        if sig > 0:
            if noise is None:
                raise ValueError("eta > 0 needs noise")
            x_s = x_s + sig * noise
        return x_s, x0

    @torch.no_grad()
    def sample(self, model: Denoiser, shape: tuple[int, ...], num_steps: int = 50, *, eta: float = 0.0,
               spacing: str = "leading", clip: bool = True, x_T: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """DDIM from x_T ~ N(0, I) (or the given x_T) to x_0.

        ``generator`` (needed for reproducible draws of x_T and of the eta > 0 noise) must live on the
        sampling device: make it with ``make_generator(device, seed)``.
        """
        target = x_T.device if x_T is not None else torch.device(device)
        check_generator(generator, target)
        x = x_T if x_T is not None else torch.randn(shape, generator=generator, device=device)
        ts, prev = self._levels(num_steps, spacing)
        for t, a_s in zip(ts, prev):
            a_t = float(self.alphas_cumprod[t])
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            noise = None
            if eta > 0:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x, _ = self.step(model(x, tt).to(x.dtype), x, a_t, a_s, eta, clip, noise)
        return x

    @torch.no_grad()
    def invert(self, model: Denoiser, x0: torch.Tensor, num_steps: int = 50, *,
               spacing: str = "leading") -> torch.Tensor:
        """Deterministic DDIM encoding x_0 -> x_T: the eta=0 update run forwards, never clipped.

        Each step from level abar_prev to abar_t evaluates the model at the current point with the
        target timestep t (the usual x_{t-1} ~ x_t approximation; exact as S grows).
        """
        ts, prev = self._levels(num_steps, spacing)
        x = x0
        for t, a_prev in zip(reversed(ts), reversed(prev)):
            a_t = float(self.alphas_cumprod[t])
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            out = model(x, tt).to(x.dtype)
            _, eps = self.split_output(out, x, a_t)
            x0_hat = (x - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev)
            x = math.sqrt(a_t) * x0_hat + math.sqrt(1 - a_t) * eps
        return x

    def reconstruct(self, model: Denoiser, x0: torch.Tensor, num_steps: int = 50, *, spacing: str = "leading",
                    clip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Invert then decode with eta = 0 and the same step count; returns (x_T, x0_rec)."""
        xT = self.invert(model, x0, num_steps, spacing=spacing)
        return xT, self.sample(model, x0.shape, num_steps, eta=0.0, spacing=spacing, clip=clip, x_T=xT)
