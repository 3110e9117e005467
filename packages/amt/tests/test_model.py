import pytest
import torch
import torch.nn as nn

from amt.losses import compute_losses, diversity_loss, penetration_loss
from amt.model import AMTModel, SigmaReparamLinear


def test_sigma_reparam_equals_plain_layer_at_init_and_estimates_the_spectral_norm():
    torch.manual_seed(0)
    layer = SigmaReparamLinear(24, 16)
    plain = nn.Linear(24, 16)
    plain.load_state_dict({"weight": layer.weight.detach(), "bias": layer.bias.detach()})
    x = torch.randn(5, 24)
    assert torch.allclose(layer(x), plain(x), atol=1e-5)  # gamma = sigma(W0)
    assert layer.gamma.item() == pytest.approx(torch.linalg.matrix_norm(layer.weight, 2).item(), rel=1e-5)
    with torch.no_grad():  # a new W: the power iteration converges to its largest singular value
        layer.weight.copy_(torch.randn(16, 24))
    true = torch.linalg.matrix_norm(layer.weight, 2).item()
    first = layer.sigma().item()
    for _ in range(100):
        layer.power_step()
    assert abs(layer.sigma().item() - true) < 1e-4 * true and abs(first - true) > abs(layer.sigma().item() - true)
    # the effective weight's spectral norm is gamma
    assert torch.linalg.matrix_norm(layer.effective_weight(), 2).item() == pytest.approx(layer.gamma.item(), rel=1e-4)


def test_sigma_reparam_gamma_and_weight_get_gradients_and_sigma_is_fp32_under_bf16():
    layer = SigmaReparamLinear(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(4, 8))
        assert layer.sigma().dtype == torch.float32
    y.float().pow(2).sum().backward()
    assert layer.gamma.grad is not None and layer.gamma.grad.abs() > 0
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def _model(**kw):
    torch.manual_seed(0)
    args = dict(backbone="cnn", image_size=64, hidden_dim=32, num_heads=4, num_decoder_layers=2,
                num_refinement_steps=2, cnn_width=8)
    args.update(kw)
    return AMTModel(**args)


def _batch(B=4, S=64):
    K = torch.tensor([[100.0, 0, 31.5], [0, 100.0, 31.5], [0, 0, 1]]).expand(B, 3, 3).clone()
    rel = torch.randn(B, 21, 3) * 0.03
    rel[:, 0] = 0
    root = torch.tensor([0.0, 0.0, 0.5]).expand(B, 3)
    uv = (rel + root[:, None]) @ K.transpose(1, 2)
    return {"image": torch.randn(B, 3, S, S), "K": K, "joints_rel": rel, "root": root, "joints_2d": uv[..., :2] / uv[..., 2:],
            "obj_rel": torch.randn(B, 3) * 0.05, "obj_radius": torch.full((B,), 0.03)}


def test_every_new_linear_is_sigma_reparam_and_switchable():
    m = _model()
    new = [mod for name, mod in m.named_modules() if not name.startswith("backbone")]
    assert not any(type(mod) is nn.Linear for mod in new)
    assert sum(isinstance(mod, SigmaReparamLinear) for mod in new) > 20  # q/k/v/out, MLPs, heads, refinement
    off = _model(use_sigma_reparam=False)
    assert not any(isinstance(mod, SigmaReparamLinear) for mod in off.modules())


def test_forward_outputs_fp32_under_bf16_and_losses_are_finite():
    m = _model()
    b = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(b["image"], b["K"])
    assert out["joints_rel"].dtype == torch.float32 and out["root"].dtype == torch.float32
    assert len(out["refined"]) == 2 and out["refined"][-1].shape == (4, 21, 3)
    w = dict(hand_pose=1, hand_pose_refined=1.2, hand_2d=0.3, root=1, object_position=0.5, diversity=0.01,
             physics_penetration=0.1)
    loss, terms = compute_losses(out, b, w, 0.5)
    assert torch.isfinite(loss) and set(terms) == set(w)
    loss.backward()
    assert m.refinement[0][0].weight.grad.abs().sum() > 0  # refinement supervised from the first step


def test_freeze_all_except_and_unfreeze_all_use_the_guides_names():
    m = _model()
    m.freeze_all_except(["hand_encoder", "hand_decoder"])
    trainable = {m.component_of(n) for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"hand_encoder", "hand_decoder"}
    m.unfreeze_all()
    assert all(p.requires_grad for p in m.parameters())


def test_gradient_checkpointing_picks_the_ratio_of_blocks():
    m = _model(backbone="dinov2_tiny", image_size=56, num_decoder_layers=4)
    m.set_gradient_checkpointing(True, 0.5)
    assert m._ckpt_backbone == {0, 2} and len(m._ckpt_decoder) == 2
    m.set_gradient_checkpointing(False, 0.5)
    assert not m._ckpt_backbone and not m._ckpt_decoder
    # With frozen leading blocks (freeze_layers of a pretrained backbone) the ratio is of the trainable blocks.
    m.backbone.freeze_layers = 2
    m.backbone.apply_freeze()
    m.set_gradient_checkpointing(True, 1.0)
    assert m._ckpt_backbone == {2}
    assert all(p.requires_grad for i in m._ckpt_backbone for p in m.backbone.vit.blocks[i].parameters())


