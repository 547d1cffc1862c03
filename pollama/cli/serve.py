"""``pollama serve``: the Ollama-compatible HTTP server."""

from __future__ import annotations

import logging

import uvicorn

from pollama.settings import Settings

log = logging.getLogger(__name__)


def serve() -> None:
    from pollama.api.app import create_app
    from pollama.api.state import ServerState
    from pollama.server.scheduler import Scheduler
    from pollama.server.store import Store

    settings = Settings.from_env()
    if not settings.debug:
        # The server's log is where users look for loads, layouts and unloads.
        logging.getLogger("pollama").setLevel(logging.INFO)
    store = Store(settings.models_dir)
    if not settings.noprune:
        removed = store.prune()
        if removed:
            log.info("pruned unreferenced blobs: count=%d", len(removed))
    state = ServerState(settings, store, Scheduler.create(settings))
    uvicorn.run(
        create_app(state),
        host=settings.host,
        port=settings.port,
        log_level="debug" if settings.debug else "warning",
    )
