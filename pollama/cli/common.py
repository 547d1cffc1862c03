"""What the client commands share: one way to report errors and interrupts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

from pollama.cli.client import ClientError
from pollama.errors import PollamaError

INTERRUPTED = 130
"""The exit status of a command stopped with Ctrl-C (128 + SIGINT), as shells report it."""


@contextmanager
def exit_on_error() -> Iterator[None]:
    """Show a ClientError or PollamaError as ``Error: <message>`` and exit 1; exit 130 on
    Ctrl-C."""
    try:
        yield
    except (ClientError, PollamaError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("", err=True)
        raise typer.Exit(INTERRUPTED) from None


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (not a pipe, a file or a test buffer)."""
    isatty = getattr(stream, "isatty", None)
    return bool(stream is not None and isatty and isatty())
