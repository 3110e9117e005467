"""`wubu-gan`: command-line entry point (skeleton; commands land with the package issue)."""

from __future__ import annotations

import click

from trainkit.cli import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """WuBu-nesting / GAAD VAE-GAN for video with Q-learning training control."""


@main.command()
def train():
    """Train (not built yet)."""
    raise click.UsageError("wubu-gan train is not built yet")
