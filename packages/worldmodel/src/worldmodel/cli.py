"""`worldmodel`: command-line entry point (skeleton; commands land with the package issue)."""

from __future__ import annotations

import click

from trainkit.cli import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Action-conditioned video world model for driving: encoder, latent dynamics, decoder, open-loop rollout."""


@main.command()
def train():
    """Train (not built yet)."""
    raise click.UsageError("worldmodel train is not built yet")
