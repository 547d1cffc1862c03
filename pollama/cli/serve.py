"""``pollama serve``: the Ollama-compatible HTTP server."""

from __future__ import annotations

import logging
import math
import threading

import uvicorn

from pollama.settings import Settings

log = logging.getLogger(__name__)


def serve() -> None:
    from pollama.api.app import create_app
    from pollama.api.state import ServerState
    from pollama.engine.cpu_path import CpuPath
    from pollama.scheduler.scheduler import Scheduler
    from pollama.store.disk import Store

    settings = Settings.from_env()
    if not settings.debug:
        # The server's log is where users look for loads, layouts and unloads.
        logging.getLogger("pollama").setLevel(logging.INFO)
    store = Store(settings.models_dir)
    if not settings.noprune:
        removed = store.prune()
        if removed:
            log.info("pruned unreferenced blobs: count=%d", len(removed))
    cpu_path = CpuPath.for_settings(settings)
    # What the engine is and which CPU path loads take: the probe runs once per build
    # and CPU (about a second), beside the server's start rather than before it.
    threading.Thread(
        target=lambda: log.info("%s", cpu_path.summary()), name="engine-probe", daemon=True
    ).start()
    state = ServerState(settings, store, Scheduler.create(settings, cpu_path=cpu_path))
    uvicorn.run(
        create_app(state),
        host=settings.host,
        port=settings.port,
        log_level="debug" if settings.debug else "warning",
        # SIGTERM: stop accepting, give in-flight requests this long, then cancel them;
        # the app's shutdown then stops every runner. Never an unbounded wait.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
    )
