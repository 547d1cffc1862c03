"""``pollama run``: one answer to a prompt, or a chat session on a terminal."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from pollama.cli.chat import load_model, stream_reply, verbose_stats
from pollama.cli.client import Client, ResponseError, ensure_server
from pollama.cli.common import exit_on_error, is_terminal
from pollama.cli.repl import Repl, Session
from pollama.settings import Settings
from pollama.units import parse_duration


def run(
    model: Annotated[str, typer.Argument(help="The model to run, e.g. smollm2.")],
    prompt: Annotated[
        list[str] | None,
        typer.Argument(help="The prompt; without one, a chat session starts on a terminal."),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show timings and token rates after each answer.")
    ] = False,
    keepalive: Annotated[
        str | None,
        typer.Option(
            "--keepalive",
            help="How long the model stays loaded after the answer, e.g. 5m, 1h, 0, -1 "
            "(forever); seconds when a bare number.",
        ),
    ] = None,
    format: Annotated[str | None, typer.Option("--format", help="Response format: json.")] = None,
    nowordwrap: Annotated[
        bool,
        typer.Option("--nowordwrap", help="Do not wrap long lines at word boundaries."),
    ] = False,
) -> None:
    """Piped stdin is read as the prompt, before any prompt words given as arguments.

    Ctrl-C stops the answer: one-shot, the command exits 130; in a chat session, it
    returns to the prompt.
    """
    settings = Settings.from_env()
    with exit_on_error(), _model_hint(model):
        keep_alive = parse_keepalive(keepalive)
        if format is not None and format != "json":
            raise typer.BadParameter(
                f"unsupported format {format!r}; use json", param_hint="--format"
            )
        session = Session(
            model=model,
            format=format,
            keep_alive=keep_alive,
            verbose=verbose,
            wordwrap=not nowordwrap,
        )
        text = " ".join(prompt or [])
        interactive = is_terminal(sys.stdin) and not text
        if not is_terminal(sys.stdin):
            piped = sys.stdin.read()
            text = " ".join(part for part in (piped, text) if part)
        with ensure_server(settings) as client:
            if interactive:
                _chat_session(client, session)
            else:
                _answer(client, session, text)


def parse_keepalive(value: str | None) -> float | str | None:
    """``--keepalive`` as the API takes it: a Go duration string, or a number of seconds."""
    if value is None:
        return None
    try:
        parse_duration(value)
        return value.strip()
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        raise typer.BadParameter(
            f"invalid duration {value!r} (try e.g. 5m, 1h30m, 0 or -1)", param_hint="--keepalive"
        ) from None


def _answer(client: Client, session: Session, text: str) -> None:
    """One-shot: stream the answer to stdout; with no prompt at all, just load the model."""
    # Load first, as `ollama run` does, with a spinner on a terminal.
    load_model(client, session.request([]), sys.stderr if is_terminal(sys.stderr) else None)
    if not text.strip():
        return
    width = _terminal_width() if session.wordwrap and is_terminal(sys.stdout) else None
    body = session.request(session.messages_with(text))
    reply = stream_reply(client, body, sys.stdout, wrap_width=width)
    sys.stdout.write("\n")
    sys.stdout.flush()
    if session.verbose:
        typer.echo(verbose_stats(reply.final), err=True)


def _chat_session(client: Client, session: Session) -> None:
    import readline  # noqa: F401 - gives input() line editing and history

    width: Callable[[], int] | None = _terminal_width if is_terminal(sys.stdout) else None
    repl = Repl(client, session, read_line=input, out=sys.stdout, err=sys.stderr, width=width)
    repl.start()
    repl.run()


@contextmanager
def _model_hint(model: str) -> Iterator[None]:
    """Say how to get a model that does not exist: run does not pull (no registry is
    assumed reachable)."""
    try:
        yield
    except ResponseError as exc:
        if exc.not_found:
            typer.echo(f"Error: {exc}", err=True)
            typer.echo(
                f"pollama run does not download models: fetch it with `pollama pull {model}`, "
                f"or build it with `pollama create {model} -f Modelfile`.",
                err=True,
            )
            raise typer.Exit(1) from None
        raise


def _terminal_width() -> int:
    return max(shutil.get_terminal_size().columns - 1, 20)
