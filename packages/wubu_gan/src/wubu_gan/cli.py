"""``wubu-gan``: train, evaluate, sample, make-demo-video, info.

Every ``train`` flag is a field of ``TrainConfig`` with the original script's name (underscored) and default;
list flags take several values as the original's argparse ``nargs='+'`` did (``--wubu_s_hyperbolic_dims 64 32``)
or one comma-separated value. Booleans are ``--flag`` / ``--no-flag``. User mistakes print one ``error:`` line
and exit with code 2.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path

import click
import yaml

from trainkit.cli import Group
from trainkit.config import load_config, parse_override
from trainkit.errors import UserError, handle_user_errors

from .config import TrainConfig, resolve_config_path

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
STOPPED_EXIT_CODE = 3  # `train` stopped by SIGTERM/SIGINT after saving a checkpoint (continue with --resume auto)
HINTS = typing.get_type_hints(TrainConfig)


def _base_type(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType")) and args else tp


LIST_FLAGS = {f"--{n}" for n, tp in HINTS.items() if typing.get_origin(_base_type(tp)) is list}


class ListParam(click.ParamType):
    name = "LIST"

    def __init__(self, item):
        self.item = item

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        parts = [p for p in str(value).replace(",", " ").split() if p]
        try:
            return [self.item(p) for p in parts]
        except ValueError:
            self.fail(f"{value!r} is not a list of {self.item.__name__}", param, ctx)


class NargsCommand(click.Command):
    """Joins ``--list_flag a b c`` (argparse nargs='+') into one value before click parses it."""

    def parse_args(self, ctx, args):
        out, i = [], 0
        while i < len(args):
            tok = args[i]
            if tok in LIST_FLAGS:
                vals = []
                i += 1
                while i < len(args) and not args[i].startswith("--"):
                    vals.append(args[i])
                    i += 1
                out += [tok, ",".join(vals)] if vals else [tok]
                continue
            out.append(tok)
            i += 1
        return super().parse_args(ctx, out)


def train_options(fn):
    for name in reversed(list(FIELDS)):
        tp = _base_type(HINTS[name])
        default = FIELDS[name].default if FIELDS[name].default is not dataclasses.MISSING else FIELDS[name].default_factory()
        help_ = f"(default: {default})"
        if tp is bool:
            fn = click.option(f"--{name}/--no-{name}", default=None, help=help_)(fn)
        elif typing.get_origin(tp) is list:
            item = typing.get_args(tp)[0]
            fn = click.option(f"--{name}", type=ListParam(item), default=None, help=f"one or more values {help_}")(fn)
        else:
            fn = click.option(f"--{name}", type={int: int, float: float}.get(tp, str), default=None, help=help_)(fn)
    return fn


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """WuBu-nesting / GAAD VAE-GAN for video with Q-learning training control."""


@main.command(cls=NargsCommand)
@train_options
@click.option("--config", "config_path", default=None,
              help="YAML file or shipped name (cpu = the default, phase1, phase2a, phase2b, phase2c, phase3, phase4).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override any config key (repeatable).")
@click.option("--allow_rewind", "--allow-rewind", "allow_rewind", is_flag=True, default=False,
              help="With --resume: accept a checkpoint older than the run's newest (the later history is archived "
                   "under rewound/ in --checkpoint_dir). A new empty --checkpoint_dir forks instead.")
@click.pass_context
@handle_user_errors
def train(ctx, config_path, overrides, allow_rewind, **_):
    """Train the VAE-GAN (flags: the original script's arguments)."""
    from .train import resolve_resume_config, train as run_train

    values = {}
    for name in FIELDS:
        source = ctx.get_parameter_source(name)
        if source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT):
            values[name] = ctx.params[name]
    if config_path is None and not values.get("resume"):
        # Bare `wubu-gan train` is the CPU recipe (the original's 64x64 / 100-epoch defaults took ~100 s an epoch on
        # 2 cores and were below copy-last after 2 epochs); the guide's phase 1 is `--config phase1`.
        config_path = "cpu"
        bare = True
    else:
        bare = False
    path = resolve_config_path(config_path)
    if values.get("resume"):
        cfg = resolve_resume_config(values, path, overrides, values["resume"], values.get("checkpoint_dir"))
    else:
        cfg = load_config(TrainConfig, path, overrides, values)
    explicit = set(values) | {parse_override(o)[0] for o in overrides}
    if path is not None:
        explicit |= set((yaml.safe_load(Path(path).read_text()) or {}).keys())
    say = (lambda m: None) if cfg.quiet else click.echo
    if bare:  # announced once the config is valid, so a bad flag is still the only line
        say("no --config: running the CPU recipe (configs/cpu.yaml: 32x32, 8 epochs); "
            "--config phase1 for the guide's phase 1 at 64x64")
    summary = run_train(cfg, log=say, explicit_keys=frozenset(explicit), allow_rewind=allow_rewind)
    stopped = bool(summary.get("stopped"))
    if not cfg.quiet and (summary.get("val") or stopped) and summary.get("is_main", True):  # one line, from rank 0
        click.echo(json.dumps({"checkpoint_dir": summary["checkpoint_dir"], "best": summary["best"], "step": summary["step"],
                               "stopped": stopped, "val": {k: v for k, v in (summary.get("val") or {}).items()}},
                              default=float))
    if stopped:  # a signal stop is not a finished phase: `run_phase1.sh && run_phase2a.sh` must not go on
        raise SystemExit(STOPPED_EXIT_CODE)


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(), help="A wubugaad_hybridgen_ckpt_v01_*.pt file.")
@click.option("--video_data_path", "--video-data-path", default=None,
              help="Video file or folder to evaluate on (all its clips). Default: the run's validation split.")
