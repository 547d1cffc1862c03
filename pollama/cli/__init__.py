"""The ``pollama`` command line."""

from __future__ import annotations

import logging

import typer

from pollama.cli.fit import fit
from pollama.cli.runner import runner
from pollama.cli.serve import serve
from pollama.settings import Settings

app = typer.Typer(
    name="pollama",
    help="A local LLM server that speaks Ollama's and OpenAI's APIs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command(
    help="Show where a model's layers would go on these (or simulated) GPUs, and the memory "
    "each device needs, without loading it."
)(fit)
app.command(help="Start the Ollama-compatible server on OLLAMA_HOST.")(serve)
app.command(help="Serve one model to a pollama server (started by the server).", hidden=True)(
    runner
)


@app.callback()
def _configure() -> None:
    settings = Settings.from_env()
    logging.basicConfig(
        level=logging.DEBUG if settings.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    app()
