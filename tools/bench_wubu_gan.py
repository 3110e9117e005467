"""Benchmarks for wubu_gan, each against a baseline measured in the same run (ratios printed as JSON).

1. GAAD region extraction at several frame sizes: the package's way (boxes and per-axis sampling matrices
   cached per frame size, every region of every image as two batched matrix products, the numbers of
   roi_align) vs the original's way (boxes recomputed per item in Python, each box cropped and resized on its
   own); torchvision's batched ``roi_align`` on the cached boxes is reported beside them.
2. Training step time with and without the motion branch (flow statistics -> WuBu-M).
3. trainkit overhead: a G+D step through ``trainkit.step.OptimizerStep`` vs a hand-written plain loop.

    OMP_NUM_THREADS=1 uv run python tools/bench_wubu_gan.py [--repeats 5] [--sizes 32 64 128 256]
Wall and process (CPU) times are reported; on a shared machine compare ratios, not absolute times.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


def timed(fn, repeats: int) -> dict:
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    wall.sort()
    cpu.sort()
    return {"wall_ms": 1000 * wall[len(wall) // 2], "cpu_ms": 1000 * cpu[len(cpu) // 2]}


def bench_gaad(size: int, batch: int, regions: int, repeats: int) -> dict:
    from torchvision.ops import roi_align

    from wubu_gan.gaad import (_supports, gaad_boxes, golden_subdivision, phi_spiral, region_crops,
                               region_sampling_matrices)
    from wubu_gan.model import rois_for

    images = torch.rand(batch, 3, size, size)
    patch = 16

    def original_loop():
        out = []
        for img in images:  # per item: recompute the boxes in Python, crop + resize each box
            boxes = golden_subdivision(size, size, regions // 2, 4) + phi_spiral(size, size, regions - regions // 2)
            crops = []
            for x1, y1, x2, y2 in boxes:
                x1, y1 = int(round(x1)), int(round(y1))
                x2, y2 = max(x1 + 1, int(round(x2))), max(y1 + 1, int(round(y2)))
                crop = img[:, y1:y2, x1:x2].unsqueeze(0)
                crops.append(F.interpolate(crop, size=(patch, patch), mode="bilinear", antialias=True, align_corners=False))
            out.append(torch.cat(crops))
        return torch.stack(out)

    boxes = gaad_boxes(size, size, regions, "hybrid", 4)
    rois = rois_for(boxes, batch)

    def batched_roi_align():
        return roi_align(images, rois, (patch, patch), 1.0, -1, True).reshape(batch, regions, 3, patch, patch)

    wy, wx = region_sampling_matrices(boxes, size, size, patch, patch)  # cached per (size, boxes, patch)
    supports = _supports(wy, wx)                                          # as model.RegionSampler does

    def cached_matrices():  # what the model runs
        return region_crops(images, wy, wx, supports)

    assert torch.allclose(cached_matrices(), batched_roi_align(), atol=1e-3)
    base, roi, ours = timed(original_loop, repeats), timed(batched_roi_align, repeats), timed(cached_matrices, repeats)
    return {"images": batch, "regions": regions, "size": size, "patch": patch, "per_item_python_loop": base,
            "batched_roi_align": roi, "cached_matrices": ours,
            "speedup_cpu": base["cpu_ms"] / ours["cpu_ms"], "speedup_wall": base["wall_ms"] / ours["wall_ms"],
            "roi_align_speedup_cpu": base["cpu_ms"] / roi["cpu_ms"]}


def small_cfg(**kw):
    from wubu_gan.config import TrainConfig

    base = dict(image_h=32, image_w=32, latent_dim=64, batch_size=4, wubu_dropout=0.0, encoder_use_roi_align=True,
                disc_apply_spectral_norm=True)
    base.update(kw)
    return TrainConfig(**base)


def make_step(cfg, use_trainkit: bool):
    from trainkit.step import OptimizerStep

    from wubu_gan.model import WuBuGen, build_discriminator, disc_input
    from wubu_gan.train import bce, kl_divergence, make_optimizer

    torch.manual_seed(0)
    flow_kind = "ilk" if cfg.use_wubu_motion_branch else "none"
    G, D = WuBuGen(cfg, flow_kind), build_discriminator(cfg)
    og, od = make_optimizer(G, 1e-4, cfg), make_optimizer(D, 1e-4, cfg)
    T = cfg.total_frames
    frames = torch.rand(cfg.batch_size, T, 3, cfg.image_h, cfg.image_w) * 2 - 1
    flow = torch.randn(cfg.batch_size, T - 1, 2, cfg.image_h, cfg.image_w) if cfg.use_wubu_motion_branch else None
    sg = OptimizerStep(G, og, grad_clip=cfg.global_max_grad_norm)
    sd = OptimizerStep(D, od, grad_clip=cfg.global_max_grad_norm)

    def losses():
        target = frames[:, cfg.num_input_frames:]
        recon, mu, logvar = G(frames, flow)
        real, fake = D(torch.cat([disc_input(cfg, frames, target), disc_input(cfg, frames, recon.detach())])).chunk(2)
        loss_d = 0.5 * (bce(real, 1.0) + bce(fake, 0.0))
        D.requires_grad_(False)
        adv = bce(D(disc_input(cfg, frames, recon)), 1.0)
        D.requires_grad_(True)
        loss_g = 10 * F.mse_loss(recon, target) + 1e-4 * kl_divergence(mu, logvar) + adv
        return loss_g, loss_d

    def step_trainkit():
        loss_g, loss_d = losses()
        with sg.micro_batch():
            sg.backward(loss_g)
        with sd.micro_batch():
            sd.backward(loss_d)

    def step_plain():
        loss_g, loss_d = losses()
        for net, opt, loss in ((G, og, loss_g), (D, od, loss_d)):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.global_max_grad_norm)
            opt.step()

    return step_trainkit if use_trainkit else step_plain


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {"gaad": [bench_gaad(size, 32, regions, args.repeats) for size in args.sizes for regions in (12, 24)]}
    no_motion = timed(make_step(small_cfg(), True), args.repeats)
    motion = timed(make_step(small_cfg(use_wubu_motion_branch=True), True), args.repeats)
    out["train_step"] = {"motion_off": no_motion, "motion_on": motion, "motion_cost_ratio_wall": motion["wall_ms"] / no_motion["wall_ms"],
                         "motion_cost_ratio_cpu": motion["cpu_ms"] / no_motion["cpu_ms"],
                         "note": "weights-free flow is computed once in the data pipeline and cached, so it is not in the step"}
    plain = timed(make_step(small_cfg(), False), args.repeats)
    out["trainkit_overhead"] = {"plain_loop": plain, "trainkit_OptimizerStep": no_motion,
                                "ratio_wall": no_motion["wall_ms"] / plain["wall_ms"], "ratio_cpu": no_motion["cpu_ms"] / plain["cpu_ms"]}
    out["torch_threads"] = torch.get_num_threads()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