@click.option("--max_clips", type=click.IntRange(min=0), default=0, show_default=True, help="Evenly spaced subset (0 = all).")
@click.option("--no_lpips", is_flag=True, help="Skip LPIPS even when its weights are cached.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--horizon", type=click.IntRange(1, 50), default=5, show_default=True,
              help="Rollout length: prediction scored at h = 1..horizon (predictions fed back).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object {model, copy_last_frame, constant_velocity, reconstruction, info} on stdout; "
                   "each has psnr and ssim per horizon and avg_val_* over all horizons.")
@handle_user_errors
def evaluate(checkpoint, video_data_path, max_clips, no_lpips, device, horizon, as_json):
    """Prediction (the encoder sees the input frames only; z = mu; rollout h = 1..horizon) against copy-last-frame
    and constant-velocity (the last flow applied again); reconstruction (target visible) under its own name."""
    from trainkit.device import resolve_device

    from .evaluate import evaluate_checkpoint

    res = evaluate_checkpoint(checkpoint, video_data_path, device=resolve_device(device), use_lpips=not no_lpips,
                              max_clips=max_clips, log=lambda m: None if as_json else click.echo(m), horizon=horizon)
    names = ("model", "copy_last_frame", "constant_velocity", "reconstruction")
    if as_json:
        extra = {"per_video": res["per_video"]} if "per_video" in res else {}
        click.echo(json.dumps({**{k: res[k] for k in names}, "latent": res["latent"], **extra, "info": res["info"]}))
        return
    fmt = lambda v: "null" if v is None else f"{v:.4f}"  # noqa: E731
    click.echo(f"{res['info']['checkpoint']} on {res['info']['data']} ({res['info']['num_clips']} clips)")
    click.echo("prediction (encoder on the input frames only), PSNR dB / SSIM per horizon:")
    click.echo(f"{'h':<4}" + "".join(f"{n:>26}" for n in names[:3]))
    for h in res["info"]["horizons"]:
        click.echo(f"{h:<4}" + "".join(f"{fmt(res[n]['psnr'][str(h)]) + ' / ' + fmt(res[n]['ssim'][str(h)]):>26}"
                                       for n in names[:3]))
    for name, v in res.get("per_video", {}).items():
        click.echo(f"{name} ({v['num_clips']} clips) h1 psnr: model {fmt(v['model']['psnr']['1'])}, copy-last "
                   f"{fmt(v['copy_last_frame']['psnr']['1'])}, constant-velocity {fmt(v['constant_velocity']['psnr']['1'])}")
    r = res["reconstruction"]
    click.echo(f"reconstruction (encoder sees the target): psnr {fmt(r['avg_val_psnr'])} ssim {fmt(r['avg_val_ssim'])}")
    m, lat = res["model"], res["latent"]
    click.echo(f"lpips (all horizons): model {fmt(m['avg_val_lpips'])}")
    click.echo(f"latent: KL {fmt(lat['kl_nats_per_clip'])} nats/clip, swap cost {fmt(lat['swap_cost_db'])} dB, "
               f"prior-sample psnr {fmt(lat['prior_psnr'])} vs posterior {fmt(lat['posterior_psnr'])}, "
               f"diversity {fmt(lat['diversity'])} (std across {lat['num_z']} z, [0, 1])")
    if res["info"]["lpips_note"]:
        click.echo(f"note: {res['info']['lpips_note']}")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Output folder (samples.png, samples.gif).")
