"""The original DSN's diversity-representativeness reward, batched over episodes.

For features ``X [T, D]`` and a pick set ``Y`` (``K = |Y|``):

* diversity ``R_div = sum_{i,j in Y} d(i, j) / (K (K - 1))`` with ``d = 1 - cos`` and ``d(i, j) = 1`` when
  ``|i - j| > lambda`` (temporal cutoff, 20 steps); the diagonal is inside the sum as in the original
  (it is 0 up to rounding); ``K = 1`` gives 0;
* representativeness ``R_rep = exp(-(1/T) sum_t min_{t' in Y} ||x_t - x_t'||^2)`` on the raw features,
  with *squared* Euclidean distances by default (the PyTorch port; the Theano original used plain
  distances: ``squared=False``);
* ``R = 0.5 (R_div + R_rep)``, and 0 when nothing is picked.

The two ``T x T`` matrices depend only on the video, so they are computed once per video (and cached
across epochs by :mod:`dsn.cache`); all N episodes are then scored together from them.
"""
from __future__ import annotations

import torch


def reward_matrices(features: torch.Tensor, temporal_cutoff: int = 20, squared: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(div_mat, rep_mat)``: the cut-off 1 - cos dissimilarity and the (squared) distance matrix, ``[T, T]``.

    Both come from one Gram matrix ``X X^T`` (cos = G_ij / (|x_i| |x_j|), |x_i - x_j|^2 = G_ii + G_jj - 2 G_ij),
    so a video costs one ``T x T x D`` product.
    """
    x = features.detach().float()
    gram = x @ x.t()
    sq = gram.diagonal().clone()
    inv = sq.sqrt().clamp_min(1e-12).reciprocal()
    cos = gram * (inv[:, None] * inv[None, :])
    # Keep cos only inside the band |i - j| <= lambda: outside it d = 1 - 0 = 1, the temporal cutoff.
    cos.triu_(-temporal_cutoff).tril_(temporal_cutoff)
    div_mat = cos.neg_().add_(1.0)
    rep_mat = gram.mul_(-2.0).add_(sq[:, None]).add_(sq[None, :])
    if not squared:
        rep_mat = rep_mat.clamp_min_(0).sqrt_()
    return div_mat, rep_mat


def batched_reward(div_mat: torch.Tensor, rep_mat: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Rewards ``[N]`` for binary ``actions [N, T]`` from one video's matrices (no Python loop over episodes).

    Only steps picked by some episode matter, so the work is restricted to their union U:
    ``a^T D a`` on the ``U x U`` block for diversity, and a scatter-min of the picked rows for
    representativeness.
    """
    a = actions.detach().to(div_mat.dtype)
    picked = a.sum(1)
    union = a.any(0).nonzero().squeeze(1)
    rewards = torch.zeros(a.shape[0], dtype=div_mat.dtype, device=div_mat.device)
    if union.numel() == 0:
        return rewards
    a_u = a[:, union]
    d_u = div_mat[union][:, union]
    div_sum = ((a_u @ d_u) * a_u).sum(1)
    pairs = picked * (picked - 1)
    r_div = torch.where(pairs > 0, div_sum / pairs.clamp_min(1), torch.zeros_like(div_sum))
    # Every (episode, pick) pair gathers its row of the symmetric distance matrix; a scatter-min per
    # episode then gives each step's distance to the nearest pick (sum_n K_n rows, no [N, U, T] mask).
    ep_idx, step_idx = a.nonzero(as_tuple=True)
    rows = rep_mat.index_select(0, step_idx)  # [P, T]
    nearest = torch.full((a.shape[0], rep_mat.shape[1]), float("inf"), dtype=rep_mat.dtype, device=rep_mat.device)
    nearest = nearest.scatter_reduce(0, ep_idx[:, None].expand_as(rows), rows, reduce="amin", include_self=True)
    r_rep = torch.exp(-nearest.mean(1))
    return torch.where(picked > 0, 0.5 * (r_div + r_rep), rewards)


def compute_reward(features: torch.Tensor, actions: torch.Tensor, temporal_cutoff: int = 20, squared: bool = True) -> torch.Tensor:
    """Convenience: matrices + batched rewards. ``actions`` may be ``[T]`` or ``[N, T]``."""
    single = actions.dim() == 1
    div_mat, rep_mat = reward_matrices(features, temporal_cutoff, squared)
    r = batched_reward(div_mat, rep_mat, actions.view(1, -1) if single else actions)
    return r[0] if single else r


def reward_loop(features: torch.Tensor, actions: torch.Tensor, temporal_cutoff: int = 20, squared: bool = True) -> torch.Tensor:
    """Reference: one episode at a time, written the straightforward way (as the original ``compute_reward``)."""
    x = features.detach().float()
    T = x.shape[0]
    out = []
    for ep in actions:
        picks = ep.nonzero().squeeze(1)
        k = picks.numel()
        if k == 0:
            out.append(torch.tensor(0.0))
            continue
        normed = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        dissim = 1.0 - normed @ normed.t()
        sub = dissim[picks][:, picks]
        if k == 1:
            r_div = torch.tensor(0.0)
        else:
            gap = (picks[:, None] - picks[None, :]).abs()
            sub = sub.clone()
            sub[gap > temporal_cutoff] = 1.0
            r_div = sub.sum() / (k * (k - 1))
        sq = (x * x).sum(1, keepdim=True).expand(T, T)
        dist = sq + sq.t() - 2.0 * x @ x.t()
        if not squared:
            dist = dist.clamp_min(0).sqrt()
        nearest = dist[:, picks].min(1)[0]
        r_rep = torch.exp(-nearest.mean())
        out.append(0.5 * (r_div + r_rep))
    return torch.stack(out)
