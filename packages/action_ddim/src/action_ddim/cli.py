"""`action-ddim`: train, evaluate, sample, reconstruct, generate-data, import-log."""

from __future__ import annotations

import sys

import click

from trainkit.cli import Group, common_options
from trainkit.config import explicit_cli_values, load_config
from trainkit.errors import UserError, handle_user_errors

from .config import TRAIN_FLAGS, Config, named_config


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """DDIM diffusion over UI action sequences [x, y, press]."""


@main.command()
@click.option("--data_dir", "--data-dir", "data_dir", default=None,
              help="Directory of *_actions.npy training files (default: generated dataset in the cache).")
@click.option("--val_data_dir", "--val-data-dir", "val_data_dir", default=None, help="Validation directory.")
@click.option("--seq_len", type=int, default=None, help="Steps per sequence when the data has no metadata.json [64].")
@click.option("--d_model", type=int, default=None, help="Transformer width [128].")
@click.option("--num_layers", type=int, default=None, help="Encoder layers [4].")
@click.option("--nhead", type=int, default=None, help="Attention heads; must divide d_model [4].")
@click.option("--dropout", type=float, default=None, help="Dropout [0.0].")
@click.option("--batch_size", type=int, default=None, help="Sequences per step [32].")
@click.option("--num_epochs", type=int, default=None, help="Epochs [50].")
@click.option("--lr", type=float, default=None, help="Peak AdamW learning rate [1e-4].")
@click.option("--warmup_steps", type=int, default=None,
              help="Linear LR warmup steps before cosine annealing [500]. A short run warms up for at most 20%% "
                   "of its steps, so the LR still reaches --lr (a 15-step run: 3 steps).")
@click.option("--grad_clip", type=float, default=None, help="Gradient-norm clip, 0 = off [1.0].")
@click.option("--ema_decay", type=float, default=None, help="EMA decay ceiling (with warmup) [0.9995].")
@click.option("--schedule", type=click.Choice(["cosine", "linear"]), default=None, help="Noise schedule [cosine].")
@click.option("--num_train_timesteps", type=int, default=None, help="Diffusion steps T [1000].")
@click.option("--prediction_type", type=click.Choice(["epsilon", "v", "x0"]), default=None,
              help="What the network predicts [v].")
@click.option("--num_inference_steps", type=int, default=None, help="DDIM steps for validation/sampling [50].")
@click.option("--eta", type=float, default=None, help="DDIM eta for sampling: 0 deterministic, 1 DDPM [0.0].")
@click.option("--wandb_project", "--wandb-project", "wandb_project", default=None,
              help="Log to this W&B project (offline without key/network). Off when not given.")
@click.option("--save_dir", "--save-dir", "save_dir", default=None, help="Run directory [checkpoints].")
@click.option("--resume", default=None,
              help="Checkpoint path, or 'auto' for the newest in --save_dir. The checkpoint's config is the run's: "
                   "flags not given come from it; flags changing data, model, diffusion schedule, batch size, "
                   "epochs, LR curve or seed are refused (see --allow_config_change).")
@click.option("--allow_rewind", "--allow-rewind", "allow_rewind", is_flag=True, default=False,
              help="With --resume: accept a checkpoint older than the run's newest (the later history is archived "
                   "under rewound/ in the run folder). A new empty --save_dir forks instead.")
@click.option("--allow_config_change", "--allow-config-change", "allow_config_change", is_flag=True,
              help="With --resume: accept flags that change what the run is (config.yaml then records them).")
@click.option("--save_every", type=int, default=None, help="Checkpoint every N epochs (and at the end) [20].")
@click.option("--plot_every", type=int, default=None, help="Plots every N epochs (and at the end) [10].")
@click.option("--val_every", type=int, default=None, help="Validate every N epochs (and at the end) [1].")
@click.option("--val_subset", type=int, default=None,
              help="Validation sequences per epoch, 0 = all; the last epoch uses all [64].")
