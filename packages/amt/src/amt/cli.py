"""`amt`: train, evaluate, predict, make-synthetic, visualize, info.

Thin: parse flags, build the config, call one function. User mistakes print one ``error:`` line, exit 2.
"""
from __future__ import annotations

import json
import os
import sys

import click

from trainkit.cli import Group, common_options
from trainkit.config import explicit_cli_values, load_config
from trainkit.errors import UserError, handle_user_errors

from .config import TRAIN_FLAGS, Config, resolve_config_path
from .data import SPLITS


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Advanced Manipulation Transformer: 3D hand pose from RGB with pixel-aligned refinement and sigma-reparam."""


def _split_values(split: str | None) -> dict:
    """--split s1 (a setup) sets train/val/test of that setup; --split s1_test also picks the test split."""
    if split is None:
        return {}
    setup = split.split("_")[0]
    if setup not in ("s0", "s1", "s2", "s3") or (("_" in split) and split not in SPLITS):
        raise UserError(f"unknown split {split!r}", "--split", f"s0..s3 or one of {', '.join(SPLITS)}")
    out = {"data.train_split": f"{setup}_train", "data.val_split": f"{setup}_val", "data.test_split": f"{setup}_test"}
    return out


def _precision_values(precision: str | None) -> dict:
    if precision is None:
        return {}
    return {"training.use_amp": precision != "fp32", "training.use_bf16": precision == "bf16"}


def build_config(ctx, config_path, overrides, split=None, precision=None, flags=TRAIN_FLAGS) -> Config:
    values = explicit_cli_values(ctx, flags)
    values.update(_split_values(split))
    values.update(_precision_values(precision))
    return load_config(Config, default_config(config_path, values, overrides), overrides, values)


def default_config(config_path: str | None, values: dict | None = None, overrides=()) -> str | None:
    """The config file for train/info: the one given, else (a fresh run) the shipped CPU recipe, so bare
    ``amt train`` is the quick start on the synthetic default. On --resume the checkpoint's config rules."""
    resuming = (values or {}).get("training.resume") or any(o.startswith("training.resume=") for o in overrides)
    if config_path is None and not resuming:
        config_path = "configs/cpu.yaml"
    return resolve_config_path(config_path)


@main.command()
@click.option("--data_root", "--data-root", "data_root", default=None,
              help="DexYCB root (DEX_YCB_DIR layout), a real hand-crop folder (images/, pose_gt.mat, params.mat) or "
                   "FreiHAND (training_xyz.json, training_K.json, rgb/). Default: the synthetic default.")
@click.option("--split", default=None, help="Toolkit setup s0..s3 (train/val/test of it), e.g. s1 or s0_train.")
@click.option("--resume", default=None, help="checkpoints/latest.pth of a run, or 'auto' (the run's newest).")
@click.option("--output_dir", "--output-dir", "output_dir", default=None, help="Run directory [runs/<experiment_name>].")
@click.option("--experiment_name", "--experiment-name", "experiment_name", default=None, help="Run name.")
@click.option("--allow_rewind", "--allow-rewind", "allow_rewind", is_flag=True, default=False,
              help="On --resume, accept a checkpoint older than the run's newest (the later history is archived "
                   "under rewound/ in the run folder).")
@click.option("--allow_config_change", is_flag=True, default=False,
              help="On --resume, accept settings that differ from the checkpoint's (data, model, schedule).")
@common_options
@click.pass_context
@handle_user_errors
def train(ctx, split, allow_config_change, allow_rewind, config_path, overrides, precision, **_):
    """Train (the guide's `python train.py --config configs/default_config.yaml [--resume ...]`)."""
    from .train import config_for_run
    from .train import train as run

    if split is not None and "_" in split:  # train uses a whole setup: its train split, validating on its val
        raise UserError(f"--split {split} names one split", "--split",
                        "a setup for train (s0..s3: trains on <setup>_train, validates on <setup>_val)")
    values = explicit_cli_values(ctx, TRAIN_FLAGS)
    values.update(_split_values(split))
    values.update(_precision_values(precision))
    cfg = config_for_run(default_config(config_path, values, overrides), overrides, values, allow_config_change)
    from trainkit.runsafety import clear_stop, exit_if_stopped  # (lazy: the CLI starts without torch)

    clear_stop()  # only this run's signal decides the exit code
    out = run(cfg, log=lambda m: click.echo(m, err=True), allow_rewind=allow_rewind)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    click.echo(json.dumps({"run_dir": out["run_dir"], "step": out["step"],
                           **{k: round(v, 4) for k, v in out["metrics"].items() if isinstance(v, float)}}))
    exit_if_stopped()  # a signal stop (checkpoint saved) exits 3, not 0


