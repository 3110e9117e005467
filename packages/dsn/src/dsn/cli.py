"""``dsn``: train, evaluate, summarize, ablation, make-dataset, extract-features, agreement, info.

Flags follow the guide exactly (underscored: ``--model_type``, ``--save_dir`` ...). Thin: parse,
build the config, call one function. User mistakes print one ``error:`` line and exit with code 2.
"""
from __future__ import annotations

import json
import os

import click

from trainkit.cli import Group
from trainkit.config import explicit_cli_values, load_config
from trainkit.errors import UserError, handle_user_errors

from .config import DSNConfig, TrainConfig

# click parameter name -> dotted TrainConfig key, for the flags the user typed.
TRAIN_FLAGS = {
    "model_type": "model.model_type", "enc_hidden": "model.enc_hidden", "num_attn_heads": "model.num_attn_heads",
    "num_attn_layers": "model.num_attn_layers", "num_scales": "model.num_scales",
    "pos_encoding_type": "model.pos_encoding_type", "use_lstm_in_advanced": "model.use_lstm_in_advanced",
    "dataset_root": "dataset_root", "save_dir": "save_dir", "epochs": "epochs", "lr": "lr",
    "budget_ratio": "budget_ratio", "use_cache": "use_cache", "cache_size": "cache_size",
    "split_index": "split_index", "num_episodes": "num_episodes", "device": "device", "precision": "precision",
    "seed": "seed", "quiet": "quiet",
}


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """DSN: unsupervised keyframe selection trained with REINFORCE (baseline BiLSTM or advanced model)."""


_OPTIONS = {
    "config": click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                           help="YAML file of TrainConfig keys (defaults < file < flags < --set)."),
    "set": click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override any TrainConfig key, e.g. --set budget_beta=20 --set model.dropout=0.1 (repeatable)."),
    "device": click.option("--device", default=None, help="auto | cpu | cuda | cuda:N | mps"),
    "precision": click.option("--precision", default=None, type=click.Choice(["fp32", "bf16", "fp16"]),
                              help="Autocast precision of the policy's forward pass."),
    "seed": click.option("--seed", type=int, default=None, help="Random seed."),
    "quiet": click.option("--quiet", is_flag=True, default=False, help="No progress bars or per-epoch lines."),
}


def options(*names):
    """The shared options a command really uses (each command lists only those it acts on)."""
    def decorate(fn):
        for name in reversed(names):
            fn = _OPTIONS[name](fn)
        return fn
    return decorate


def _bool01(name):
    return click.option(name, type=click.IntRange(0, 1), default=None, help="0 or 1")


@main.command()
@click.option("--model_type", "--model-type", type=click.Choice(["baseline", "advanced"]), default=None,
              help="baseline (BiLSTM) or advanced (attention + multi-scale). Default advanced.")
@click.option("--dataset_root", "--dataset-root", type=click.Path(), default=None,
              help="Folder with the eccv16 h5 + splits.json. Default: the synthetic dataset, built on first use.")
@click.option("--save_dir", "--save-dir", type=click.Path(), default=None, help="Run directory (default runs/dsn).")
@click.option("--epochs", type=int, default=None, help="Epochs (default 20).")
@click.option("--num_attn_heads", "--num-attn-heads", type=int, default=None, help="Attention heads (default 4).")
@click.option("--num_attn_layers", "--num-attn-layers", type=int, default=None, help="Attention layers; 0 = none (default 2).")
@click.option("--num_scales", "--num-scales", type=int, default=None, help="Temporal scales; 1 = single scale (default 3).")
@_bool01("--use_cache")
@click.option("--cache_size", "--cache-size", type=int, default=None, help="Max cache entries (default 1000).")
@click.option("--pos_encoding_type", "--pos-encoding-type", type=click.Choice(["sinusoidal", "learned", "none"]),
              default=None, help="Positional encoding (default sinusoidal).")
