"""``pollama list``, ``ps``, ``show``, ``cp``, ``rm``, ``stop``: the models a server has."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from pollama.cli.client import Client, ClientError, ensure_server
from pollama.cli.common import exit_on_error
from pollama.cli.describe import summary
from pollama.cli.format import (
    columns,
    human_bytes,
    human_time,
    parse_time,
    processor,
    until,
)
from pollama.errors import InvalidModelName
from pollama.settings import Settings
from pollama.store.names import ModelName


def list_models() -> None:
    with exit_on_error(), ensure_server(Settings.from_env()) as client:
        models = client.list_models()
    typer.echo(list_table(models, datetime.now(UTC)))


def list_table(models: list[dict[str, Any]], now: datetime) -> str:
    rows = [
        (
            str(m.get("name", "")),
            str(m.get("digest", ""))[:12],
            human_bytes(int(m.get("size") or 0)),
            human_time(parse_time(m.get("modified_at")), now),
        )
        for m in models
    ]
    return columns(("NAME", "ID", "SIZE", "MODIFIED"), rows)


def ps() -> None:
    with exit_on_error():
        settings = Settings.from_env()
        client = Client(settings.base_url, api_key=settings.client_api_key)
        with client:
            if not client.heartbeat():
                typer.echo(f"no pollama server is running at {client.base_url}", err=True)
                models: list[dict[str, Any]] = []
            else:
                models = client.running()
    typer.echo(ps_table(models, datetime.now(UTC)))


def ps_table(models: list[dict[str, Any]], now: datetime) -> str:
    rows = []
    for m in models:
        size, vram = int(m.get("size") or 0), int(m.get("size_vram") or 0)
        rows.append(
            (
                str(m.get("name", "")),
                str(m.get("digest", ""))[:12],
                human_bytes(size),
                processor(size, vram),
                str(m.get("context_length") or ""),
                until(parse_time(m.get("expires_at")), now),
            )
        )
    return columns(("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"), rows)


def show(
    model: Annotated[str, typer.Argument(help="The model to describe.")],
    license: Annotated[bool, typer.Option("--license", help="Show only the license.")] = False,
    modelfile: Annotated[
        bool, typer.Option("--modelfile", help="Show only the Modelfile.")
    ] = False,
    parameters: Annotated[
        bool, typer.Option("--parameters", help="Show only the parameters.")
    ] = False,
    system: Annotated[bool, typer.Option("--system", help="Show only the system message.")] = False,
    template: Annotated[
        bool, typer.Option("--template", help="Show only the prompt template.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Ask for every metadata value.")
    ] = False,
) -> None:
    flags = {
        "license": license,
        "modelfile": modelfile,
        "parameters": parameters,
        "system": system,
        "template": template,
    }
    chosen = [name for name, on in flags.items() if on]
    if len(chosen) > 1:
        raise typer.BadParameter(
            "only one of --license, --modelfile, --parameters, --system or --template can be given"
        )
    with exit_on_error(), ensure_server(Settings.from_env()) as client:
        info = client.show(model, verbose=verbose)
    if not chosen:
        typer.echo(summary(info), nl=False)
        return
    value = info.get(chosen[0])
    if isinstance(value, list):
        value = "\n".join(str(item) for item in value)
    typer.echo(str(value or "").rstrip("\n"))


def copy(
    source: Annotated[str, typer.Argument(help="The model to copy.")],
    destination: Annotated[str, typer.Argument(help="The new name.")],
) -> None:
    with exit_on_error(), ensure_server(Settings.from_env()) as client:
        client.copy(source, destination)
    typer.echo(f"copied '{source}' to '{destination}'")


def remove(
    models: Annotated[list[str], typer.Argument(help="The models to delete.")],
) -> None:
    with exit_on_error(), ensure_server(Settings.from_env()) as client:
        loaded = {_key(m.get("name", "")) for m in client.running()}
        for model in models:
            if _key(model) in loaded:
                _unload(client, model)
            client.delete(model)
            typer.echo(f"deleted '{model}'")


def stop(model: Annotated[str, typer.Argument(help="The model to unload.")]) -> None:
    with exit_on_error():
        settings = Settings.from_env()
        client = Client(settings.base_url, api_key=settings.client_api_key)
        with client:
            if not client.heartbeat():
                raise ClientError(
                    f"couldn't find model '{model}' to stop: "
                    f"no pollama server is running at {client.base_url}"
                )
            if _key(model) not in {_key(m.get("name", "")) for m in client.running()}:
                raise ClientError(f"couldn't find model '{model}' to stop")
            _unload(client, model)


def _unload(client: Client, model: str) -> None:
    client.generate({"model": model, "keep_alive": 0})


def _key(name: object) -> str:
    """What two spellings of one model name share (``smollm2`` and ``smollm2:latest``)."""
    text = str(name)
    try:
        return ModelName.parse(text).key
    except InvalidModelName:
        return text.lower()