@common_options
@click.pass_context
@handle_user_errors
def train(ctx, config_path, overrides, allow_config_change, allow_rewind, **_):
    """Train the denoiser (the guide's train_diffusion_ddim.py)."""
    cli_values = explicit_cli_values(ctx, TRAIN_FLAGS)
    config_path = named_config(config_path)  # --config balabit / fidelity / default: the shipped recipes
    # Bad flags are refused here, before the training stack is even imported.
    if not load_config(Config, config_path, overrides, cli_values).train.resume and allow_config_change:
        raise UserError("--allow_config_change without --resume", "--allow_config_change",
                        "use it only together with --resume")
    from .train import resolve_config
    from .train import train as run

    cfg, resume = resolve_config(config_path, overrides, cli_values, allow_config_change=allow_config_change,
                                 log=_log)
    from trainkit.runsafety import clear_stop, exit_if_stopped  # (lazy: the CLI starts without torch)

    clear_stop()  # only this run's signal decides the exit code
    run(cfg, log=_log, resume=resume, allow_rewind=allow_rewind)
    exit_if_stopped()  # a signal stop (checkpoint saved) exits 3, not 0


def _log(msg: str) -> None:
    click.echo(msg, err=True)


def inference_options(fn):
    """--config/--set (applied over the checkpoint's config), --device, --precision."""
    for option in reversed([
        click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                     help="YAML applied over the checkpoint's config."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a config key of the checkpoint, e.g. --set diffusion.spacing=trailing."),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N | mps"),
        click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16", "fp16"]),
                     help="Autocast precision for the network."),
    ]):
        fn = option(fn)
    return fn


@main.command()
@click.option("--checkpoint", required=True, help="A checkpoint from `action-ddim train`.")
@click.option("--data_dir", "--data-dir", "data_dir", required=True, help="Directory of *_actions.npy files.")
@click.option("--num_inference_steps", type=int, default=None, help="DDIM steps each way [the checkpoint's].")
@click.option("--num_gen_samples", type=int, default=None, help="Unconditional samples for val/gen/* [checkpoint's].")
@click.option("--seq_len", type=int, default=None, help="Steps per sequence without metadata.json [checkpoint's].")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object (tag -> value).")
@click.option("--real_dir", "--real-dir", "real_dir", default=None,
              help="Real sequences outside --data_dir for the real-vs-real floors (e.g. the training directory); "
                   "default: hold some out of --data_dir.")
@click.option("--plot", "plot_path", default=None, help="Write a PNG of samples beside real sequences here.")
@click.option("--gen_only", is_flag=True, help="Only the generation/fidelity metrics (skips the reconstructions).")
@inference_options
@handle_user_errors
def evaluate(checkpoint, data_dir, num_inference_steps, num_gen_samples, seq_len, as_json, real_dir, plot_path,
             gen_only, config_path, overrides, device, precision):
    """Print every validation metric for a checkpoint on a data directory (fidelity beside real-vs-real floors)."""
    from .evaluate import evaluate_checkpoint, format_metrics, metrics_json

    if plot_path is not None and not plot_path.endswith(".png"):
        raise UserError("plot must be a .png file", f"--plot {plot_path}", "a path ending in .png")
    m = evaluate_checkpoint(checkpoint, data_dir, num_inference_steps, device, seq_len, num_gen_samples,
                            config_path=config_path, overrides=overrides, precision=precision, real_dir=real_dir,
                            plot=plot_path, gen_only=gen_only,
                            log=None if as_json else click.echo)  # --json: exactly one JSON object
    click.echo(metrics_json(m) if as_json else format_metrics(m))


@main.command()
@click.option("--checkpoint", required=True)
@click.option("--num_samples", type=int, required=True)
@click.option("--out", required=True, help="Output .npy ([N*seq_len, 3], press in {0,1}); a PNG is written beside it.")
@click.option("--num_inference_steps", type=int, default=None, help="DDIM steps [the checkpoint's].")
@click.option("--eta", type=float, default=None, help="0 deterministic ... 1 DDPM [the checkpoint's].")
@click.option("--seed", type=int, default=0, show_default=True)
@inference_options
@handle_user_errors
def sample(checkpoint, num_samples, out, num_inference_steps, eta, seed, config_path, overrides, device, precision):
    """Draw unconditional sequences with DDIM."""
    from .evaluate import sample_to_file

    path, png = sample_to_file(checkpoint, num_samples, out, num_inference_steps, eta, seed, device,
                               config_path=config_path, overrides=overrides, precision=precision)
    click.echo(f"wrote {path} and {png}")