@_bool01("--use_lstm_in_advanced")
@click.option("--lr", type=float, default=None, help="Adam learning rate (default 1e-4).")
@click.option("--budget_ratio", "--budget-ratio", type=float, default=None, help="Target keyframe ratio (default 0.06).")
@click.option("--enc_hidden", "--enc-hidden", type=int, default=None, help="Hidden size / model width (default 256).")
@click.option("--split_index", "--split-index", type=int, default=None, help="Which split of splits.json (default 0).")
@click.option("--num_episodes", "--num-episodes", type=int, default=None, help="Episodes per video (default 5).")
@click.option("--resume", default=None,
              help="PATH to a checkpoint, or 'auto' (newest loadable in --save_dir). The checkpoint's config is the "
                   "run's config: flags not given come from it, and flags that change the run (data, split, model, "
                   "optimiser, reward, seed) are refused; --epochs, --device, --precision, --quiet, --use_cache may change.")
@click.option("--allow_rewind", "--allow-rewind", "allow_rewind", is_flag=True, default=False,
              help="With --resume: accept a checkpoint older than the run's newest (the later history is archived "
                   "under rewound/ in the run folder).")
@click.option("--allow_config_change", "--allow-config-change", is_flag=True, default=False,
              help="With --resume: accept flags that change run-defining settings (the saved config.yaml then records them).")
@options("config", "set", "device", "precision", "seed", "quiet")
@click.pass_context
@handle_user_errors
def train(ctx, resume, allow_config_change, allow_rewind, config_path, overrides, **_):
    """Train a policy with REINFORCE (the guide's flags)."""
    from .train import resume_config, train as run_train

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # REINFORCE here steps once per video with a per-video reward baseline; a model this small gains
        # nothing from data parallelism, and N independent copies would fight over one run directory.
        raise UserError(f"dsn train runs in one process, but torchrun started {os.environ['WORLD_SIZE']}",
                        "WORLD_SIZE", "launch it without torchrun (or with --nproc_per_node=1)")
    values = explicit_cli_values(ctx, TRAIN_FLAGS)
    for key in ("use_cache", "model.use_lstm_in_advanced"):
        if key in values:
            values[key] = bool(values[key])
    if allow_config_change and not resume:
        raise UserError("--allow_config_change only applies to a resumed run", "--allow_config_change", "use it with --resume")
    if resume:
        cfg = resume_config(config_path, overrides, values, resume=resume, allow_changes=allow_config_change)
    else:
        cfg = load_config(TrainConfig, config_path, overrides, values)
    from trainkit.runsafety import clear_stop, exit_if_stopped  # (lazy: the CLI starts without torch)

    clear_stop()  # only this run's signal decides the exit code
    summary = run_train(cfg, resume=resume, allow_config_change=allow_config_change, allow_rewind=allow_rewind, log=lambda m: click.echo(m, err=False) if not cfg.quiet else None)
    if not summary.get("stopped") and not cfg.quiet:
        click.echo(json.dumps({k: summary[k] for k in ("run_dir", "checkpoint", "num_params", "train_time_s", "val", "cache")},
                              default=float))
    exit_if_stopped()  # a signal stop (checkpoint saved) exits 3, not 0


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(), help="A dsn_checkpoint_ep{N}.pt file.")
@click.option("--dataset_root", "--dataset-root", type=click.Path(), default=None,
              help="Dataset folder (default: the synthetic default).")
@click.option("--split_index", "--split-index", type=int, default=None, help="Split (default: the one trained on).")
@click.option("--budget_ratio", "--budget-ratio", type=float, default=None, help="Keyframe budget (default: as trained).")
@click.option("--f_mode", "--f-mode", type=click.Choice(["max", "avg"]), default=None,
              help="Combine users by max (SumMe) or avg (TVSum). Default: as trained (avg).")
