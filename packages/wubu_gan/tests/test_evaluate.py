"""Prediction evaluation: the encoder never sees the target, rollout, constant-velocity baseline."""
import numpy as np
import torch

from wubu_gan.evaluate import constant_velocity, rollout, tensor_flow


def blob(shift_x: float, shift_y: float, size: int = 32) -> torch.Tensor:
    """A smooth blob (1, 3, H, W) in [-1, 1] centred at (12 + shift_x, 14 + shift_y)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.exp(-(((x - 12 - shift_x) ** 2) + (y - 14 - shift_y) ** 2) / 18.0)
    return torch.from_numpy(img * 2 - 1)[None, None].expand(1, 3, size, size).contiguous()


def test_constant_velocity_moves_the_last_frame_on_along_its_last_flow():
    frames = [blob(1.0 * k, 0.5 * k) for k in range(5)]  # 1 px right, 0.5 px down per frame
    flow = tensor_flow(frames[1], frames[2])  # last context pair 1 -> 2
    pred = constant_velocity(frames[2], flow, 2)
    for h in (1, 2):
        target = frames[2 + h][0]
        err_cv = (pred[0, h - 1] - target).abs().mean()
        err_copy = (frames[2][0] - target).abs().mean()
        assert err_cv < 0.35 * err_copy, (h, float(err_cv), float(err_copy))  # a flipped sign would be ~3x worse


def test_prediction_never_sees_the_target_and_rollout_feeds_predictions_back(tmp_path, tiny_video, make_cfg):
    from wubu_gan.model import WuBuGen

    for motion in (False, True):
        cfg = make_cfg(tmp_path, tiny_video, use_wubu_motion_branch=motion)
        torch.manual_seed(0)
        G = WuBuGen(cfg, "ilk" if motion else "none").eval()
        with torch.no_grad():  # a non-trivial latent path, so the test could see the target through z
            G.generator.final.weight.normal_(0, 0.5)
        Tin = cfg.num_input_frames
        frames = torch.rand(2, Tin + 3, 3, 16, 16) * 2 - 1
        flow = torch.randn(2, Tin + 2, 2, 16, 16) if motion else None
        a = rollout(G, frames, flow, cfg, 3)
        other = frames.clone()
        other[:, Tin:] = torch.rand_like(other[:, Tin:]) * 2 - 1
        oflow = flow.clone() if motion else None
        if motion:
            oflow[:, Tin - 1:] = torch.randn_like(oflow[:, Tin - 1:])  # the flow into the target too
        b = rollout(G, other, oflow, cfg, 3)
        assert a.shape == (2, 3, 3, 16, 16)
        assert torch.equal(a, b)  # nothing after the context reaches the prediction
        # h = 2 is the prediction from (context[1:], prediction 1): fed back, not from the real frame
        ctx2 = torch.cat([frames[:, 1:Tin], a[:, :1]], 1)
        f2 = None
        if motion:
            f2 = torch.cat([flow[:, 1:Tin - 1], tensor_flow(frames[:, Tin - 1], a[:, 0])[:, None]], 1)
        with torch.no_grad():
            step2, _, _ = G.predict(ctx2, f2)
        assert torch.allclose(step2[:, 0], a[:, 1], atol=1e-5)
        # the reconstruction (forward) does see the target: it differs when the target changes
        with torch.no_grad():
            r1 = G(frames[:, :Tin + 1], flow[:, :Tin] if motion else None, sample=False)[0]
            r2 = G(other[:, :Tin + 1], oflow[:, :Tin] if motion else None, sample=False)[0]
        assert not torch.equal(r1, r2)