@main.command()
@click.option("--checkpoint", required=True)
@click.option("--input", "input_path", required=True, help="A *_actions.npy file to reconstruct.")
@click.option("--out", required=True, help="Output .npy in the dataset format.")
@click.option("--num_inference_steps", type=int, default=None, help="DDIM steps each way [the checkpoint's].")
@inference_options
@handle_user_errors
def reconstruct(checkpoint, input_path, out, num_inference_steps, config_path, overrides, device, precision):
    """DDIM-invert then decode every sequence of a file."""
    from .evaluate import reconstruct_file

    path, m = reconstruct_file(checkpoint, input_path, out, num_inference_steps, device,
                               config_path=config_path, overrides=overrides, precision=precision)
    click.echo(f"wrote {path} | mse {m['mse']:.6g} coord_mse {m['coord_mse']:.6g} "
               f"press_accuracy {m['press_accuracy']:.4f} mean_snr_db {m['mean_snr_db']:.2f}")


@main.command("generate-data")
@click.option("--out_dir", "--out-dir", "out_dir", required=True)
@click.option("--num_train", type=int, default=5000, show_default=True)
@click.option("--num_val", type=int, default=1000, show_default=True)
@click.option("--seq_len", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--replace", is_flag=True,
              help="Replace an existing dataset in --out_dir whole (a non-empty --out_dir is refused otherwise).")
@handle_user_errors
def generate_data(out_dir, num_train, num_val, seq_len, seed, replace):
    """Write the synthetic gesture dataset (train/ and val/ with metadata.json)."""
    for name, v, lo in (("--num_train", num_train, 1), ("--num_val", num_val, 1), ("--seq_len", seq_len, 4),
                        ("--seed", seed, 0)):  # numpy's SeedSequence takes no negative seed
        if v < lo:
            raise UserError(f"{name.lstrip('-')}={v}", name, f"an integer >= {lo}")
    from .augmentation import generate_click_dataset

    root = generate_click_dataset(out_dir, num_train=num_train, num_val=num_val, seq_len=seq_len, seed=seed,
                                  replace=replace)
    click.echo(f"wrote {num_train} train and {num_val} val sequences of {seq_len} steps to {root}/train and {root}/val")


@main.command("import-log")
@click.option("--input", "inputs", multiple=True, required=True,
              help="A CSV pointer log, .csv or .csv.gz (repeat for several). Default columns: Balabit's "
                   "'record timestamp,client timestamp,button,state,x,y'.")
@click.option("--out_dir", "--out-dir", "out_dir", required=True, help="Output directory (the dataset format).")
@click.option("--rate", "rate_hz", type=float, default=None, help="Resampling rate in Hz [30].")
@click.option("--seq_len", type=int, default=None, help="Steps per sequence (window) [64].")
@click.option("--screen", default=None,
              help="Screen WIDTHxHEIGHT in pixels [inferred: the smallest standard screen holding 99.9%% of positions].")
@click.option("--split_gap", "split_gap_s", type=float, default=None,
              help="Seconds without an event that split a log into separate sequences [2.0].")
@click.option("--columns", default=None,
              help="Column names as ROLE=NAME,... for roles time, x, y, button, state "
                   "(e.g. 'time=ts,state=touch,button='); unnamed roles keep the Balabit default.")
@click.option("--stride", type=int, default=None, help="Steps between window starts [seq_len: no overlap].")
@click.option("--val_users", default=None,
              help="Comma-separated users (the folder holding each log, e.g. user7,user9) written to OUT_DIR/val; "
                   "the rest go to OUT_DIR/train.")
@click.option("--val_sessions", default=None,
              help="Comma-separated session names (file names without .csv[.gz], 'session_' optional) for OUT_DIR/val.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out_dir whole.")
@handle_user_errors
def import_log(inputs, out_dir, rate_hz, seq_len, screen, split_gap_s, columns, stride, val_users, val_sessions,
               overwrite):
    """Import pointer event logs (CSV) as training data: resampled, normalised, split, windowed."""
    from .importlog import ImportSettings, import_logs, parse_columns, parse_screen

    defaults = ImportSettings()
    settings = ImportSettings(rate_hz=defaults.rate_hz if rate_hz is None else rate_hz,
                              seq_len=defaults.seq_len if seq_len is None else seq_len,
                              screen=parse_screen(screen),
                              split_gap_s=defaults.split_gap_s if split_gap_s is None else split_gap_s,
                              columns=parse_columns(columns), stride=stride,
                              val_users=_names(val_users), val_sessions=_names(val_sessions))
    import_logs(list(inputs), out_dir, settings, overwrite=overwrite, log=_log)


def _names(spec: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in spec.split(",") if n.strip()) if spec else ()


if __name__ == "__main__":
    sys.exit(main())
