"""``pollama runner``: the per-model runner process (started by the server, not by people)."""

from __future__ import annotations

from typing import Annotated

import typer

from pollama.errors import PollamaError
from pollama.settings import Settings


def runner(
    model: Annotated[str, typer.Option(help="GGUF file to serve.")],
    port: Annotated[int, typer.Option(help="Loopback port to listen on.")],
) -> None:
    from pollama.runner.app import serve  # imports llama.cpp: only in the runner

    settings = Settings.from_env()
    try:
        serve(model, port, verbose=settings.debug, test_crash=settings.test_crash)
    except PollamaError as exc:
        # The server's status writer keeps this line as the reason the runner died.
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
