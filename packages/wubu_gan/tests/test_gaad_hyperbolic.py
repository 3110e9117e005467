import math

import geoopt
import pytest
import torch

from wubu_gan.gaad import PHI, cache_info, gaad_boxes
from wubu_gan.hyperbolic import Rotation, WuBuStack, expmap0, logmap0, new_ball


def test_subdivision_matches_the_notes_worked_example_and_is_cached():
    boxes = gaad_boxes(64, 64, 6, "subdivide")
    wh = [(round(x2 - x1, 2), round(y2 - y1, 2)) for x1, y1, x2, y2 in boxes.tolist()]
    assert wh == [(64, 64), (39.55, 64), (24.45, 64), (39.55, 39.55), (39.55, 24.45), (24.45, 39.55)]
    assert boxes[1, 2].item() == pytest.approx(64 / PHI, abs=1e-4)
    before = cache_info().hits
    again = gaad_boxes(64, 64, 6, "subdivide")
    assert cache_info().hits == before + 1 and torch.equal(again, boxes)


def test_hybrid_and_spiral_boxes():
    hyb = gaad_boxes(64, 64, 12, "hybrid")
    assert hyb.shape == (12, 4)
    assert torch.equal(hyb[:6], gaad_boxes(64, 64, 6, "subdivide"))
    spiral = gaad_boxes(64, 64, 6, "spiral")
    assert spiral[0].tolist() == pytest.approx([24, 24, 40, 40])  # centre, scale 0.25 of 64
    assert (spiral[:, 2] > spiral[:, 0]).all() and (spiral >= 0).all() and (spiral <= 64).all()
    non_square = gaad_boxes(48, 80, 8, "hybrid")
    assert (non_square[:, 2] <= 80).all() and (non_square[:, 3] <= 48).all()


def test_exp_log_round_trip_and_ball_at_extreme_inputs():
    ball = new_ball(0.7)
    v = torch.randn(64, 8) * 0.5
    assert torch.allclose(logmap0(expmap0(v, ball), ball), v, atol=1e-4)
    huge = torch.randn(16, 8) * 1e6
    y = expmap0(huge, ball)
    radius = 1 / math.sqrt(ball.c.item())
    assert torch.isfinite(y).all() and (y.norm(dim=-1) < radius).all()
    assert torch.isfinite(logmap0(y, ball)).all()
    assert torch.isfinite(expmap0(torch.zeros(3, 8), ball)).all()


def test_points_do_not_saturate_at_the_ball_edge(monkeypatch):
    import wubu_gan.hyperbolic as H

    seen = []
    real = H.expmap0

    def recording_expmap0(v, ball):  # every point the stack itself puts on a ball
        p = real(v, ball)
        seen.append((p.norm(dim=-1) * ball.c.sqrt()).max().item())  # |p| / radius
        return p

    monkeypatch.setattr(H, "expmap0", recording_expmap0)
    torch.manual_seed(0)
    stack = WuBuStack(32, 16, [64, 32], [1.0, 0.8])
    stack(torch.randn(128, 32) * 3)
    assert len(seen) >= 4 and max(seen) < 0.95, seen  # the original put every point at the clip radius


def test_geometry_parameters_get_gradients_and_change_after_a_step():
    torch.manual_seed(0)
    stack = WuBuStack(12, 6, [8, 6], [1.0, 0.5], use_rotation=True, phi_rotation=True, phi_curvature=True)
    rot = stack.transforms[0].rotation
    R = rot.matrix()
    assert torch.allclose(R @ R.T, torch.eye(8), atol=1e-5)  # truly orthogonal
    stack(torch.randn(10, 12)).pow(2).sum().backward()
    watched = {n: p for n, p in stack.named_parameters()
               if any(k in n for k in ("isp_c", "log_scale", "log_spread", "rotation.generator"))}
    assert len(watched) == 7  # 2 curvatures, 2 scales, 2 spreads, 1 rotation
    for name, p in watched.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    before = {n: p.detach().clone() for n, p in watched.items()}
    opt = geoopt.optim.RiemannianAdam(stack.parameters(), lr=1e-2)
    opt.step()
    for name, p in watched.items():
        assert not torch.equal(before[name], p.detach()), name


def test_rotation_keeps_its_phi_initialisation():
    rot = Rotation(4, level=1, phi_init=True)
    R = rot.matrix()
    angle = math.atan2(R[1, 0].item(), R[0, 0].item())
    assert angle == pytest.approx((math.pi / 3) * PHI / 4, abs=0.01)


