"""WuBu nesting: stacks of Poincare-ball levels with learnable geometry (geoopt).

What differs from the v0.1 script (see README "Defects fixed"):
- curvature c (geoopt ``PoincareBall(learnable=True)``), scale s and spread sigma are differentiable
  tensors that receive gradients (the original read them with ``.item()``);
- tangent vectors are divided by sqrt(dim) before the exponential map, so a LayerNorm output (norm sqrt(dim))
  lands at tangent norm ~s instead of saturating every point at the ball's edge;
- rotations are ``R = matrix_exp(A - A^T)`` (exactly orthogonal for every A) and no later init overwrites them;
- c acts on the function: relative vectors to the boundary points are Mobius differences and their hyperbolic
  distances are features (the original's log0(exp0(.)) round trips cancelled c); sigma weights them by
  exp(-d^2 / (2 sigma^2)); ``euclidean`` gives the same ops in their c -> 0 limit (--euclidean);
- the temporal stack (WuBu-T) mixes along time inside each level (depthwise temporal convolution in the tangent space).
"""
from __future__ import annotations

import math

import geoopt
import torch
import torch.nn as nn
import torch.nn.functional as F

PHI = (1 + 5 ** 0.5) / 2


def _inv_softplus(x: float) -> float:
    return math.log(math.expm1(x))


def new_ball(c: float, learnable: bool = True) -> geoopt.PoincareBall:
    """A Poincare ball whose curvature is a softplus-parameterised tensor (geoopt); learnable unless frozen."""
    ball = geoopt.PoincareBall(c=1.0, learnable=True)
    with torch.no_grad():
        ball.isp_c.fill_(_inv_softplus(max(float(c), 1e-4)))
    ball.isp_c.requires_grad_(learnable)  # frozen: the ablation of the original's fixed curvatures
    return ball


def expmap0(v: torch.Tensor, ball: geoopt.PoincareBall | None) -> torch.Tensor:
    """Exponential map at the origin in fp32 (geoopt clamps tanh and projects into the ball); identity when
    ``ball`` is None (the --euclidean stacks)."""
    if ball is None:
        return v
    with torch.autocast(device_type=v.device.type, enabled=False):
        return ball.expmap0(v.float())


def logmap0(y: torch.Tensor, ball: geoopt.PoincareBall | None) -> torch.Tensor:
    if ball is None:
        return y
    with torch.autocast(device_type=y.device.type, enabled=False):
        return ball.logmap0(ball.projx(y.float()))


def mobius_sub(x: torch.Tensor, b: torch.Tensor, ball: geoopt.PoincareBall | None) -> torch.Tensor:
    """(-b) (+)_c x: the gyrovector from b to x, on the ball (x - b when Euclidean). Unlike a difference of
    logmap0s it depends on c whenever b is off the origin."""
    if ball is None:
        return x - b
    with torch.autocast(device_type=x.device.type, enabled=False):
        return ball.projx(ball.mobius_add(-b.float(), x.float()))


def gyro_dist(g: torch.Tensor, ball: geoopt.PoincareBall | None) -> torch.Tensor:
    """Hyperbolic distance of a gyrovector g = (-b) (+) x, i.e. d_c(b, x) = 2/sqrt(c) artanh(sqrt(c) |g|)
    (geoopt's metric); its c -> 0 limit 2 |g| when Euclidean."""
    if ball is None:
        return 2 * g.norm(dim=-1)
    with torch.autocast(device_type=g.device.type, enabled=False):
        return ball.dist0(g.float())


class Rotation(nn.Module):
    """R = exp(A - A^T): orthogonal for every A, differentiable, keeps its initialisation.

    With phi-influenced init the 2x2 blocks start rotated by (pi/3)*phi^(level mod 3)/dim; otherwise identity.
    """

    def __init__(self, dim: int, level: int, phi_init: bool):
        super().__init__()
        a = torch.zeros(dim, dim)
        if phi_init:
            angle = (math.pi / 3) * PHI ** (level % 3) / dim
            for j in range(0, dim - 1, 2):
                a[j + 1, j] = angle / 2  # A - A^T puts +angle below, -angle above the diagonal
                a[j, j + 1] = -angle / 2
        self.generator = nn.Parameter(a + 1e-3 * torch.randn(dim, dim))

    def matrix(self) -> torch.Tensor:
        return torch.linalg.matrix_exp(self.generator - self.generator.T)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return v @ self.matrix().T


