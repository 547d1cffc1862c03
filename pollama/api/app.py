"""The FastAPI application: routers, the one exception handler, start-up and shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from pollama.api import metrics
from pollama.api.anthropic import routes as anthropic
from pollama.api.errors import error_body_for, message_of, status_of
from pollama.api.ollama import catalog, embed, generate, manage
from pollama.api.openai import responses
from pollama.api.openai import routes as openai
from pollama.api.security import DEFAULT_ORIGINS, HostCheck, origin_regex
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
    state.metrics.watch(state.scheduler)
    app.include_router(catalog.router)
    app.include_router(generate.router)
    app.include_router(manage.router)
    app.include_router(embed.router)
    app.include_router(openai.router)
    app.include_router(responses.router)
    app.include_router(anthropic.router)
    app.include_router(metrics.router)
    # Added last = outermost: the Host check runs before anything else; then every
    # request it lets through is counted, CORS preflights included.
    app.add_middleware(
        CORSMiddleware,
        allow_origin_regex=origin_regex((*DEFAULT_ORIGINS, *state.settings.origins)),
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        allow_headers=["*"],
    )
    app.add_middleware(metrics.RequestMetrics, metrics=state.metrics)
    app.add_middleware(HostCheck, bound=state.settings.host)

    async def _error(request: Request, exc: Exception) -> JSONResponse:
        status = status_of(exc)
        if status >= 500:
            # Our own errors say what went wrong; only the unexpected need a traceback.
            log.warning(
                "request failed: %s", exc, exc_info=not isinstance(exc, PollamaError | ValueError)
            )
        body = error_body_for(request.url.path)(status, message_of(exc))
        return JSONResponse(body, status_code=status)

    # Our errors go through the ordinary exception middleware; a handler for plain
    # Exception would sit in Starlette's server-error middleware, which re-raises.
    for kind in (PollamaError, ValueError):
        app.add_exception_handler(kind, _error)  # type: ignore[arg-type]

    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Unknown routes and wrong methods answer in the API's error shape too.
        message = "404 page not found" if exc.status_code == 404 else str(exc.detail).lower()
        body = error_body_for(request.url.path)(exc.status_code, message)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]

    return app
