"""The FastAPI application: routers, the one exception handler, start-up and shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from pollama.api import catalog, generate
from pollama.api.errors import message_of, status_of
from pollama.api.state import ServerState
from pollama.errors import PollamaError

log = logging.getLogger(__name__)


def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            # SIGINT/SIGTERM end up here through uvicorn: no runner may outlive us.
            await state.scheduler.shutdown()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pollama = state
    app.include_router(catalog.router)
    app.include_router(generate.router)

    async def _error(_: Request, exc: Exception) -> JSONResponse:
        status = status_of(exc)
        if status >= 500:
            log.warning("request failed: %s", exc, exc_info=not isinstance(exc, ValueError))
        return JSONResponse({"error": message_of(exc)}, status_code=status)

    # Our errors go through the ordinary exception middleware; a handler for plain
    # Exception would sit in Starlette's server-error middleware, which re-raises.
    for kind in (PollamaError, ValueError):
        app.add_exception_handler(kind, _error)  # type: ignore[arg-type]

    return app
