"""``pollama pull`` and ``pollama push``: models from and to a registry, via the server."""

from __future__ import annotations

from contextlib import closing
from typing import Annotated

import typer

from pollama.cli.client import Stream, ensure_server
from pollama.cli.common import exit_on_error
from pollama.cli.progress import ProgressDisplay
from pollama.settings import Settings

Insecure = Annotated[
    bool, typer.Option("--insecure", help="Allow plain HTTP and unverified TLS to the registry.")
]


def pull(
    model: Annotated[str, typer.Argument(help="The model to download.")],
    insecure: Insecure = False,
) -> None:
    with exit_on_error(), ensure_server(Settings.from_env()) as client:
        _show(client.pull(model, insecure=insecure))


def push(
    model: Annotated[str, typer.Argument(help="The model to upload (host/namespace/model).")],
    insecure: Insecure = False,
) -> None:
    with exit_on_error(), ensure_server(Settings.from_env()) as client:
        _show(client.push(model, insecure=insecure))


def _show(records: Stream) -> None:
    with ProgressDisplay() as progress, closing(records):
        for record in records:
            progress.update(record)