@click.option("--num_samples", type=click.IntRange(min=1), default=None,
              help="Default: the run's demo_num_samples (as training's samples/fixed_noise_generated).")
@click.option("--seed", type=int, default=None, help="Default: the run's seed (the same fixed noise as training).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--replace", is_flag=True, help="Replace a non-empty --out folder.")
@click.option("--one_context", is_flag=True,
              help="Every row continues the same input frames with its own z ~ N(0, I): the futures z can draw.")
@click.option("--interpolate", is_flag=True,
              help="Rows interpolate z from the first validation clip's mu to the last one's, for the first's context.")
@handle_user_errors
def sample(checkpoint, out, num_samples, seed, device, replace, one_context, interpolate):
    """Fixed-noise generations as a PNG grid and a GIF."""
    from trainkit.device import resolve_device

    from .evaluate import sample_checkpoint

    if one_context and interpolate:
        raise UserError("--one_context and --interpolate exclude each other", "sample", "one of them")
    res = sample_checkpoint(checkpoint, out, num_samples, seed, resolve_device(device), replace, one_context, interpolate)
    click.echo(f"{res['num_samples']} samples x {res['frames']} frames -> {res['png']}, {res['gif']}; "
               f"diversity {res['diversity']:.4f} (per-pixel std across samples' predictions, [0, 1])")


@main.command("make-demo-video")
@click.option("--out", default="demo_video_data_dir", show_default=True, type=click.Path(), help="Output folder.")
@click.option("--image_h", type=click.IntRange(min=8), default=64, show_default=True)
@click.option("--image_w", type=click.IntRange(min=8), default=64, show_default=True)
@click.option("--num_frames", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--which", type=click.Choice(["both", "square", "shapes"]), default="both", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace demo videos of the same names already in --out.")
@handle_user_errors
def make_demo_video(out, image_h, image_w, num_frames, which, seed, overwrite):
    """Write the demo videos: the original's moving square and a richer textured-shapes video with camera pan."""
    from .data import SHAPES_VIDEO, SQUARE_VIDEO, make_demo_videos

    kinds = ("square", "shapes") if which == "both" else (which,)
    # audit A10: a same-named file in --out (perhaps the user's own recording) was overwritten without asking
    taken = [Path(out) / name for kind, name in (("square", SQUARE_VIDEO), ("shapes", SHAPES_VIDEO))
             if kind in kinds and (Path(out) / name).exists()]
    if taken and not overwrite:
        raise UserError(f"{taken[0].name} already exists", f"--out {out}",
                        "another folder, or --overwrite to replace the demo videos of these names")
    for p in make_demo_videos(out, image_h, image_w, num_frames, seed, kinds):
        click.echo(f"wrote {p}")


@main.command()
@click.option("--image_h", type=click.IntRange(min=8), default=64, show_default=True)
@click.option("--image_w", type=click.IntRange(min=8), default=64, show_default=True)
@click.option("--gaad_num_regions", type=click.IntRange(min=1), default=12, show_default=True)
@click.option("--gaad_decomposition_type", type=click.Choice(["hybrid", "spiral", "subdivide"]), default="hybrid",
              show_default=True)
@click.option("--gaad_min_size_px", type=click.IntRange(min=0), default=4, show_default=True)
@click.option("--video", type=click.Path(), default=None, help="Draw the boxes over this video's first frame.")
@click.option("--save_png", type=click.Path(dir_okay=False), default=None, help="PNG of the boxes over a frame.")
@handle_user_errors
def info(image_h, image_w, gaad_num_regions, gaad_decomposition_type, gaad_min_size_px, video, save_png):
    """Print the GAAD boxes for a frame size (and optionally save them drawn over a frame)."""
    from .gaad import gaad_boxes

    boxes = gaad_boxes(image_h, image_w, gaad_num_regions, gaad_decomposition_type, gaad_min_size_px)
    click.echo(f"GAAD {gaad_decomposition_type}, {gaad_num_regions} boxes for {image_w}x{image_h} (x1, y1, x2, y2; w x h):")
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        click.echo(f"{i:3d}  ({x1:7.2f}, {y1:7.2f}, {x2:7.2f}, {y2:7.2f})  {x2 - x1:6.2f} x {y2 - y1:6.2f}")
    if save_png:
        from .plots import draw_boxes

        parent = Path(save_png).parent
        if not parent.is_dir():
            raise UserError("folder does not exist", f"--save_png {save_png}", f"an existing folder ({parent})")
        draw_boxes(boxes, image_h, image_w, save_png, video)
        click.echo(f"saved {save_png}")


if __name__ == "__main__":  # pragma: no cover
    main()
