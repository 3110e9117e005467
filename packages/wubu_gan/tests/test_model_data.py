import numpy as np
import pytest
import torch

from wubu_gan.data import block_split, build_datasets
from wubu_gan.metrics import psnr_per_frame, ssim_per_frame
from wubu_gan.model import Encoder, WuBuGen, build_discriminator, disc_input, warp


def test_block_split_shares_no_frames_and_ignores_rank():
    span = 4
    train, val = block_split(300, span, 0.1, 20, seed=42)
    train_frames = {s + k for s in train for k in range(span)}
    val_frames = {s + k for s in val for k in range(span)}
    assert val and train and not (train_frames & val_frames)
    assert block_split(300, span, 0.1, 20, seed=42) == (train, val)


def test_datasets_from_video_clip_shape_range_and_flow(tmp_path, tiny_video, make_cfg):
    cfg = make_cfg(tmp_path, tiny_video, use_wubu_motion_branch=True, frame_skip=2)
    train, val = build_datasets(cfg, log=lambda m: None, flow_method="ilk")
    item = train[0]
    assert item["frames"].shape == (4, 3, 16, 16) and item["flow"].shape == (3, 2, 16, 16)
    assert item["frames"].min() >= -1 and item["frames"].max() <= 1 and item["frames"].std() > 0.05
    assert item["flow"].abs().mean() > 0.01  # the shapes move


def test_motion_branch_changes_the_encoder_output(tmp_path, tiny_video, make_cfg):
    cfg = make_cfg(tmp_path, tiny_video, use_wubu_motion_branch=True)
    torch.manual_seed(0)
    enc = Encoder(cfg, "ilk").eval()
    frames = torch.rand(2, 4, 3, 16, 16) * 2 - 1
    flow = torch.randn(2, 3, 2, 16, 16)
    mu1, lv1 = enc(frames, flow)
    mu2, lv2 = enc(frames, torch.zeros_like(flow))
    mu3, _ = enc(frames, flow.flip(-1))
    assert (mu1 - mu2).abs().max() > 1e-3 and (lv1 - lv2).abs().max() > 1e-3 and (mu1 - mu3).abs().max() > 1e-3
    # and the gradient reaches WuBu-M
    mu1.sum().backward()
    assert enc.wubu_m.input[0].weight.grad.abs().sum() > 0


def test_generator_size_non_square_and_discriminators(tmp_path, tiny_video, make_cfg):
    for kw in ({"image_h": 16, "image_w": 24}, {"discriminator_type": "regional_cnn"},
               {"discriminator_type": "regional_cnn", "disc_see_context": False, "gen_context_skip": False},
               {"disc_use_gaad_film_condition": True, "disc_apply_spectral_norm": True, "num_predict_frames": 4}):
        cfg = make_cfg(tmp_path, tiny_video, **kw)
        G, D = WuBuGen(cfg), build_discriminator(cfg)
        x = torch.rand(2, cfg.total_frames, 3, cfg.image_h, cfg.image_w) * 2 - 1
        rec, mu, logvar = G(x)
        assert rec.shape == (2, cfg.num_predict_frames, 3, cfg.image_h, cfg.image_w)
        assert rec.abs().max() <= 1 and D(disc_input(cfg, x, rec)).shape == (2,)
    sn = build_discriminator(make_cfg(tmp_path, tiny_video, disc_apply_spectral_norm=True))
    assert any("parametrizations" in n for n, _ in sn.named_parameters())


def test_psnr_and_ssim_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 16, 16, generator=g)
    b = (a + 0.1 * torch.randn(3, 3, 16, 16, generator=g)).clamp(0, 1)
    ours = psnr_per_frame(b, a)
    for i in range(3):
        ref = peak_signal_noise_ratio(a[i].numpy().astype(np.float64), b[i].numpy().astype(np.float64), data_range=1.0)
        assert ours[i].item() == pytest.approx(ref, rel=1e-6)
        ref_ssim = structural_similarity(a[i].permute(1, 2, 0).double().numpy(), b[i].permute(1, 2, 0).double().numpy(),
                                         channel_axis=-1, data_range=1.0)
        assert ssim_per_frame(b[i:i + 1], a[i:i + 1])[0] == pytest.approx(ref_ssim, rel=1e-6)


