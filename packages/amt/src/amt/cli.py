"""`amt`: command-line entry point (skeleton; commands land with the package issue)."""

from __future__ import annotations

import click

from trainkit.cli import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Advanced Manipulation Transformer: 3D hand pose from RGB with pixel-aligned refinement and sigma-reparam."""


@main.command()
def train():
    """Train (not built yet)."""
    raise click.UsageError("amt train is not built yet")
