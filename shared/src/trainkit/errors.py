"""One error type for user mistakes, and the click glue that prints it as one line."""
from __future__ import annotations

import functools
import sys

import click

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix (bad flag, bad file, bad checkpoint).

    Printed by the CLI as ``error: <what> (<where>): <expected>`` with exit code 2 and no
    traceback. Bugs must not use this type: they keep their tracebacks.
    """

    def __init__(self, what: str, where: str | None = None, expected: str | None = None):
        self.what, self.where, self.expected = what, where, expected
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = self.what
        if self.where:
            text += f" ({self.where})"
        if self.expected:
            text += f": {self.expected}"
        return text


def fail(message: str) -> None:
    """Print ``error: message`` on one line to stderr and exit with code 2."""
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    sys.exit(EXIT_USER_ERROR)


def handle_user_errors(fn):
    """Decorator for click callbacks: a UserError becomes one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            fail(err.message)

    return wrapper