# torch.utils.checkpoint imports torch._dynamo on first use (~10-40 s alone; less in the suite, where other
# packages' checkpointing tests import it first). Not marked slow: CI must cover checkpointing.
def test_gradient_checkpointing_gives_the_same_gradients():
    b = _batch()
    grads = []
    for on in (False, True):
        m = _model(backbone="dinov2_tiny", image_size=56)
        m.set_gradient_checkpointing(on, 1.0)
        out = m(b["image"][:, :, :56, :56], b["K"])
        out["refined"][-1].pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_dinov2_backbone_interpolates_positions_and_freezes_pretrained_layers_only(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(_model(backbone="dinov2_tiny", image_size=70).backbone.vit.state_dict(), path)
    m = _model(backbone="dinov2_tiny", image_size=70, freeze_layers=2, backbone_weights=str(path))
    feats, (h, w) = m.backbone(torch.randn(2, 3, 70, 70))
    assert (h, w) == (5, 5) and feats.shape == (2, 25, 48)
    assert not any(p.requires_grad for p in m.backbone.vit.blocks[1].parameters())
    assert all(p.requires_grad for p in m.backbone.vit.blocks[2].parameters())
    m.unfreeze_all()  # a stage's unfreeze keeps the pretrained layers frozen
    assert not any(p.requires_grad for p in m.backbone.vit.blocks[1].parameters())
    # random weights: freezing them would only leave dead blocks, so freeze_layers is ignored
    r = _model(backbone="dinov2_tiny", image_size=70, freeze_layers=2)
    assert all(p.requires_grad for p in r.backbone.parameters())


def test_bounded_diversity_and_penetration():
    gt = torch.randn(8, 21, 3) * 0.03
    assert diversity_loss(gt, gt, 0.5).item() == 0  # enough spread: no push
    assert diversity_loss(torch.zeros(8, 21, 3), gt, 0.5).item() == pytest.approx(1.0)  # collapse: bounded at 1
    assert diversity_loss(gt * 10, gt, 0.5).item() == 0  # never rewards spreading further
    joints = torch.zeros(1, 21, 3)
    joints[0, 0] = torch.tensor([0.0, 0.0, 0.01])  # 1 cm from the centre of a 3 cm sphere: 2 cm inside
    pen = penetration_loss(joints, torch.zeros(1, 3), torch.tensor([0.03]))
    assert pen.item() == pytest.approx((0.02 + 20 * 0.03) / 21, rel=1e-4)


def test_backbone_weights_from_a_local_file_and_loud_random_fallback_without_network(tmp_path, monkeypatch):
    import socket

    def no_network(*a, **k):
        raise AssertionError("the backbone tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))  # an empty cache
    src = _model(backbone="dinov2_tiny", image_size=56)
    path = tmp_path / "dinov2_tiny.pth"
    torch.save(src.backbone.vit.state_dict(), path)
    loaded = _model(backbone="dinov2_tiny", image_size=56, backbone_weights=str(path))
    assert loaded.backbone.pretrained and loaded.backbone.weights_source == str(path)
    for (k, a), b in zip(src.backbone.vit.state_dict().items(), loaded.backbone.vit.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.warns(UserWarning, match="RANDOM"):
        m = _model(backbone="dinov2_vits14", image_size=56, hidden_dim=32)
    assert not m.backbone.pretrained and m.backbone.vit.embed_dim == 384 and len(m.backbone.vit.blocks) == 12


def test_sigma_reparam_of_an_averaged_model_stays_calibrated():
    """An EMA averages the u buffers (an average of unit vectors is shorter than 1): sigma must not shrink with
    |u|, and refresh_sigma realigns u with the averaged weight's own top singular vector."""
    torch.manual_seed(0)
    layer = SigmaReparamLinear(16, 12)
    true = torch.linalg.matrix_norm(layer.weight.detach().double(), 2).item()
    with torch.no_grad():
        layer.u.mul_(0.8)
    assert layer.sigma().item() == pytest.approx(true, rel=1e-4)
    m = _model()
    with torch.no_grad():
        for sl in m.sigma_layers():  # like an EMA: weights moved on, u a shortened blend of older vectors
            sl.weight.add_(0.05 * torch.randn_like(sl.weight))
            sl.u.copy_(nn.functional.normalize(sl.u + 0.3 * torch.randn_like(sl.u), dim=0) * 0.9)
    ratio = lambda sl: sl.sigma().item() / torch.linalg.matrix_norm(sl.weight.detach().double(), 2).item()  # noqa: E731
    before = min(ratio(sl) for sl in m.sigma_layers())
    m.refresh_sigma()
    after = min(ratio(sl) for sl in m.sigma_layers())
    assert after > 0.9 and after > before + 0.3, (before, after)  # 10 power steps from a poor start


def test_object_term_ignores_frames_without_an_object_pose():
    b = _batch()
    out = _model()(b["image"], b["K"])
    w = {"object_position": 1.0}
    _, with_pose = compute_losses(out, b, w, 0.5)
    b["obj_valid"] = torch.zeros(b["root"].shape[0])
    _, without = compute_losses(out, b, w, 0.5)
    assert with_pose["object_position"] > 0 and without["object_position"] == 0