class WuBuLevel(nn.Module):
    """One nested level: point -> (tangent at 0, gyrovectors to and hyperbolic distances from the boundary
    points, descriptor) -> combiner -> new point (and its log).

    Where c acts (the original's log0(exp0(.)) round trip cancelled it): the relative vectors are Mobius
    differences (-b) (+)_c x and the distances d_c(b, x) to learnable boundary points spread over the ball are
    features and the spread's weights. Invariant: with ``euclidean`` the same level with c -> 0 (x - b, 2|x - b|)."""

    def __init__(self, dim: int, curvature: float, num_boundaries: int = 4, dropout: float = 0.1,
                 temporal: bool = False, learnable_curvature: bool = True, carried: bool = False,
                 euclidean: bool = False):
        super().__init__()
        self.dim = dim
        self.ball = None if euclidean else new_ball(curvature, learnable_curvature)
        self.log_scale = nn.Parameter(torch.zeros(()))                 # s = exp(log_scale), starts at 1
        self.log_spread = nn.Parameter(torch.tensor(math.log(2.0)))   # sigma in distance units
        # Boundary points spread over the ball at tangent norm ~1, the norm the level's inputs have (s = 1):
        # the original's 1e-2 put them at the origin, where the distance to them barely depends on c.
        spread = lambda n: torch.randn(n, dim) / math.sqrt(dim)  # noqa: E731
        if euclidean:
            self.boundaries = nn.Parameter(spread(num_boundaries))
            self.descriptor = nn.Parameter(spread(1)[0] * 0.1)
        else:
            self.boundaries = geoopt.ManifoldParameter(self.ball.expmap0(spread(num_boundaries)).detach(), manifold=self.ball)
            self.descriptor = geoopt.ManifoldParameter(self.ball.expmap0(spread(1)[0] * 0.1).detach(), manifold=self.ball)
        k = num_boundaries * (2 if carried else 1)  # the previous level's boundaries are carried in, plus our own
        hidden = max(32, dim)
        self.combiner = nn.Sequential(nn.Linear(3 * dim + k, hidden), nn.LayerNorm(hidden), nn.GELU(),
                                      nn.Dropout(dropout), nn.Linear(hidden, dim), nn.LayerNorm(dim))
        # WuBu-T: depthwise conv along time in the tangent space (residual), so a frame sees its neighbours.
        self.time_mix = nn.Conv1d(dim, dim, kernel_size=3, padding=1, groups=dim) if temporal else None

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(1e-3, 10.0)

    @property
    def spread(self) -> torch.Tensor:
        return self.log_spread.exp().clamp_min(1e-3)

    def forward(self, point, boundaries_in=None, descriptor_in=None, time_len: int | None = None):
        """point: (N, dim) on this level's ball. Returns (new point, tangent output)."""
        u = logmap0(point, self.ball)
        b = self.boundaries if boundaries_in is None else torch.cat([boundaries_in, self.boundaries], 0)  # (K, dim)
        g = mobius_sub(point.unsqueeze(-2), b, self.ball)                    # (N, K, dim) gyrovectors b -> x
        dist = gyro_dist(g, self.ball)                                       # (N, K) d_c(b, x)
        weight = torch.exp(-dist.pow(2) / (2 * self.spread ** 2)).unsqueeze(-1)
        rel = (weight * logmap0(g, self.ball)).sum(-2)
        d = self.descriptor if descriptor_in is None else mobius_sub(self.descriptor, -descriptor_in, self.ball)
        d = logmap0(d, self.ball).expand_as(u)
        v = self.combiner(torch.cat([u, rel, d, dist], -1))
        if self.time_mix is not None and time_len:
            seq = v.reshape(-1, time_len, self.dim).transpose(1, 2)            # (B, dim, T)
            v = v + self.time_mix(seq).transpose(1, 2).reshape_as(v)
        out = expmap0(v * (self.scale / math.sqrt(self.dim)), self.ball)
        # The level's output for aggregation is the log of its output point, so the scale (and, through the
        # ball's projection, the curvature) shape what later layers see; times sqrt(dim) to undo the
        # normalisation above (otherwise every level shrinks the signal by sqrt(dim) and the encoder's output
        # barely depends on its input).
        return out, logmap0(out, self.ball) * math.sqrt(self.dim)