def _fit_vae(cfg, clips, steps):
    """Adam on the reconstruction loss alone (z = mu): (first MSE, last MSE, copy-last-frame MSE)."""
    torch.manual_seed(0)
    G = WuBuGen(cfg)
    opt = torch.optim.Adam(G.parameters(), lr=2e-3)
    target = clips[:, cfg.num_input_frames:]
    losses = []
    for _ in range(steps):
        recon, _, _ = G(clips, sample=False)
        loss = torch.nn.functional.mse_loss(recon, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    copy = torch.nn.functional.mse_loss(clips[:, cfg.num_input_frames - 1:cfg.num_input_frames], target).item()
    return losses[0], sum(losses[-5:]) / 5, copy


@pytest.mark.parametrize("gen_output", ["warp", "residual"])
def test_context_generator_starts_at_copy_last_and_learns_past_it(tmp_path, tiny_video, make_cfg, gen_output):
    cfg = make_cfg(tmp_path, tiny_video, wubu_dropout=0.0, gen_output=gen_output)
    train, _ = build_datasets(cfg, log=lambda m: None)
    clips = torch.stack([train[i]["frames"] for i in range(0, 48, 6)])
    first, last, copy = _fit_vae(cfg, clips, 60)
    assert first < 1.5 * copy          # residual to the last input frame: starts near copy-last
    assert last < 0.7 * copy, (first, last, copy)  # and learns the motion past it


def test_warp_moves_pixels_and_zero_flow_is_identity():
    img = torch.rand(2, 3, 8, 10)
    assert torch.allclose(warp(img, torch.zeros(2, 2, 8, 10)), img, atol=1e-6)
    flow = torch.zeros(2, 2, 8, 10)
    flow[:, 0] = 1.0  # out(x) = img(x + 1): the image moves one pixel left
    assert torch.allclose(warp(img, flow)[..., :-1], img[..., 1:], atol=1e-5)
    flow = torch.zeros(2, 2, 8, 10)
    flow[:, 1] = -2.0  # out(y) = img(y - 2): moves two pixels down
    assert torch.allclose(warp(img, flow)[..., 2:, :], img[..., :-2, :], atol=1e-5)


def test_warp_samples_in_float32_under_low_precision():
    """bf16 inputs (autocast) must not quantise a sub-pixel flow, and fp16 must not give NaN on CPU."""
    y, x = torch.meshgrid(torch.linspace(0, 6.28, 128), torch.linspace(0, 6.28, 128), indexing="ij")
    img = torch.stack([torch.sin(x + y), torch.cos(2 * x), torch.sin(3 * y)])[None].repeat(2, 1, 1, 1)
    flow = torch.full((2, 2, 128, 128), 0.37)
    ref = warp(img, flow)
    low = warp(img.bfloat16(), flow.bfloat16())
    assert low.dtype == torch.bfloat16
    # the only error left is bf16's own rounding of the result (~4e-3 at |v| <= 1), not a quantised grid
    assert (low.float() - ref).abs().max() < 1e-2
    half = warp(torch.rand(1, 3, 256, 256).half(), torch.zeros(1, 2, 256, 256).half())
    assert torch.isfinite(half.float()).all()


def test_warp_output_starts_as_copy_last_and_trains_its_flow(tmp_path, tiny_video, make_cfg):
    cfg = make_cfg(tmp_path, tiny_video, wubu_dropout=0.0, gen_output="warp", num_predict_frames=2)
    torch.manual_seed(0)
    G = WuBuGen(cfg)
    assert G.generator.warp_output and G.generator.final.out_channels == 3 + 3
    clips = torch.rand(2, cfg.total_frames, 3, 16, 16) * 1.8 - 0.9
    recon, _, _ = G(clips, sample=False)
    last = clips[:, cfg.num_input_frames - 1:cfg.num_input_frames]
    assert (recon - last).abs().mean() < 0.01 and (recon - last).abs().max() < 0.05  # copy-last at init
    torch.nn.functional.mse_loss(recon, clips[:, cfg.num_input_frames:]).backward()
    grad = G.generator.final.weight.grad
    assert grad[3:5].abs().sum() > 0 and grad[5].abs().sum() > 0  # flow and mask channels learn
    assert not WuBuGen(make_cfg(tmp_path, tiny_video, gen_output="residual")).generator.warp_output


def test_original_decoder_without_context_learns(tmp_path, tiny_video, make_cfg):
    cfg = make_cfg(tmp_path, tiny_video, gen_context_skip=False, disc_see_context=False, wubu_dropout=0.0)
    train, _ = build_datasets(cfg, log=lambda m: None)
    clips = torch.stack([train[i]["frames"] for i in range(0, 48, 6)])
    G = WuBuGen(cfg)
    assert not G.generator.use_context and not hasattr(G.generator, "ctx_in")
    first, last, _ = _fit_vae(cfg, clips, 60)
    assert last < 0.6 * first, (first, last)


def test_conditional_discriminator_sees_the_context_frames(tmp_path, tiny_video, make_cfg):
    for kind in ("spatio_temporal_cnn", "regional_cnn"):
        cfg = make_cfg(tmp_path, tiny_video, discriminator_type=kind)
        torch.manual_seed(0)
        D = build_discriminator(cfg).eval()
        clips = torch.rand(2, cfg.total_frames, 3, 16, 16) * 2 - 1
        pred = clips[:, cfg.num_input_frames:]
        a = D(disc_input(cfg, clips, pred))
        b = D(disc_input(cfg, torch.cat([clips[:, :cfg.num_input_frames].flip(-1), pred], 1), pred))
        assert (a - b).abs().max() > 1e-4, kind  # same prediction, other context -> other score


def test_a_short_video_in_a_folder_trains_and_is_named(tmp_path, make_cfg):
    from wubu_gan.data import _write_video, shapes_frames

    folder = tmp_path / "videos"
    folder.mkdir()
    _write_video(folder / "long.mp4", shapes_frames(60, 32, 32, seed=1), 32, 32)
    _write_video(folder / "short.mp4", shapes_frames(6, 32, 32, seed=2), 32, 32)
    said = []
    cfg = make_cfg(tmp_path, folder)
    train, val = build_datasets(cfg, log=said.append)
    assert any("short.mp4" in m and "too short to split" in m for m in said)
    assert {src for src, _ in train.index} == {0, 1} and {src for src, _ in val.index} == {0}


def test_raft_is_used_only_for_frames_it_can_handle(tmp_path, tiny_video, make_cfg, monkeypatch):
    import wubu_gan.flow as M  # decide_flow looks cached_raft_weights up in its own module

    monkeypatch.setattr(M, "cached_raft_weights", lambda net: tmp_path / "raft.pth")
    kind, why = M.decide_flow(make_cfg(tmp_path, tiny_video, use_wubu_motion_branch=True), 64, 64)
    assert kind == "ilk" and "128" in why
    assert M.decide_flow(make_cfg(tmp_path, tiny_video, use_wubu_motion_branch=True), 128, 128)[0] == "raft"


def test_lpips_is_null_with_a_reason_below_32_px():
    from wubu_gan.metrics import lpips_model

    net, why = lpips_model("cpu", (24, 24))
    assert net is None and "24x24" in why


def test_demo_videos_smaller_than_the_frames_asked_for_are_reported(tmp_path):
    from wubu_gan.data import ensure_demo_videos, make_demo_videos

    folder = tmp_path / "demo_video_data_dir"
    make_demo_videos(folder, 8, 8, 20, which=("square",))  # written at 16x16
    said = []
    ensure_demo_videos(folder, 32, 32, 4, log=said.append)
    assert len(said) == 1 and "smaller than the requested 32x32" in said[0]
    said.clear()
    ensure_demo_videos(folder, 16, 16, 4, log=said.append)
    assert not said


def test_frame_difference_input_and_patch_output(tmp_path, tiny_video, make_cfg):
    clips = torch.rand(2, 4, 3, 16, 16) * 2 - 1
    pred = clips[:, 3:] * 0.5
    for see_context in (True, False):
        cfg = make_cfg(tmp_path, tiny_video, disc_frame_diff=True, disc_see_context=see_context)
        x = disc_input(cfg, clips, pred)
        frames = torch.cat([clips[:, :3], pred], 1) if see_context else pred
        assert x.shape == (2, frames.shape[1], 6, 16, 16) and torch.equal(x[:, :, :3], frames)
        assert torch.allclose(x[:, -1, 3:], pred[:, 0] - clips[:, 2])  # prediction minus the last input frame
        if see_context:
            assert torch.equal(x[:, 0, 3:], torch.zeros_like(x[:, 0, 3:]))
    for kind in ("spatio_temporal_cnn", "regional_cnn"):
        for out, ndim in (("global", 1), ("patch", 2)):
            cfg = make_cfg(tmp_path, tiny_video, discriminator_type=kind, disc_output=out, disc_frame_diff=True)
            logits = build_discriminator(cfg)(disc_input(cfg, clips, pred))
            assert logits.dim() == ndim and logits.shape[0] == 2, (kind, out)


def test_discriminator_with_frame_differences_tells_copy_last_from_the_real_next_frame(tmp_path, tiny_video, make_cfg):
    """The failure it guards against: D_total stuck at chance (0.693) against a near-copy-last generator."""
    cfg = make_cfg(tmp_path, tiny_video, disc_frame_diff=True, disc_apply_spectral_norm=True)
    train, _ = build_datasets(cfg, log=lambda m: None)
    clips = torch.stack([train[i]["frames"] for i in range(0, len(train), 3)])
    real = disc_input(cfg, clips, clips[:, 3:])
    fake = disc_input(cfg, clips, clips[:, 2:3])  # copy the last input frame
    torch.manual_seed(0)
    D = build_discriminator(cfg)
    opt = torch.optim.Adam(D.parameters(), lr=5e-4)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    for _ in range(20):
        lr_, lf = D(torch.cat([real, fake])).chunk(2)
        loss = 0.5 * (bce(lr_, torch.ones_like(lr_)) + bce(lf, torch.zeros_like(lf)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.55, loss.item()  # without the difference channels: 0.63 after 20 steps (0.47 after 40)


def test_augmentation_mirrors_flow_with_the_frames_and_permutes_colours():
    from wubu_gan.train import augment_clips

    g = torch.Generator().manual_seed(0)
    frames = torch.rand(16, 4, 3, 8, 8, generator=g)
    flow = torch.rand(16, 3, 2, 8, 8, generator=g) + 0.5  # positive x and y components
    f2, fl2 = augment_clips(frames, flow, True, False, torch.Generator().manual_seed(1))
    lr = fl2[:, 0, 0, 0, 0] < 0  # x component negative <=> mirrored left-right
    ud = fl2[:, 0, 1, 0, 0] < 0
    assert 0 < lr.sum() < 16 and 0 < ud.sum() < 16
    for i in range(16):
        want, want_flow = frames[i], flow[i].clone()
        if lr[i]:
            want, want_flow = want.flip(-1), want_flow.flip(-1) * torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1)
        if ud[i]:
            want, want_flow = want.flip(-2), want_flow.flip(-2) * torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)
        assert torch.equal(f2[i], want) and torch.equal(fl2[i], want_flow)
    f3, fl3 = augment_clips(frames, flow, True, False, torch.Generator().manual_seed(1))
    assert torch.equal(f3, f2) and torch.equal(fl3, fl2)  # same seed, same draw
    c, same_flow = augment_clips(frames, flow, False, True, torch.Generator().manual_seed(2))
    assert torch.equal(same_flow, flow) and not torch.equal(c, frames)
    assert torch.equal(c.sort(2).values, frames.sort(2).values)  # a permutation of each pixel's channels


def test_phase3_film_in_d_is_per_sample_and_per_region_and_changes_d(tmp_path, tiny_video, make_cfg):
    """Audit M2: D's FiLM condition was one constant vector (box embedding averaged over boxes), i.e. a plain
    affine. Now each sample (and, in the regional D, each region) gets its own condition from its content."""
    from wubu_gan.discriminators import disc_frames

    for dtype in ("spatio_temporal_cnn", "regional_cnn"):
        torch.manual_seed(0)
        cfg = make_cfg(tmp_path, tiny_video, discriminator_type=dtype, disc_use_gaad_film_condition=True,
                       disc_patch_size=8, disc_cnn_channels_2d=[8, 16])
        D = build_discriminator(cfg).eval()
        x = torch.rand(3, disc_frames(cfg), 3, 16, 16) * 2 - 1
        seen = []
        D.region_cond.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
        with torch.no_grad():
            before = D(x)
        cond = seen[0].reshape(3, -1, seen[0].shape[-1])                     # (B, T*R, dim), sample-major
        assert not torch.allclose(cond[0], cond[1])                          # per sample
        assert not torch.allclose(cond[0, 0], cond[0, 1])                    # per region
        with torch.no_grad():
            for film in D.films:  # a trained FiLM (at init it is the identity)
                film.to_gb.weight.normal_(0, 0.3)
            after = D(x)
        assert not torch.allclose(before, after, atol=1e-4), dtype
