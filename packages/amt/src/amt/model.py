"""The Advanced Manipulation Transformer: backbone -> hand encoder -> 21 joint queries -> pixel-aligned refinement.

Modules are named as the guide's stages name them (``backbone``, ``hand_encoder``, ``hand_decoder``,
``object_encoder``, ``object_decoder``, ``refinement``) so ``freeze_all_except([...])`` / ``unfreeze_all()``
work with the guide's snippets. No I/O here except loading backbone weights from an explicit local file or an
already-populated local cache (never a download).
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

VIT_NAMES = {
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitl14": "vit_large_patch14_dinov2",
    "dinov2_vitg14": "vit_giant_patch14_dinov2",
    "dinov2_tiny": "vit_small_patch14_dinov2",  # same architecture, tiny width/depth: tests and smoke runs
}
BACKBONES = ["cnn", *VIT_NAMES]
COMPONENTS = ["backbone", "hand_encoder", "hand_decoder", "object_encoder", "object_decoder", "refinement"]


@contextlib.contextmanager
def no_autocast():
    """Autocast off: heads, projections, sigma and losses run in fp32 even inside a bf16/fp16 region (metres
    in bf16 have a 2-4 mm ulp)."""
    with torch.autocast("cpu", enabled=False):
        if torch.cuda.is_available():
            with torch.autocast("cuda", enabled=False):
                yield
        else:
            yield


# ---------------------------------------------------------------- sigma reparam (Zhai et al., ICML 2023)

class SigmaReparamLinear(nn.Module):
    """Linear with W_hat = (gamma / sigma(W)) W.

    sigma(W) is the spectral norm estimated by power iteration: ``u`` (right singular vector) starts from an
    exact SVD; ``power_step()`` does one iteration (the model calls it once per training forward, outside any
    checkpointed region, so recomputation never advances it twice); the forward computes
    sigma = v^T W u with v = normalize(W u), differentiable w.r.t. W, in fp32. gamma starts at sigma(W_0), so
    the layer equals the plain Linear at initialisation.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        plain = nn.Linear(in_features, out_features, bias=bias)
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(plain.weight.detach().clone())
        self.bias = nn.Parameter(plain.bias.detach().clone()) if bias else None
        with torch.no_grad():
            _, s, vh = torch.linalg.svd(self.weight.double(), full_matrices=False)
        self.register_buffer("u", vh[0].float().clone())
        self.gamma = nn.Parameter(s[0].float().clone().reshape(()))

    @torch.no_grad()
    def power_step(self) -> None:
        w = self.weight.detach().float()
        v = F.normalize(w @ self.u, dim=0)
        self.u.copy_(F.normalize(w.t() @ v, dim=0))

    def sigma(self) -> torch.Tensor:
        with no_autocast():
            w = self.weight.float()
            # u is renormalised here: an EMA copy averages the u buffers of many steps, and an average of unit
            # vectors is shorter than 1 (0.87 seen), which would shrink sigma and inflate the layer by 1/|u|.
            u = F.normalize(self.u.float(), dim=0)
            with torch.no_grad():
                v = F.normalize(w @ u, dim=0)
            return torch.dot(v, w @ u)

    def effective_weight(self) -> torch.Tensor:
        with no_autocast():
            return self.weight.float() * (self.gamma.float() / self.sigma())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight().to(self.weight.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, sigma_reparam=True"


def make_linear(sr: bool):
    return (lambda i, o, bias=True: SigmaReparamLinear(i, o, bias)) if sr else (lambda i, o, bias=True: nn.Linear(i, o, bias))


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out Linear layers (so sigma-reparam covers every projection)."""

    def __init__(self, dim: int, heads: int, dropout: float, linear):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q, self.k, self.v, self.out = linear(dim, dim), linear(dim, dim), linear(dim, dim), linear(dim, dim)

    def forward(self, x, ctx):
        B, N, D = x.shape
        h = self.heads
        q = self.q(x).view(B, N, h, D // h).transpose(1, 2)
        k = self.k(ctx).view(B, ctx.shape[1], h, D // h).transpose(1, 2)
        v = self.v(ctx).view(B, ctx.shape[1], h, D // h).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(o.transpose(1, 2).reshape(B, N, D))


class DecoderLayer(nn.Module):
    """Pre-norm: joint queries self-attend, cross-attend to the patch tokens, then an MLP."""

    def __init__(self, dim: int, heads: int, dropout: float, linear):
        super().__init__()
        self.n1, self.n2, self.n3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, dropout, linear)
        self.cross_attn = Attention(dim, heads, dropout, linear)
        self.fc1, self.fc2 = linear(dim, 4 * dim), linear(4 * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, q, tokens, pos):
        x = self.n1(q)
        q = q + self.drop(self.self_attn(x, x))
        q = q + self.drop(self.cross_attn(self.n2(q), tokens + pos))
        return q + self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.n3(q))))))


def sincos_2d(h: int, w: int, dim: int, device) -> torch.Tensor:
    """Fixed 2-D sine-cosine positional embedding [h*w, dim]."""
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    parts = []
    for c in (xs.reshape(-1), ys.reshape(-1)):
        a = c[:, None] * omega[None]
        parts += [a.sin(), a.cos()]
    pe = torch.cat(parts, 1)
    return F.pad(pe, (0, dim - pe.shape[1]))


# ---------------------------------------------------------------- backbones

class ConvBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = nn.GroupNorm(8, cout)
        self.skip = nn.Conv2d(cin, cout, 1, stride, bias=False) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x):
        y = F.gelu(self.n1(self.conv1(x)))
        return F.gelu(self.n2(self.conv2(y)) + self.skip(x))


class CNNBackbone(nn.Module):
    """A small residual CNN (stride 8) for fast CPU runs; GroupNorm, so no batch-statistics buffers."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.GroupNorm(8, width), nn.GELU())
        self.blocks = nn.ModuleList([ConvBlock(width, 2 * width, 2), ConvBlock(2 * width, 4 * width, 2),
                                     ConvBlock(4 * width, 4 * width, 1)])
        self.out_dim, self.patch = 4 * width, 8
        self.pretrained = False

    def forward(self, x, ckpt: set[int] = frozenset()):
        x = self.stem(x)
        for i, blk in enumerate(self.blocks):
            x = checkpoint(blk, x, use_reentrant=False) if (i in ckpt and torch.is_grad_enabled()) else blk(x)
        B, C, h, w = x.shape
        return x.flatten(2).transpose(1, 2), (h, w)

    @property
    def num_blocks(self):
        return len(self.blocks)


def cached_timm_weights(arch: str) -> str | None:
    """Path of the architecture's default pretrained weights in the local Hugging Face cache, or None.
    Looks at files only (``try_to_load_from_cache``); nothing is requested over the network."""
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        repo = timm.models.get_pretrained_cfg(arch).hf_hub_id
        for filename in ("model.safetensors", "pytorch_model.bin"):
            path = try_to_load_from_cache(repo, filename)
            if isinstance(path, str) and os.path.isfile(path):
                return path
    except Exception:  # noqa: BLE001 - no hub library / no such config: treated as "not cached"
        return None
    return None


class DinoV2Backbone(nn.Module):
    """The DINOv2 architecture from timm (ViT, patch 14, LayerScale; positional embeddings interpolated to the
    crop size). Weights: ``weights`` (a local file) > an already-populated local HF/timm cache > random init
    with a loud warning. Never downloads."""

    def __init__(self, name: str, image_size: int, weights: str | None = None, freeze_layers: int = 0, log=None):
        super().__init__()
        import timm

        kwargs = dict(img_size=image_size, num_classes=0)
        if name == "dinov2_tiny":
            kwargs.update(embed_dim=48, depth=3, num_heads=3)
        self.pretrained = False
        self.weights_source = "random"
        arch = VIT_NAMES[name]
        model = None
        if weights:
            if not os.path.isfile(weights):
                from trainkit.errors import UserError
                raise UserError("backbone weights file not found", weights, "a local DINOv2 checkpoint (.pth / .safetensors)")
            model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=weights), **kwargs)
            self.pretrained, self.weights_source = True, weights
        elif name != "dinov2_tiny":
            cached = cached_timm_weights(arch)  # an already-populated local HF cache only: never a request
            if cached is not None:
                model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=cached), **kwargs)
                self.pretrained, self.weights_source = True, cached
        if model is None:
            model = timm.create_model(arch, pretrained=False, **kwargs)
            msg = (f"WARNING: no local DINOv2 weights for {name} (give model.backbone_weights=PATH or populate the HF "
                   f"cache); the backbone starts from RANDOM initialisation and will learn far less than a "
                   f"pretrained one")
            if name != "dinov2_tiny":
                warnings.warn(msg, stacklevel=2)
                (log or (lambda m: print(m, file=sys.stderr)))(msg)
        self.vit = model
        self.out_dim, self.patch = model.embed_dim, 14
        # Freezing keeps pretrained features; frozen *random* blocks would only be dead weight for the run.
        self.freeze_layers = freeze_layers if self.pretrained else 0
        if freeze_layers > 0 and not self.pretrained and name != "dinov2_tiny":
            (log or (lambda m: print(m, file=sys.stderr)))(
                f"model.freeze_layers={freeze_layers} ignored: the backbone has no pretrained weights, so all its "
                f"blocks train")
        self.apply_freeze()

    def apply_freeze(self):
        if self.freeze_layers > 0:
            for mod in (self.vit.patch_embed,):
                mod.requires_grad_(False)
            for name in ("pos_embed", "cls_token", "reg_token"):
                p = getattr(self.vit, name, None)
                if isinstance(p, nn.Parameter):
                    p.requires_grad_(False)
            for blk in self.vit.blocks[: self.freeze_layers]:
                blk.requires_grad_(False)

    @property
    def num_blocks(self):
        return len(self.vit.blocks)

    def forward(self, x, ckpt: set[int] = frozenset()):
        v = self.vit
        t = v.patch_embed(x)
        t = v._pos_embed(t)
        t = v.patch_drop(t)
        t = v.norm_pre(t)
        for i, blk in enumerate(v.blocks):
            t = checkpoint(blk, t, use_reentrant=False) if (i in ckpt and torch.is_grad_enabled()) else blk(t)
        t = v.norm(t)
        t = t[:, v.num_prefix_tokens:]
        h, w = x.shape[-2] // 14, x.shape[-1] // 14
        return t, (h, w)