@click.option("--keyframes", "selection", type=click.Choice(["nms", "topk"]), default=None,
              help="Keyframe selection (default: as trained, nms).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--tvsum_mat", "--tvsum-mat", type=click.Path(), default=None,
              help="TVSum's ydata-tvsum50.mat: its raw annotator scores become the reference of matching videos.")
@click.option("--summe", type=click.Path(), default=None,
              help="SumMe per-user ground truth (a folder, or its .npz / GT .mat file): the reference of matching videos.")
@options("device", "precision")
@click.option("--seed", type=int, default=None, help="Seed of the random-summary baseline (default 0).")
@handle_user_errors
def evaluate(checkpoint, dataset_root, split_index, budget_ratio, f_mode, selection, as_json, tvsum_mat, summe, device,
             precision, seed):
    """Model vs random vs uniform summaries on a split's test videos."""
    from .evaluate import evaluate_checkpoint, format_table

    annotations = None
    if tvsum_mat or summe:
        from .annotations import read_summe, read_tvsum_mat

        annotations = {**(read_tvsum_mat(tvsum_mat) if tvsum_mat else {}), **(read_summe(summe) if summe else {})}
    result = evaluate_checkpoint(checkpoint, dataset_root, split_index=split_index, device=device or "cpu",
                                 budget_ratio=budget_ratio, f_mode=f_mode, seed=0 if seed is None else seed,
                                 selection=selection, precision=precision or "fp32", annotations=annotations)
    if as_json:
        click.echo(json.dumps({k: result[k] for k in ("model", "random", "uniform")}))
        return
    info = result["info"]
    click.echo(f"{info['model_type']} checkpoint {info['checkpoint']}: {info['num_videos']} test videos of split "
               f"{info['split_index']} in {info['dataset_root']} (budget {info['budget_ratio']}, keyframes "
               f"{info['keyframe_selection']}, F mode {info['f_mode']})")
    click.echo(format_table(result))
    for note in info["notes"]:
        click.echo(f"note: {note}")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(), help="A dsn_checkpoint_ep{N}.pt file.")
@click.option("--video", type=click.Path(), default=None, help="A video file (features are extracted on the fly).")
@click.option("--dataset_root", "--dataset-root", type=click.Path(), default=None, help="Dataset folder (with --key).")
@click.option("--key", default=None, help="Video key inside --dataset_root.")
@click.option("--out", required=True, type=click.Path(), help="Output folder (keyframes.json, contact_sheet.png).")
@click.option("--budget_ratio", "--budget-ratio", type=float, default=None, help="Keyframe budget (default: as trained).")
@click.option("--keyframes", "selection", type=click.Choice(["nms", "topk"]), default=None,
              help="Keyframe selection (default: as trained, nms).")
@click.option("--skim", default=None, help="Also write a short video of the keyframes' segments: NAME.mp4 or NAME.gif "
                                            "(inside --out unless absolute; needs --video).")
@click.option("--kts_vmax", "--kts-vmax", type=click.FloatRange(min=0, min_open=True), default=None,
              help="KTS penalty for shot detection: lower finds more cuts (default 0.7, set on real clips; the "
                   "synthetic data use 1.5).")
@options("device", "precision")
@handle_user_errors
def summarize(checkpoint, video, dataset_root, key, out, budget_ratio, selection, skim, kts_vmax, device, precision):
    """Keyframes (JSON), a contact sheet (PNG) and optionally a skim (MP4/GIF) for one video."""
    from .summarize import summarize as run_summarize

    result = run_summarize(checkpoint, out, video=video, dataset_root=dataset_root, key=key,
                           budget_ratio=budget_ratio, device=device or "cpu", selection=selection,
                           precision=precision or "fp32", skim=skim, kts_vmax=kts_vmax)
    click.echo(f"{len(result['keyframes'])} keyframes -> {result['json']}"
               + (f", {result['contact_sheet']}" if result.get("contact_sheet") else "")
               + (f", {result['skim']}" if result.get("skim") else ""))
    for note in result.get("notes", []):
        click.echo(f"note: {note}")