def test_riemannian_step_keeps_ball_parameters_inside_the_ball():
    torch.manual_seed(0)
    stack = WuBuStack(6, 4, [4], [2.0])
    level = stack.levels[0]
    opt = geoopt.optim.RiemannianAdam(stack.parameters(), lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        # push the boundary points and descriptor outwards hard
        (-level.boundaries.norm(dim=-1).sum() - level.descriptor.norm() + stack(torch.randn(5, 6)).sum()).backward()
        opt.step()
    radius = 1 / math.sqrt(level.ball.c.item())
    assert isinstance(level.boundaries, geoopt.ManifoldParameter)
    assert (level.boundaries.norm(dim=-1) < radius).all() and level.descriptor.norm() < radius


def test_wubu_t_mixes_across_time():
    torch.manual_seed(0)
    stack = WuBuStack(8, 8, [8], [0.5], temporal=True, dropout=0.0)
    with torch.no_grad():
        stack.levels[0].time_mix.weight.normal_()
    x = torch.randn(2, 5, 8)
    y = stack(x)
    x2 = x.clone()
    x2[:, 4] += 1.0  # change only the last frame
    y2 = stack(x2)
    assert (y2[:, 3] - y[:, 3]).abs().max() > 1e-4  # its neighbour's output changed
    assert torch.allclose(y2[:, 0], y[:, 0], atol=1e-6)  # kernel 3: frame 0 does not see frame 4


def test_cached_region_matrices_equal_roi_align_and_carry_gradients():
    from torchvision.ops import roi_align

    from wubu_gan.gaad import _supports, gaad_boxes, region_crops, region_sampling_matrices
    from wubu_gan.model import rois_for

    g = torch.Generator().manual_seed(0)
    for h, w, n, out in ((16, 16, 4, 4), (32, 48, 12, 5), (64, 64, 24, 16)):
        boxes = gaad_boxes(h, w, n, "hybrid", 2)
        x = torch.randn(3, 5, h, w, generator=g, requires_grad=True)
        ref = roi_align(x, rois_for(boxes, 3), (out, out), 1.0, -1, True).reshape(3, n, 5, out, out)
        wy, wx = region_sampling_matrices(boxes, h, w, out, out)
        got = region_crops(x, wy, wx)
        assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), (h, w, (got - ref).abs().max())
        per_box = region_crops(x, wy, wx, _supports(wy, wx))  # the large-frame path: same numbers
        assert torch.allclose(per_box, ref, atol=1e-4, rtol=1e-4)
        (gr,) = torch.autograd.grad(ref.square().sum(), x)
        (gg,) = torch.autograd.grad(got.square().sum(), x)
        assert torch.allclose(gg, gr, atol=1e-3, rtol=1e-3)


def _scale_curvatures(module, factor):
    with torch.no_grad():
        for mod in module.modules():
            if getattr(mod, "ball", None) is not None:
                c = torch.nn.functional.softplus(mod.ball.isp_c) * factor
                mod.ball.isp_c.copy_(torch.log(torch.expm1(c)))


CURVATURE_X4_MIN_CHANGE = 0.05  # relative change of the encoder's mu when every curvature is multiplied by 4


def test_curvature_changes_the_function_and_euclidean_is_one_flag(tmp_path, tiny_video, make_cfg):
    """The audit's probe: with log0(exp0(.)) round trips, c x4 changed mu by 4e-5 (relative). Now c enters through
    Mobius differences and distances to boundary points; x4 must change mu by >= 5 %, and c's gradient must be
    within 1e-3 of the scale's (it was 1e-5)."""
    from wubu_gan.encoder import Encoder

    torch.manual_seed(0)
    cfg = make_cfg(tmp_path, tiny_video, image_h=32, image_w=32, wubu_s_hyperbolic_dims=[32, 16])
    enc = Encoder(cfg).eval()
    frames = torch.rand(4, 4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        mu, _ = enc(frames)
        _scale_curvatures(enc, 4.0)
        mu4, _ = enc(frames)
        _scale_curvatures(enc, 0.25)
    change = float((mu4 - mu).norm() / mu.norm())
    assert change >= CURVATURE_X4_MIN_CHANGE, change
    stack = WuBuStack(32, 16, [16, 8], [1.0, 0.8])
    stack(torch.randn(32, 32)).pow(2).sum().backward()
    for level in stack.levels:
        assert level.ball.isp_c.grad.abs() >= 1e-3 * level.log_scale.grad.abs(), (level.ball.isp_c.grad, level.log_scale.grad)
    flat = Encoder(make_cfg(tmp_path, tiny_video, image_h=32, image_w=32, euclidean=True))
    assert not any("isp_c" in n for n, _ in flat.named_parameters())  # --euclidean: no ball anywhere
    assert torch.isfinite(flat(frames)[0]).all()