class LevelTransform(nn.Module):
    """Maps points (and boundary/descriptor points) from ball i to ball i+1: log, rotate, linear, exp."""

    def __init__(self, dim_in: int, dim_out: int, level: int, use_rotation: bool, phi_rotation: bool):
        super().__init__()
        self.rotation = Rotation(dim_in, level, phi_rotation) if use_rotation else None
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x, ball_in, ball_out, dim_out):
        v = logmap0(x, ball_in)
        if self.rotation is not None:
            v = self.rotation(v)
        # Level outputs have tangent norm ~s (see WuBuLevel), and a near-isometric linear keeps it there,
        # so the next ball is not saturated either.
        return expmap0(self.linear(v), ball_out)


class WuBuStack(nn.Module):
    """Input (N, in_dim) or (B, T, in_dim) -> (.., out_dim): the concatenated level tangents, projected."""

    def __init__(self, in_dim: int, out_dim: int, dims, curvatures, *, use_rotation=False, phi_curvature=False,
                 phi_rotation=False, dropout=0.1, temporal=False, num_boundaries=4, learnable_curvature=True,
                 euclidean=False):
        super().__init__()
        dims, curvatures = list(dims), list(curvatures)
        if len(curvatures) < len(dims):
            curvatures += [curvatures[-1]] * (len(dims) - len(curvatures))
        self.temporal = temporal
        self.dims = dims
        self.input = nn.Sequential(nn.Linear(in_dim, dims[0]), nn.LayerNorm(dims[0]))
        self.levels = nn.ModuleList()
        for i, (d, c) in enumerate(zip(dims, curvatures)):
            c = c * PHI ** ((i % 4) - 1.5) if phi_curvature else c
            self.levels.append(WuBuLevel(d, c, num_boundaries, dropout, temporal=temporal,
                                         learnable_curvature=learnable_curvature, carried=i > 0, euclidean=euclidean))
        self.transforms = nn.ModuleList(
            LevelTransform(dims[i], dims[i + 1], i, use_rotation, phi_rotation) for i in range(len(dims) - 1))
        # Tangent-space aggregation over the stack input and every level (the input is a skip path).
        self.output = nn.Linear(dims[0] + sum(dims), out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        time_len = x.shape[1] if (self.temporal and x.dim() == 3) else None
        v = self.input(x.reshape(-1, x.shape[-1]))
        level0 = self.levels[0]
        point = expmap0(v * (level0.scale / math.sqrt(self.dims[0])), level0.ball)
        boundaries = descriptor = None
        tangents = [v]
        for i, level in enumerate(self.levels):
            point, tangent = level(point, boundaries, descriptor, time_len)
            tangents.append(tangent)
            if i + 1 < len(self.levels):
                nxt, tf = self.levels[i + 1], self.transforms[i]
                point = tf(point, level.ball, nxt.ball, nxt.dim)
                # The next level compares against this level's boundaries/descriptor carried over, as in the
                # original (its own boundaries are used when nothing is carried, i.e. at level 0).
                boundaries = tf(level.boundaries, level.ball, nxt.ball, nxt.dim)
                descriptor = tf(level.descriptor, level.ball, nxt.ball, nxt.dim)
        out = self.output(torch.cat(tangents, -1))
        return out.reshape(*shape, -1)


def ball_parameters(module: nn.Module):
    """(Riemannian ball-valued parameters, Euclidean parameters) of a module."""
    ball, euclid = [], []
    for p in module.parameters():
        (ball if isinstance(p, geoopt.ManifoldParameter) else euclid).append(p)
    return ball, euclid
