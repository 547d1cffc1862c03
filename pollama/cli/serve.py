"""``pollama serve``: the Ollama-compatible HTTP server.

Its start is the start users wait for, so it begins with the slowest part: on a machine
with no GPU the spare runner (``llm.spare``), which imports llama.cpp for the first
load, is launched before the server imports its own HTTP stack, and both import at
once. One event loop runs from that launch to the server's exit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from pollama.devices import discover_gpus
from pollama.errors import PollamaError
from pollama.llm.spare import SpareRunner
from pollama.logs import configure_logging
from pollama.settings import Settings

if TYPE_CHECKING:
    from pollama.store.disk import Store

log = logging.getLogger(__name__)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop where it is installed, as uvicorn would pick it."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _clean_up(store: Store, *, prune: bool) -> None:
    """Start-up's cleanup of the store, under its lock: another server sharing the store
    may be writing, and what it writes is never a leftover. Nothing is served yet, so
    this thread may block until that write ends."""
    from pollama.store.disk import PRUNE_GRACE

    with store.lock.hold(
        on_wait=lambda: log.info("waiting for another process's write to the model store")
    ):
        leftovers = store.remove_leftovers()  # what a crash left half-written: never a model
        if leftovers:
            log.info("removed what an interrupted write left: files=%s", ",".join(leftovers))
        # A blob uploaded a moment ago, for a create still to come, is kept (PRUNE_GRACE).
        removed = store.prune(keep_newer_than=PRUNE_GRACE) if prune else []
    if removed:
        log.info("pruned unreferenced blobs: count=%d", len(removed))


def skip_unused_imports() -> None:
    """Keep out of the server what its package imports pull in but it never runs.

    httpx's ``__init__`` imports its command line (rich, pygments and click) whenever
    those are installed, as typer installs them: ~25 ms and 3 MiB of every start. A
    ``None`` in ``sys.modules`` makes that import fail, and httpx then defines a stub
    ``httpx.main`` instead; the server uses only httpx's client. Nothing changes where
    httpx is already imported.
    """
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]


def serve() -> None:
    skip_unused_imports()
    settings = Settings.from_env()
    configure_logging(settings.debug)
    with asyncio.Runner(loop_factory=_loop_factory()) as loop:
        # A load onto GPUs starts a runner that sees only those: no spare with a GPU
        # (found once, here; the scheduler does not probe again for it).
        spares = SpareRunner(enabled=settings.spare_runner and not discover_gpus(settings))
        if spares.enabled:
            loop.run(spares.launch())
        _serve(settings, spares, loop)


def _serve(settings: Settings, spares: SpareRunner, loop: asyncio.Runner) -> None:
    import uvicorn

    from pollama.api.app import create_app, key_ring
    from pollama.api.limits import BoundedHttpTools
    from pollama.api.state import ServerState
    from pollama.engine.cpu_path import CpuPath
    from pollama.scheduler.scheduler import Scheduler
    from pollama.store.disk import Store

    if not settings.debug:
        # The server's log is where users look for loads, layouts and unloads.
        logging.getLogger("pollama").setLevel(logging.INFO)
    store = Store(settings.models_dir)
    _clean_up(store, prune=not settings.noprune)
    cpu_path = CpuPath.for_settings(settings)
    # What the engine is and which CPU path loads take: the probe runs once per build
    # and CPU (about a second), beside the server's start rather than before it.
    threading.Thread(
        target=lambda: log.info("%s", cpu_path.summary()), name="engine-probe", daemon=True
    ).start()
    try:
        keys = key_ring(settings)
    except PollamaError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if keys.enabled:
        # The file is read again on SIGHUP: keys change without a restart.
        signal.signal(signal.SIGHUP, lambda *_: keys.reload())
    elif not _loopback(settings.host):
        log.warning(
            "listening on %s with no API keys: anybody who can reach the port can use this "
            "server (set POLLAMA_API_KEYS)",
            settings.host,
        )
    scheduler = Scheduler.create(settings, cpu_path=cpu_path, spares=spares)
    state = ServerState(settings, store, scheduler, keys=keys)
    config = uvicorn.Config(
        create_app(state),
        host=settings.host,
        port=settings.port,
        log_level="debug" if settings.debug else "warning",
        # SIGTERM: stop accepting, give in-flight requests this long, then cancel them;
        # the app's shutdown then stops every runner. Never an unbounded wait.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
        limit_concurrency=settings.max_connections,
        http=BoundedHttpTools,  # httptools with a bound on a request's headers
        ws="none",  # no API uses websockets; their import is 50 ms of every start
    )
    loop.run(uvicorn.Server(config).serve())