@main.command()
@click.option("--dataset_root", "--dataset-root", type=click.Path(), default=None,
              help="Dataset folder (default: the synthetic default).")
@click.option("--save_dir", "--save-dir", type=click.Path(), default="runs/ablation", show_default=True)
@click.option("--epochs", type=int, default=None, help="Epochs per configuration (default 20).")
@click.option("--split_index", "--split-index", type=int, default=None, help="Split (default 0).")
@options("config", "set", "device", "precision", "seed", "quiet")
@click.pass_context
@handle_user_errors
def ablation(ctx, dataset_root, save_dir, epochs, split_index, config_path, overrides, **_):
    """The guide's five configurations, then a Markdown + CSV results table."""
    from .ablation import run_ablation

    values = explicit_cli_values(ctx, {"dataset_root": "dataset_root", "epochs": "epochs", "split_index": "split_index",
                                       "device": "device", "precision": "precision", "seed": "seed",
                                       "quiet": "quiet"})
    base = load_config(TrainConfig, config_path, overrides, values)
    result = run_ablation(base, save_dir, log=click.echo)
    click.echo(result["markdown"])
    click.echo(f"table: {result['md_path']} and {result['csv_path']}")


@main.command("make-dataset")
@click.option("--out", required=True, type=click.Path(), help="Output folder (dataset.h5 + splits.json).")
@click.option("--num_videos", "--num-videos", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--num_splits", "--num-splits", type=click.IntRange(min=1), default=5, show_default=True)
@handle_user_errors
def make_dataset(out, num_videos, seed, num_splits):
    """Build the synthetic animation-like dataset (the embedded default) into --out."""
    from .synthetic import make_dataset as build

    path = build(out, num_videos=num_videos, seed=seed, num_splits=num_splits)
    click.echo(f"wrote {num_videos} videos to {path}")


@main.command("extract-features")
@click.option("--videos", required=True, multiple=True, type=click.Path(), help="Video files (repeatable or several).")
@click.argument("more_videos", nargs=-1, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Output dataset folder.")
@click.option("--sample_fps", "--sample-fps", type=float, default=2.0, show_default=True)
@click.option("--thumb_size", "--thumb-size", type=int, default=64, show_default=True)
@click.option("--backbone", default=None, help="torchvision model (googlenet = eccv16 pool5, resnet18/34/50) used when its weights are already "
                   "cached; otherwise a logged fallback to the weights-free features (never downloads).")
@click.option("--pca_dim", "--pca-dim", type=int, default=None, help="Reduce features with PCA to this size.")
@click.option("--kts_vmax", "--kts-vmax", type=click.FloatRange(min=0, min_open=True), default=None,
              help="KTS penalty for shot detection: lower finds more cuts (default 0.7, set on real clips; the "
                   "synthetic data use 1.5).")
@handle_user_errors
def extract_features(videos, more_videos, out, sample_fps, thumb_size, backbone, pca_dim, kts_vmax):
    """Real videos -> features, KTS shots and thumbnails in the same h5 format."""
    from .features import extract_features as run

    paths = list(videos) + list(more_videos)
    path = run(paths, out, sample_fps=sample_fps, thumb_size=thumb_size, backbone=backbone, pca_dim=pca_dim,
               **({} if kts_vmax is None else {"kts_vmax": kts_vmax}))
    click.echo(f"wrote {len(paths)} videos to {path}")


@main.command()
@click.option("--tvsum_mat", "--tvsum-mat", type=click.Path(), default=None,
              help="TVSum's ydata-tvsum50.mat (raw 1-5 scores of 20 annotators per frame).")
@click.option("--summe", type=click.Path(), default=None,
              help="SumMe per-user ground truth: a folder (GT .mat files, a .npz of '<video>/user_score', or CSVs) or that .npz / .mat file.")
@click.option("--predictions", type=click.Path(), default=None,
              help=".json {video: [per-frame scores]} or .npz: scored against the matching annotations.")
@click.option("--subsample", type=click.IntRange(min=1), default=1, show_default=True,
              help="Correlate every k-th frame (1 = frame level as Otani et al.; CA-SUM uses 15).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random row.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@handle_user_errors
def agreement(tvsum_mat, summe, predictions, subsample, seed, as_json):
    """Human and random agreement on real annotations (TVSum tau/rho, SumMe leave-one-out F), and a method's."""
    from .annotations import agreement as run_agreement, read_predictions, read_summe, read_tvsum_mat, score_predictions

    if not tvsum_mat and not summe:
        raise UserError("no annotations given", "dsn agreement", "--tvsum_mat FILE and/or --summe DIR")
    result = run_agreement(tvsum_mat, summe, subsample=subsample, seed=seed)
    if predictions:
        anns = {**(read_tvsum_mat(tvsum_mat) if tvsum_mat else {}), **(read_summe(summe) if summe else {})}
        result["predictions"] = score_predictions(read_predictions(predictions), anns, subsample=subsample)
    if as_json:
        click.echo(json.dumps(result))
        return
    if "human" in result:
        click.echo(f"TVSum ({result['tvsum']['videos']} videos, every {subsample} frame(s)) | Kendall tau | Spearman rho")
        for row in ("human", "random"):
            click.echo(f"{row:6s} | {result[row]['kendall_tau']:.3f} | {result[row]['spearman_rho']:.3f}")
    if "summe" in result:
        h = result["summe"]["human_loo"]
        click.echo(f"SumMe ({h['videos']} videos) leave-one-out human F: max {h['F_max']:.1f}, mean {h['F_avg']:.1f}")
    if "predictions" in result:
        p = result["predictions"]
        click.echo(f"predictions ({len(p['videos'])} matched, {len(p['unmatched'])} unmatched): "
                   + ", ".join(f"{k} {v:.3f}" for k, v in p["mean"].items() if v is not None))


@main.command()
@click.option("--checkpoint", type=click.Path(), default=None, help="Describe this checkpoint's model instead.")
@click.option("--in_dim", "--in-dim", type=click.IntRange(min=1), default=None,
              help="Feature size for the default configs (default 484).")
@options("config", "set")
@handle_user_errors
def info(checkpoint, in_dim, config_path, overrides):
    """Parameter counts of the baseline and advanced models (or of a checkpoint's model)."""
    from .model import build_model, count_parameters

    if checkpoint:
        from .evaluate import load_policy

        if config_path or overrides or in_dim:
            raise UserError("--config/--set/--in_dim describe the default models, not a checkpoint", "dsn info --checkpoint",
                            "either --checkpoint alone, or --config/--set/--in_dim without it")

        model, ckpt = load_policy(checkpoint)
        click.echo(f"{checkpoint}: {ckpt.get('model_type')} model, {count_parameters(model):,} parameters, "
                   f"epoch {ckpt.get('epoch')}; config {json.dumps(ckpt['config'])}")
        return
    from .features import FEATURE_DIM

    cfg = load_config(TrainConfig, config_path, overrides)
    dim = in_dim or cfg.model.in_dim or FEATURE_DIM
    click.echo(f"feature size D = {dim}")
    for model_type in ("baseline", "advanced"):
        mcfg = DSNConfig(**{**cfg.model.to_dict(), "model_type": model_type, "in_dim": dim})
        model = build_model(mcfg)
        parts = {name: count_parameters(m) for name, m in model.named_children()}
        detail = ", ".join(f"{k} {v:,}" for k, v in parts.items() if v)
        click.echo(f"{model_type}: {count_parameters(model):,} parameters ({detail})")


if __name__ == "__main__":  # pragma: no cover
    main()