def _eval_split(split: str | None) -> str | None:
    """``--split`` of evaluate/visualize: a setup name (s0..s3) means its test split."""
    if split in ("s0", "s1", "s2", "s3"):
        split = f"{split}_test"
    if split is not None and split not in SPLITS:
        raise UserError(f"unknown split {split!r}", "--split", f"s0..s3 or one of {', '.join(SPLITS)}")
    return split


@main.command()
@click.option("--checkpoint", required=True, help="best.pth / latest.pth from `amt train`.")
@click.option("--split", default=None, help="Split to evaluate, e.g. s0_test [the config's data.test_split].")
@click.option("--data_root", "--data-root", "data_root", default=None,
              help="Data root in any layout amt reads (DexYCB, hand crops, FreiHAND) [the checkpoint's].")
@click.option("--results", default=None, help="Write the toolkit's HPE result file (index + 63 numbers in mm per frame).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--batch_size", "--batch-size", "batch_size", type=int, default=None, help="Evaluation batch size.")
@click.option("--config", "config_path", default=None, help="YAML applied over the checkpoint's config.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable).")
@click.option("--device", default="auto", show_default=True)
@click.pass_context
@handle_user_errors
def evaluate(ctx, checkpoint, split, data_root, results, as_json, batch_size, config_path, overrides, device):
    """Model vs mean-pose baseline: MPJPE (root-relative, absolute), PA-MPJPE, AUC, 3-D PCK, PCK@5px."""
    split = _eval_split(split)
    if batch_size is not None and batch_size <= 0:
        raise UserError(f"batch_size={batch_size}", "--batch_size", "a positive integer")
    if results is not None and (os.path.isdir(results) or not os.path.isdir(os.path.dirname(os.path.abspath(results)))):
        raise UserError("not a writable file path", results, "--results FILE in an existing folder (not a folder)")
    from .evaluate import evaluate_checkpoint, format_report, report_json

    cli_values = {"data.root": data_root} if data_root is not None else None
    r = evaluate_checkpoint(checkpoint, split=split, config_path=resolve_config_path(config_path), overrides=overrides,
                            cli_values=cli_values, results=results, device=device, batch_size=batch_size,
                            log=lambda m: click.echo(m, err=True))
    click.echo(report_json(r) if as_json else format_report(r))


@main.command("make-synthetic")
@click.option("--out", "--out_dir", "out", required=True, help="Folder to write (DexYCB layout).")
@click.option("--sequences_per_subject", type=int, default=5, show_default=True)
@click.option("--frames_per_sequence", type=int, default=8, show_default=True, help="Frame 0 of each has no hand.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out whole.")
@click.option("--generator_version", type=click.Choice(["2", "3"]), default="2", show_default=True,
              help="2: coloured stick hands; 3: skinned, shaded hands over photographs, 8 views per frame.")
@handle_user_errors
def make_synthetic(out, sequences_per_subject, frames_per_sequence, seed, overwrite, generator_version):
    """Write the synthetic hand dataset in the DexYCB on-disk layout."""
    from .synthetic import make_synthetic as run

    if generator_version == "3":
        from .synth.generator import make_synthetic_v3 as run

    root = run(out, sequences_per_subject=sequences_per_subject, frames_per_sequence=frames_per_sequence, seed=seed,
               overwrite=overwrite, log=lambda m: click.echo(m, err=True))
    click.echo(f"wrote {root}")


