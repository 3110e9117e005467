"""`worldmodel`: prepare-dataset, inspect, train, find-lr, evaluate, rollout, info."""

from __future__ import annotations

import json
import sys

import click

from trainkit.cli import Group
from trainkit.config import explicit_cli_values, load_config
from trainkit.errors import UserError, handle_user_errors

from .config import TRAIN_FLAGS, Config, resolve_config_path


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Action-conditioned video world model for driving: encoder, latent dynamics, decoder, open-loop rollout."""


def _log(msg: str) -> None:
    click.echo(msg, err=True)


def config_options(fn):
    for option in reversed([
        click.option("--config", "config_path", default=None,
                     help="YAML file, or a shipped config: configs/training/base.yaml, training/distributed, "
                          "model/base, data/nuscenes, data/carla, quick_prototype, best_quality, memory_efficient, "
                          "synthetic_cpu."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override any config key, e.g. --set optimizer.lr=3e-4 (repeatable)."),
    ]):
        fn = option(fn)
    return fn


def _positive(name: str, value, allow_zero: bool = False):
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise UserError(f"{name.lstrip('-')}={value}", name, "a positive number")


@main.command()
@click.option("--data-root", "--data_root", "data_root", default=None,
              help="A processed dataset (from prepare-dataset). Default: the synthetic driving set, generated "
                   "into ~/.cache/worldmodel on first use.")
@click.option("--batch-size", "batch_size", type=int, default=None, help="Windows per micro-batch [16].")
@click.option("--num-epochs", "num_epochs", type=int, default=None, help="Epochs [100].")
@click.option("--max-steps", "max_steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--lr", type=float, default=None, help="Reference LR (modules without their own LR use it) [1e-4].")
@click.option("--save-dir", "--save_dir", "save_dir", default=None, help="Run directory [runs/worldmodel].")
@click.option("--resume", default=None, help="Checkpoint path, or 'auto' for the newest in --save-dir.")
@click.option("--allow-config-change", is_flag=True, default=False,
              help="On --resume, allow flags that change what the run is (model, data, schedule).")
@click.option("--allow-rewind", is_flag=True, default=False,
              help="On --resume, accept a checkpoint older than the run's newest (its later history is archived "
                   "under rewound/ in the run folder). A new empty --save-dir forks instead.")
@click.option("--use-wandb", "use_wandb", is_flag=True, default=None,
              help="Also log to Weights & Biases (offline without WANDB_API_KEY or network).")
@click.option("--wandb-project", "wandb_project", default=None, help="W&B project [world-model].")
@click.option("--wandb-name", "wandb_name", default=None, help="W&B run name.")
@click.option("--use-dp", "use_dp", is_flag=True, default=None,
              help="torch DataParallel over all visible GPUs (needs >= 2 CUDA devices; torchrun DDP is better).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N | mps")
@click.option("--seed", type=int, default=None, help="Random seed [0].")
@click.option("--threads", type=int, default=None, help="torch CPU threads [torch's default].")
@click.option("--quiet", is_flag=True, default=None, help="No progress bars.")
@config_options
@click.pass_context
@handle_user_errors
def train(ctx, config_path, overrides, allow_config_change, allow_rewind, **_):
    """Train (the guide's scripts/train.py). Console output and TensorBoard tags follow the guide."""
    for name in ("batch_size", "num_epochs", "max_steps", "threads"):
        _positive(f"--{name.replace('_', '-')}", ctx.params[name])
    _positive("--lr", ctx.params["lr"])
    from .train import resolve_run_config, train as run

    values = explicit_cli_values(ctx, TRAIN_FLAGS)
    cfg, resume_path = resolve_run_config(resolve_config_path(quick_start_config(config_path, values, overrides)),
                                          overrides, values, allow_config_change)
    from trainkit.runsafety import clear_stop, exit_if_stopped  # (lazy: the CLI starts without torch)

    clear_stop()  # only this run's signal decides the exit code
    run(cfg, resume_path=resume_path, log=_log, allow_rewind=allow_rewind)
    exit_if_stopped()  # a signal stop (checkpoint saved) exits 3, not 0


def quick_start_config(config_path: str | None, values: dict, overrides=()) -> str | None:
    """Bare ``worldmodel train`` (no --config, no --data-root, not resuming) is the quick start: the
    ``synthetic_cpu`` recipe on the synthetic default, which trains in minutes on a CPU. The guide's 70M-parameter
    base model at 256x144 takes minutes per step there; it stays what ``--config configs/training/base.yaml``
    (or any --data-root run without --config) uses."""
    given = set(values) | {o.split("=", 1)[0] for o in overrides}
    if config_path is None and not given & {"training.resume", "data.data_root"}:
        _log("no --config and no --data-root: the quick start, recipe synthetic_cpu on the synthetic default "
             "(pass --config configs/training/base.yaml for the guide's full model)")
        return "synthetic_cpu"
    return config_path


@main.command("find-lr")
@click.option("--data-root", "--data_root", "data_root", default=None, help="Processed dataset [synthetic default].")
@click.option("--min-lr", "min_lr", type=float, default=1e-6, show_default=True, help="LR at the first step.")
@click.option("--max-lr", "max_lr", type=float, default=1e-2, show_default=True, help="LR at the last step.")
@click.option("--num-iter", "num_iter", type=int, default=100, show_default=True, help="Steps of the range test.")
@click.option("--out", default="lr_finder.png", show_default=True, help="Loss-vs-LR plot (PNG).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N | mps")
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
@config_options
@click.pass_context
@handle_user_errors
def find_lr(ctx, config_path, overrides, data_root, min_lr, max_lr, num_iter, out, device, threads):
    """Exponential LR range test that keeps the per-module LR ratios (the guide's scripts/find_lr.py)."""
    _positive("--min-lr", min_lr)
    _positive("--max-lr", max_lr)
    _positive("--num-iter", num_iter)
    if max_lr <= min_lr:
        raise UserError(f"max-lr={max_lr} <= min-lr={min_lr}", "--max-lr", "a value above --min-lr")
    if num_iter < 5:
        raise UserError(f"num-iter={num_iter}", "--num-iter", "at least 5")
    cfg = load_config(Config, resolve_config_path(config_path), overrides,
                      explicit_cli_values(ctx, {"data_root": "data.data_root", "device": "training.device",
                                                "threads": "training.threads"}))
    from .lr_finder import run_lr_finder

    result = run_lr_finder(cfg, min_lr=min_lr, max_lr=max_lr, num_iter=num_iter, plot_path=out, log=_log)
    click.echo(f"suggested lr: {result['suggested_lr']:.3g}  (per module: "
               + ", ".join(f"{k} {v:.3g}" for k, v in result["suggested_module_lrs"].items())
               + f"; set optimizer.lr and the *_lr keys to these) | plot: {result['plot']}")


@main.command()
@click.option("--checkpoint", required=True, help="A checkpoint from `worldmodel train` (e.g. RUN/checkpoints/best.pt).")
@click.option("--data-root", "--data_root", "data_root", default=None,
              help="Processed dataset (validation scenes are used) [the checkpoint's].")
@click.option("--horizon", type=int, default=None, help="Open-loop steps H [the checkpoint's eval.horizon].")
@click.option("--context", type=int, default=None, help="Ground-truth context frames [the checkpoint's].")
@click.option("--max-sequences", "max_sequences", type=int, default=None,
              help="Validation windows to score, 0 = all [the checkpoint's eval.max_sequences].")
@click.option("--reference-every", "reference_every", type=int, default=None,
              help="Long rollouts: render from the frame just predicted after every K steps, so new content can "
                   "enter (0 = from the last context frame throughout) [the checkpoint's "
                   "model.decoder.rollout_reference: context = 0, predicted = 1].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--device", default="auto", show_default=True)
@handle_user_errors
def evaluate(checkpoint, data_root, horizon, context, max_sequences, reference_every, as_json, device):
    """Model vs copy-last-frame at horizons 1..H, and action sensitivity (true vs foreign actions)."""
    from trainkit.device import resolve_device

    from .evaluate import evaluate_checkpoint, format_table, to_json

    _positive("--horizon", horizon)
    _positive("--context", context)
    _positive("--max-sequences", max_sequences, allow_zero=True)
    _positive("--reference-every", reference_every, allow_zero=True)
    root = data_root or _checkpoint_data_root(checkpoint)
    res = evaluate_checkpoint(checkpoint, root, horizon, resolve_device(device), context, max_sequences,
                              reference_every)
    click.echo(to_json(res) if as_json else format_table(res))


def _checkpoint_data_root(checkpoint: str) -> str:
    from .evaluate import load_for_inference
    from .train import resolve_data_root

    _, cfg, _ = load_for_inference(checkpoint, "cpu")
    return str(resolve_data_root(cfg, _log))


@main.command()
@click.option("--checkpoint", required=True)
@click.option("--data-root", "--data_root", "data_root", default=None, help="Processed dataset [the checkpoint's].")
@click.option("--out", required=True, help="Output folder (refused if not empty unless --overwrite).")
@click.option("--num-sequences", "num_sequences", type=int, default=4, show_default=True)
@click.option("--horizon", type=int, default=None, help="Rollout steps [max(eval.horizon, 8)].")
@click.option("--steer-offset", "steer_offset", type=float, default=0.0, show_default=True,
              help="Add this to the steering channel (its physical unit, e.g. rad/s of yaw rate) for a third row.")
@click.option("--actions", "actions_file", default=None, metavar="FILE.csv",
              help="Drive the model: one row per step, a header naming the dataset's action channels (physical "
                   "units). Writes a GIF (and MP4 with PyAV) per sequence with the actions drawn on it.")
@click.option("--reference-every", "reference_every", type=int, default=None,
              help="Render from the frame just predicted after every K steps (long rollouts; 0 = the last "
                   "context frame throughout) [the checkpoint's model.decoder.rollout_reference].")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out folder whole.")
@click.option("--device", default="auto", show_default=True)
@handle_user_errors
def rollout(checkpoint, data_root, out, num_sequences, horizon, steer_offset, actions_file, reference_every,
            overwrite, device):
    """Open-loop rollouts as PNG strips and animated GIFs (GT / rollout / rollout with edited steering), or,
    with --actions, driven by per-step actions from a CSV file."""
    from trainkit.device import resolve_device

    from .evaluate import write_rollouts

    _positive("--reference-every", reference_every, allow_zero=True)
    if actions_file is not None and steer_offset:
        raise UserError("--steer-offset with --actions", "--steer-offset", "one of the two (the file sets steering)")
    root = data_root or _checkpoint_data_root(checkpoint)
    if actions_file is not None:
        from .drive import drive

        files = drive(checkpoint, root, out, actions_file, num_sequences=num_sequences, horizon=horizon,
                      device=resolve_device(device), overwrite=overwrite, reference_every=reference_every, log=_log)
        click.echo(f"wrote {len(files)} files to {out}")
        return
    files = write_rollouts(checkpoint, root, out, num_sequences=num_sequences, horizon=horizon,
                           steer_offset=steer_offset, device=resolve_device(device), overwrite=overwrite,
                           reference_every=reference_every)
    click.echo(f"wrote {len(files)} files to {out}")


@main.command("prepare-dataset")
@click.option("--dataset", type=click.Choice(["nuscenes", "carla", "synthetic"]), default=None,
              help="Source format [data.dataset, synthetic].")
@click.option("--data-root", "--data_root", "data_root", default=None, help="Raw data folder (nuscenes, carla).")
@click.option("--out", default=None, help="Output folder [data/processed/<dataset>].")
@click.option("--version", default=None, help="nuScenes table folder [v1.0-mini].")
@click.option("--image-size", "image_size", default=None, help="WIDTHxHEIGHT of the stored frames, e.g. 256x144.")
@click.option("--allow-pickle", is_flag=True,
              help="CARLA: read pd_dataframe.pkl tables. Unpickling can run arbitrary code: only for files you trust.")
@click.option("--num-scenes", "num_scenes", type=int, default=None, help="Synthetic: episodes [40].")
@click.option("--num-frames", "num_frames", type=int, default=None, help="Synthetic: frames per episode [60].")
@click.option("--seed", type=int, default=None, help="Synthetic: generator seed [0].")
@click.option("--synthetic-version", "synthetic_version", type=int, default=None,
              help="Synthetic: generator version, 2 (speed and braking visible) or 1 (the pre-session-19 world) [2].")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out folder whole.")
@config_options
@click.pass_context
@handle_user_errors
def prepare_dataset(ctx, config_path, overrides, dataset, data_root, out, version, image_size, allow_pickle,
                    num_scenes, num_frames, seed, synthetic_version, overwrite):
    """Turn raw data into the processed training format (the guide's scripts/prepare_dataset.py)."""
    from .sources import prepare

    cli = {"dataset": "data.dataset", "version": "data.version", "num_scenes": "data.synthetic_scenes",
           "num_frames": "data.synthetic_frames", "seed": "data.synthetic_seed",
           "synthetic_version": "data.synthetic_version"}
    values = explicit_cli_values(ctx, cli)
    if image_size is not None:
        try:
            w, h = (int(v) for v in image_size.lower().split("x"))
        except ValueError:
            raise UserError(f"image-size={image_size}", "--image-size", "WIDTHxHEIGHT, e.g. 256x144") from None
        values["data.image_size"] = [w, h]
    elif dataset in ("nuscenes", "carla") and config_path is None:
        values["data.image_size"] = [256, 144]   # the real sources default to 16:9 at 256x144
    cfg = load_config(Config, resolve_config_path(config_path), overrides, values)
    path = prepare(cfg, data_root=data_root, out=out, overwrite=overwrite, allow_pickle=allow_pickle, log=_log)
    click.echo(f"wrote {path}")


@main.command()
@click.option("--data-root", "--data_root", "data_root", required=True, help="A processed dataset.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handle_user_errors
def inspect(data_root, as_json):
    """Per scene: frames, duration, size; per action channel: unit, mean, min, max."""
    from .data import ProcessedDataset

    desc = ProcessedDataset(data_root).describe()
    if as_json:
        click.echo(json.dumps(desc))
        return
    click.echo(f"{desc['root']}: {desc['source']}, {desc['num_frames']} frames of "
               f"{desc['frame_size'][0]}x{desc['frame_size'][1]}, {len(desc['scenes'])} scenes")
    for s in desc["scenes"]:
        click.echo(f"  {s['name']:<24} {s['split']:<5} {s['frames']:>6} frames {s['duration_s']:>8.2f} s")
    click.echo("actions:")
    for a in desc["actions"]:
        click.echo(f"  [{a['channel']}] {a['name']:<12} {a['unit']:<8} mean {a['mean']:>9.4f} "
                   f"min {a['min']:>9.4f} max {a['max']:>9.4f}")


@main.command()
@click.option("--checkpoint", default=None, help="Describe a checkpoint's model instead of a config's.")
@click.option("--image-size", "image_size", default=None, help="WIDTHxHEIGHT [data.image_size].")
@config_options
@handle_user_errors
def info(config_path, overrides, checkpoint, image_size):
    """Parameter counts per module and the resolved model config."""
    import torch

    from .evaluate import build_model, load_for_inference
    from .model import parameter_counts

    if checkpoint:
        model, cfg, extra = load_for_inference(checkpoint, "cpu")
        size = tuple(extra["image_size"])
    else:
        cfg = load_config(Config, resolve_config_path(config_path), overrides)
        size = tuple(cfg.data.image_size)
        if image_size:
            try:
                size = tuple(int(v) for v in image_size.lower().split("x"))
            except ValueError:
                raise UserError(f"image-size={image_size}", "--image-size", "WIDTHxHEIGHT") from None
        with torch.device("meta"):
            model = build_model(cfg, size, cfg.data.sequence_length)
    counts = parameter_counts(model)
    m = cfg.model
    click.echo(f"frames {size[0]}x{size[1]} | latent_dim {m.latent_dim} hidden_dim {m.hidden_dim} "
               f"encoder {list(m.encoder.stages)} heads {m.encoder.num_heads} | dynamics {m.dynamics.num_layers} "
               f"layers | decoder {list(m.decoder.stages)} init_size {m.decoder.init_size} "
               f"(first grid {model.decoder.init[1]}x{model.decoder.init[0]})")
    for name in ("encoder", "dynamics", "decoder", "total"):
        click.echo(f"  {name:<9} {counts[name]:>12,} parameters")


if __name__ == "__main__":
    sys.exit(main())
