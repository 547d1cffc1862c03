"""``pollama ray up``: pollama as a Ray Serve application, N replicas behind Ray's proxy.

It connects to the Ray cluster at RAY_ADDRESS (``ray start --head`` on one machine,
``ray start --address …`` on the others), or starts a local one for a try-out, and
serves every API on OLLAMA_HOST through Ray's HTTP proxy. Each replica asks Ray for
its threads as CPUs and for the memory (and GPU) that ``pollama fit`` plans for the
models named with ``--model``, so Ray places replicas where they fit. The replicas
share the model store: OLLAMA_MODELS must be a path every node sees (docs/scale-out.md).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from pollama.errors import PollamaError
from pollama.settings import Settings

if TYPE_CHECKING:
    from pollama.ray.app import ReplicaResources

app = typer.Typer(help="Run pollama on a Ray cluster (pip install 'pollama[ray]').")


@app.command()
def up(
    replicas: Annotated[int, typer.Option(min=1, help="Replicas (fixed).")] = 2,
    threads: Annotated[int, typer.Option(min=1, help="llama.cpp threads (Ray CPUs) each.")] = 1,
    parallel: Annotated[
        int | None, typer.Option(min=1, help="Sequences each decodes at once.")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(help="A model each replica must hold: reserves its memory (repeatable)."),
    ] = None,
    min_replicas: Annotated[
        int | None, typer.Option(min=0, help="Autoscale from (with --max-replicas).")
    ] = None,
    max_replicas: Annotated[int | None, typer.Option(min=1, help="Autoscale up to.")] = None,
) -> None:
    """Deploy N replicas and serve until interrupted."""
    try:
        import ray
        from ray import serve

        from pollama.ray.app import Deployment, build
    except ImportError:
        typer.echo("Error: Ray is not installed: pip install 'pollama[ray]'", err=True)
        raise typer.Exit(1) from None
    settings = Settings.from_env()
    slots = parallel or settings.num_parallel
    try:
        resources = _resources(settings, model or [], threads, slots)
    except PollamaError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    deployment = Deployment(
        replicas=replicas,
        resources=resources,
        parallel=slots,
        min_replicas=min_replicas if max_replicas is not None else None,
        max_replicas=max_replicas if min_replicas is not None else None,
        env=_replica_env(settings),
    )
    ray.init(address=os.environ.get("RAY_ADDRESS") or None)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    typer.echo(f"pollama on Ray Serve at {settings.base_url} ({replicas} replicas)", err=True)
    serve.run(build(deployment), name="pollama", route_prefix="/", blocking=True)


def _resources(
    settings: Settings, models: list[str], threads: int, parallel: int
) -> ReplicaResources:
    from pollama.cli.fit import model_needs
    from pollama.ray.app import ReplicaResources

    memory, gpu = 0, False
    for name in models:
        needs, on_gpu = model_needs(name, settings, parallel=parallel)
        memory += needs
        gpu = gpu or on_gpu
    return ReplicaResources(num_cpus=threads, memory=memory, num_gpus=1.0 if gpu else 0.0)


def _replica_env(settings: Settings) -> dict[str, str]:
    """What every replica's ``pollama serve`` shares: the user's OLLAMA_*/POLLAMA_*
    settings (the store above all), as this process has them."""
    env = {k: v for k, v in os.environ.items() if k.startswith(("OLLAMA_", "POLLAMA_"))}
    env["OLLAMA_MODELS"] = str(settings.models_dir)
    env.pop("OLLAMA_HOST", None)  # each replica's server listens on a loopback port of its own
    return env
