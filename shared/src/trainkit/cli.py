"""Shared click options and run-directory handling that the packages' CLIs reuse."""
from __future__ import annotations

from pathlib import Path

import click

from .errors import UserError

RUN_MARKERS = ("checkpoints", "config.yaml", "metrics.jsonl")


def common_options(fn=None, *, set_example: str | None = None):
    """``--config --set --device --precision --seed --quiet`` (defaults come from the package's config).

    Use as ``@common_options`` or ``@common_options(set_example="train.lr=2e-4")``: the example shown in
    ``--set``'s help must be a key of *that* package's config (a test should check it), so trainkit's own
    default names none.
    """
    if fn is None:
        return lambda f: common_options(f, set_example=set_example)
    example = (f"e.g. --set {set_example}" if set_example
               else "the dotted key as written in the run's config.yaml, e.g. --set section.key=value")
    options = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                     help="YAML config file (dataclass defaults < file < flags < --set)."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help=f"Override any config key: {example} (repeatable)."),
        click.option("--device", default=None, help="auto | cpu | cuda | cuda:N | mps"),
        click.option("--precision", default=None, type=click.Choice(["fp32", "bf16", "fp16"]),
                     help="Autocast precision (fp16 uses a GradScaler on CUDA)."),
        click.option("--seed", type=int, default=None, help="Random seed."),
        click.option("--quiet", is_flag=True, default=False, help="No progress bars."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def run_dir_has_run(path: Path, markers=RUN_MARKERS) -> bool:
    return path.is_dir() and any((path / m).exists() for m in markers) or (path.is_dir() and any(path.glob("*.pt")))


def has_checkpoint(path: Path) -> bool:
    """Whether a run directory holds any checkpoint file (``*.pt``/``*.pth``, at any depth)."""
    return any(p.is_file() for pattern in ("*.pt", "*.pth") for p in Path(path).rglob(pattern))


def prepare_run_dir(path: str | Path, *, resume: str | None, markers=RUN_MARKERS) -> Path:
    """Create the run directory; refuse to reuse one that already holds a run unless resuming."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError("run directory path is a file", str(path), "expected a directory (or a new path)")
    if not resume and run_dir_has_run(path, markers):
        if not has_checkpoint(path):
            # A run that crashed before its first save (e.g. out of memory in step 1): "--resume auto" would
            # find nothing, so say so instead of sending the user in a circle. Its files are still kept.
            raise UserError("run directory already holds a run that saved no checkpoint", str(path),
                            "choose a new --save_dir or delete this one (--resume auto has nothing to continue)")
        raise UserError("run directory already holds a run", str(path),
                        "pass --resume auto to continue it, or choose a new --save_dir")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Group(click.Group):
    """A click group whose own usage errors (unknown flag, bad choice, missing option) are also one
    ``error: ...`` line with exit code 2, like a UserError, instead of click's multi-line usage block."""

    def main(self, *args, **kwargs):
        import sys

        kwargs.setdefault("standalone_mode", False)
        no_args = getattr(click.exceptions, "NoArgsIsHelpError", ())
        try:
            rv = super().main(*args, **kwargs)
        except no_args as err:
            click.echo(err.ctx.get_help())
            sys.exit(0)
        except click.UsageError as err:
            path = err.ctx.command_path if err.ctx else self.name
            click.echo(f"error: {' '.join(err.format_message().split())} ({path}): see '{path} --help'", err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
        return rv