@main.command()
@click.option("--out", required=True, help="PNG to write.")
@click.option("--checkpoint", default=None, help="Overlay this model's predictions (else ground truth only).")
@click.option("--data_root", "--data-root", "data_root", default=None)
@click.option("--split", default=None, help="Split [the config's val split].")
@click.option("--num", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--augment", is_flag=True, help="Show augmented crops (checks image/label consistency by eye).")
@click.option("--config", "config_path", default=None)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--device", default="auto", show_default=True)
@click.pass_context
@handle_user_errors
def visualize(ctx, out, checkpoint, data_root, split, num, augment, config_path, overrides, device):
    """Hand crops with skeletons: ground truth (dashed) and, with --checkpoint, predictions (solid)."""
    from trainkit.device import resolve_device

    from .evaluate import (load_for_inference, make_dataset, make_loader, model_right_sign, predict, resolve_root,
                           training_canonical_hand)
    from .plots import overlay_figure

    split = _eval_split(split)
    cli_values = {"data.root": data_root} if data_root is not None else None
    dev = resolve_device(device)
    say = lambda m: click.echo(m, err=True)  # noqa: E731
    right_sign = 1.0
    if checkpoint:
        model, cfg, extra = load_for_inference(checkpoint, dev, resolve_config_path(config_path), overrides, cli_values)
        right_sign = model_right_sign(training_canonical_hand(cfg, extra, say)[0])
    else:
        model, cfg = None, load_config(Config, resolve_config_path(config_path), overrides, cli_values)
    root = resolve_root(cfg, say)
    ds = make_dataset(cfg, root, split or cfg.data.val_split, augment=augment, limit=num, log=say, right_sign=right_sign)
    if model is None:
        items = [ds[i] for i in range(len(ds))]
        fig = overlay_figure([it["image"].numpy() for it in items], [it["joints_2d"].numpy() for it in items])
    else:
        p = predict(model, make_loader(ds, num), dev, cfg.precision, keep_images=num)
        fig = overlay_figure([x.numpy() for x in p["images"]], [x.numpy() for x in p["gt_uv_crop"]],
                             [x.numpy() for x in p["pred_uv_crop"]])
    fig.savefig(out, dpi=100)
    click.echo(f"wrote {out}")


@main.command()
@click.option("--checkpoint", required=True, help="best.pth / latest.pth from `amt train`.")
@click.option("--images", required=True, help="Folder of unlabelled hand crops (JPEG/PNG), one hand per image.")
@click.option("--out", required=True, help="Folder for joints.json and overlays/<image>.png (created).")
@click.option("--fov", type=float, default=None, help="Horizontal field of view in degrees (principal point at the centre).")
@click.option("--intrinsics", default=None,
              help='JSON: {"fx","fy","cx","cy"} or a 3x3 list for all images, or {"<file name>": either} per image.')
@click.option("--hand", type=click.Choice(["right", "left"]), default="right", show_default=True,
              help="Anatomical hand in the images (mirrored for the model when it differs from its training hands).")
@click.option("--device", default="auto", show_default=True)
@handle_user_errors
def predict(checkpoint, images, out, fov, intrinsics, hand, device):
    """Run a trained model on a folder of hand crops: camera-frame joints (mm) as JSON, skeleton overlays as PNG."""
    from .predict import predict_folder

    path = predict_folder(checkpoint, images, out, fov=fov, intrinsics=intrinsics, hand=hand, device=device,
                          log=lambda m: click.echo(m, err=True))
    click.echo(f"wrote {path}")


@main.command()
@click.option("--data_root", "--data-root", "data_root", default=None)
@click.option("--no_data", is_flag=True, help="Skip the dataset summary (no synthetic generation).")
@common_options
@click.pass_context
@handle_user_errors
def info(ctx, no_data, config_path, overrides, precision, **_):
    """Resolved config, dataset frames per split, model parameters per component."""
    from .evaluate import build_model, resolve_root
    from .realdata import make_index
    from .model import parameter_table

    cfg = build_config(ctx, config_path, overrides, None, precision)
    click.echo(f"config: experiment {cfg.experiment_name}, backbone {cfg.model.backbone}, hidden {cfg.model.hidden_dim}, "
               f"crop {cfg.data.image_size}px, precision {cfg.precision}, run dir {cfg.run_dir}")
    model = build_model(cfg, log=lambda m: click.echo(m, err=True))
    total = trainable = 0
    for comp, t in parameter_table(model).items():
        click.echo(f"  {comp:<16}{t['total']:>14,} parameters ({t['trainable']:,} trainable)")
        total += t["total"]
        trainable += t["trainable"]
    click.echo(f"  {'total':<16}{total:>14,} parameters ({trainable:,} trainable); backbone weights: "
               f"{getattr(model.backbone, 'weights_source', 'random init (CNN)')}")
    if not no_data:
        root = resolve_root(cfg, lambda m: click.echo(m, err=True))
        for split in (cfg.data.train_split, cfg.data.val_split, cfg.data.test_split):
            idx = make_index(root, split)
            click.echo(f"  {split}: {len(idx)} labelled frames ({idx.num_empty} without a hand dropped) "
                       f"from {len(idx.intrinsics)} cameras at {root}")
            if cfg.data.root is not None and idx.incompleteness():
                click.echo(f"  WARNING: {idx.incompleteness()}")


if __name__ == "__main__":
    sys.exit(main())