# ---------------------------------------------------------------- the model

class AMTModel(nn.Module):
    """Predicts root-relative 3-D joints (coarse + refined), the absolute root, and the grasped object's centre.

    ``forward(images [B,3,S,S], K [B,3,3] crop intrinsics)`` returns a dict of fp32 tensors:
    ``joints_rel`` [B,21,3] (coarse, m), ``refined`` list of [B,21,3] (one per refinement step), ``root`` [B,3]
    (camera frame, m), ``obj_rel`` [B,3] (object centre relative to the root, m).
    """

    def __init__(self, *, backbone: str = "cnn", image_size: int = 128, hidden_dim: int = 128, num_heads: int = 4,
                 num_decoder_layers: int = 2, num_refinement_steps: int = 2, use_sigma_reparam: bool = True,
                 dropout: float = 0.0, freeze_layers: int = 0, backbone_weights: str | None = None,
                 cnn_width: int = 32, log=None):
        super().__init__()
        self.image_size, self.use_sigma_reparam = image_size, use_sigma_reparam
        self.num_refinement_steps = num_refinement_steps
        linear = make_linear(use_sigma_reparam)
        if backbone == "cnn":
            self.backbone = CNNBackbone(cnn_width)
        else:
            self.backbone = DinoV2Backbone(backbone, image_size, backbone_weights, freeze_layers, log=log)
        C, D = self.backbone.out_dim, hidden_dim
        self.hand_encoder = nn.ModuleDict({"proj": linear(C, D), "norm": nn.LayerNorm(D)})
        self.hand_decoder = nn.ModuleDict({
            "layers": nn.ModuleList([DecoderLayer(D, num_heads, dropout, linear) for _ in range(num_decoder_layers)]),
            "norm": nn.LayerNorm(D),
            "joint_head": linear(D, 3), "root_head": linear(D, 3),
        })
        self.queries = nn.Parameter(torch.randn(22, D) * 0.02)  # 21 joints + 1 root query
        self.refinement = nn.ModuleList([
            nn.Sequential(linear(2 * D + 5, D), nn.GELU(), linear(D, D), nn.GELU(), linear(D, 3))
            for _ in range(num_refinement_steps)])
        self.object_encoder = nn.ModuleDict({"proj": linear(C, D), "norm": nn.LayerNorm(D),
                                             "attn": Attention(D, num_heads, dropout, linear)})
        self.object_query = nn.Parameter(torch.randn(1, D) * 0.02)
        self.object_decoder = nn.Sequential(linear(D, D), nn.GELU(), linear(D, 3))
        self._ckpt_backbone: set[int] = set()
        self._ckpt_decoder: set[int] = set()

    # ---- the guide's component API
    def freeze_all_except(self, names: list[str]) -> None:
        unknown = [n for n in names if n not in COMPONENTS]
        if unknown:
            from trainkit.errors import UserError
            raise UserError(f"unknown component {unknown[0]!r}", "freeze_all_except", f"one of {COMPONENTS}")
        for n in COMPONENTS:
            getattr(self, n).requires_grad_(n in names)
        self.queries.requires_grad_("hand_decoder" in names)
        self.object_query.requires_grad_("object_encoder" in names)
        if "backbone" in names and isinstance(self.backbone, DinoV2Backbone):
            self.backbone.apply_freeze()

    def unfreeze_all(self) -> None:
        """Everything trainable again, except the backbone blocks that ``freeze_layers`` keeps frozen."""
        self.requires_grad_(True)
        if isinstance(self.backbone, DinoV2Backbone):
            self.backbone.apply_freeze()

    def component_of(self, param_name: str) -> str:
        head = param_name.split(".")[0]
        return {"queries": "hand_decoder", "object_query": "object_encoder"}.get(head, head)

    def set_gradient_checkpointing(self, enabled: bool, ratio: float = 0.5) -> None:
        """Checkpoint ``ratio`` of the trainable transformer blocks (backbone blocks and decoder layers), evenly
        spaced. Backbone blocks that ``freeze_layers`` keeps frozen save no activations for backward anyway, so
        checkpointing them would buy nothing: ratio 0.5 with 12 of 24 blocks frozen checkpoints 6 of the 12
        trainable ones, not 6 of all 24."""
        def pick(first, n):
            k = round(ratio * (n - first)) if enabled else 0
            return {first + int(i) for i in torch.linspace(0, n - first - 1, k).round().tolist()} if k > 0 else set()
        self._ckpt_backbone = pick(getattr(self.backbone, "freeze_layers", 0), self.backbone.num_blocks)
        self._ckpt_decoder = pick(0, len(self.hand_decoder["layers"]))

    def sigma_layers(self):
        return [m for m in self.modules() if isinstance(m, SigmaReparamLinear)]

    @torch.no_grad()
    def refresh_sigma(self, steps: int = 10) -> None:
        """Power-iterate every sigma-reparam layer's ``u`` to its weight's top singular vector. For an EMA copy
        before it is evaluated or saved: its averaged ``u`` points between the raw model's past vectors, not
        along the averaged weight's own singular vector (the training forward only steps the raw model)."""
        for m in self.sigma_layers():
            for _ in range(steps):
                m.power_step()

    # ---- forward
    def forward(self, images: torch.Tensor, K: torch.Tensor) -> dict:
        if self.training:
            for m in self.sigma_layers():  # one power step per training forward, never inside a recomputation
                m.power_step()
        B = images.shape[0]
        S = images.shape[-1]
        feats, (h, w) = self.backbone(images, self._ckpt_backbone)
        tokens = self.hand_encoder["norm"](self.hand_encoder["proj"](feats))
        D = tokens.shape[-1]
        pos = sincos_2d(h, w, D, tokens.device).to(tokens.dtype)[None]
        q = self.queries[None].expand(B, -1, -1).to(tokens.dtype)
        for i, layer in enumerate(self.hand_decoder["layers"]):
            if i in self._ckpt_decoder and torch.is_grad_enabled():
                q = checkpoint(layer, q, tokens, pos, use_reentrant=False)
            else:
                q = layer(q, tokens, pos)
        q = self.hand_decoder["norm"](q)
        # object branch: one query attends to its own projection of the backbone features
        otok = self.object_encoder["norm"](self.object_encoder["proj"](feats))
        oq = self.object_encoder["attn"](self.object_query[None].expand(B, -1, -1).to(otok.dtype), otok + pos)
        fmap = tokens.transpose(1, 2).reshape(B, D, h, w)
        with no_autocast():
            K = K.float()
            qf = q.float()
            joints = self.hand_decoder["joint_head"](qf[:, :21]) * 0.1  # decimetre-scale outputs -> metres
            r = self.hand_decoder["root_head"](qf[:, 21])
            fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
            u = (S - 1) / 2 + r[:, 0] * S / 2
            v = (S - 1) / 2 + r[:, 1] * S / 2
            # Depth prior from the crop: the crop side is ~1.5x a ~0.15 m hand, so Z ~ 0.225 fx' / S.
            z = 0.225 * torch.sqrt(fx * fy) / S * torch.exp(r[:, 2].clamp(-3, 3))
            root = torch.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], -1)
            obj_rel = self.object_decoder(oq[:, 0].float()) * 0.1
            refined = []
            cur = joints
            fm = fmap.float()
            for step in self.refinement:
                uv = project_points(K, (cur + root[:, None]).detach())
                grid = (uv + 0.5) / S * 2 - 1  # align_corners=False: the feature map covers the crop's extent
                sampled = F.grid_sample(fm, grid[:, :, None, :], mode="bilinear", padding_mode="zeros",
                                        align_corners=False)[..., 0].transpose(1, 2)
                inp = torch.cat([sampled, qf[:, :21], cur * 10, grid.clamp(-2, 2)], -1)
                cur = cur + step(inp) * 0.01
                refined.append(cur)
        return {"joints_rel": joints, "refined": refined, "root": root, "obj_rel": obj_rel}


def project_points(K: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """[B,3,3] x [B,N,3] -> [B,N,2] pixels; depth clamped away from 0 so early wild predictions stay finite."""
    p = X @ K.transpose(1, 2)
    return p[..., :2] / p[..., 2:3].clamp(min=1e-3)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parameter_table(model: AMTModel) -> dict:
    table = {}
    for name, p in model.named_parameters():
        c = model.component_of(name)
        t = table.setdefault(c, {"total": 0, "trainable": 0})
        t["total"] += p.numel()
        t["trainable"] += p.numel() if p.requires_grad else 0
    return table
