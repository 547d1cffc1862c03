"""The ``pollama`` command line, as one typer app.

``serve``, ``fit`` and ``runner`` work on their own. The other commands are
clients of the server at OLLAMA_HOST; all of them except ``ps`` and ``stop``
start ``pollama serve`` in the background when nothing answers there (as
Ollama's CLI does), saying where its log is. ``ps`` and ``stop`` only report:
with no server, nothing is loaded.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pollama.cli.create import create
from pollama.cli.fit import fit
from pollama.cli.info import info
from pollama.cli.manage import copy, list_models, ps, remove, show, stop
from pollama.cli.ray import app as ray_app
from pollama.cli.run import run
from pollama.cli.runner import runner
from pollama.cli.serve import serve
from pollama.cli.transfer import pull, push
from pollama.logs import configure_logging
from pollama.settings import Settings

app = typer.Typer(
    name="pollama",
    help="A local LLM server that speaks Ollama's and OpenAI's APIs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_STARTS = " Starts `pollama serve` in the background if none answers."
_NO_START = " Does not start a server."

app.command(help="Start the Ollama-compatible server on OLLAMA_HOST.")(serve)
app.command(help="Create a model from a Modelfile." + _STARTS)(create)
app.command(help="Show information about a model." + _STARTS)(show)
app.command(
    help="Run a model: answer a prompt (piped stdin is read as one), or chat on a terminal."
    + _STARTS
)(run)
app.command(help="Unload a running model." + _NO_START)(stop)
app.command(help="Pull a model from a registry." + _STARTS)(pull)
app.command(help="Push a model to a registry." + _STARTS)(push)
app.command("list", help="List the models the server has." + _STARTS)(list_models)
app.command("ls", hidden=True, help="List the models the server has." + _STARTS)(list_models)
app.command(help="List the models that are loaded." + _NO_START)(ps)
app.command("cp", help="Copy a model under a new name." + _STARTS)(copy)
app.command("rm", help="Delete models (unloading them first)." + _STARTS)(remove)
app.command(
    help="Show where a model's layers would go on these (or simulated) GPUs, and the memory "
    "each device needs, without loading it."
)(fit)
app.command(
    help="Show the engine (llama.cpp build), what this CPU allows, the GPU libraries, and "
    "whether loads use llama.cpp's extra CPU buffer types (AMX, CPU_REPACK)."
)(info)
app.add_typer(ray_app, name="ray")
app.command(help="Serve one model to a pollama server (started by the server).", hidden=True)(
    runner
)


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        from pollama import __version__

        try:
            engine = metadata.version("llama-cpp-python")
        except metadata.PackageNotFoundError:
            engine = "not installed"
        typer.echo(f"pollama version {__version__} (llama-cpp-python {engine}; see pollama info)")
        raise typer.Exit()


@app.callback()
def _configure(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    configure_logging(Settings.from_env().debug)
