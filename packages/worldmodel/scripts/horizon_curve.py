"""PSNR and SSIM against the rollout horizon (1..H), with copy-last-frame beside them, for several reference
policies of a long open-loop rollout (``--reference-every`` K: render from the frame just predicted after every K
steps; 0 = from the last context frame throughout). Writes one JSON and one PNG (the README's plot).

    uv run python packages/worldmodel/scripts/horizon_curve.py --checkpoint RUN/checkpoints/latest.pt \\
        --data-root DATA --horizon 20 --reference-every 0 5 1 --out docs/horizon_curve
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from trainkit.errors import UserError

from worldmodel.data import ProcessedDataset
from worldmodel.evaluate import check_compatible, load_for_inference, rollout_metrics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--horizon", type=int, default=20)
    p.add_argument("--reference-every", type=int, nargs="+", default=[0, 5, 1])
    p.add_argument("--max-sequences", type=int, default=32)
    p.add_argument("--out", required=True, help="path without suffix: writes OUT.json and OUT.png")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, cfg, extra = load_for_inference(args.checkpoint, "cpu")
    data = ProcessedDataset(args.data_root)
    check_compatible(data, extra, f"--data-root {args.data_root}")
    H = args.horizon
    curves = {}
    for k in args.reference_every:
        res = rollout_metrics(model, data, context=cfg.eval.context_frames, horizon=H, frame_skip=cfg.data.frame_skip,
                              max_sequences=args.max_sequences, device="cpu", reference_every=k)
        curves[f"reference_every={k}"] = res["model"]
        curves["copy_last_frame"] = res["copy_last_frame"]
        curves["num_sequences"] = res["model"]["num_sequences"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(curves, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hs = list(range(1, H + 1))
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), dpi=80)
    for ax, metric in zip(axes, ("psnr", "ssim")):
        for k in args.reference_every:
            label = "model, reference = last context frame" if k == 0 else f"model, reference refreshed every {k}"
            ax.plot(hs, [curves[f"reference_every={k}"][f"{metric}@{h}"] for h in hs], marker=".", label=label)
        ax.plot(hs, [curves["copy_last_frame"][f"{metric}@{h}"] for h in hs], "k--", label="copy-last-frame")
        ax.set_xlabel("open-loop step h")
        ax.set_ylabel("PSNR (dB)" if metric == "psnr" else "SSIM")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if args.title:
        fig.suptitle(args.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
