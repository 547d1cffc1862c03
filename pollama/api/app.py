"""The FastAPI application: routers, the one exception handler, start-up and shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pollama.api import metrics
from pollama.api.anthropic import routes as anthropic
from pollama.api.auth import Guard, KeyRing, parse_keys
from pollama.api.errors import ApiError, api_error, error_body_for
from pollama.api.limits import BodyLimit
from pollama.api.ollama import catalog, embed, generate, manage, rerank
from pollama.api.openai import rerank as openai_rerank
from pollama.api.openai import routes as openai
from pollama.api.security import DEFAULT_ORIGINS, HostCheck, origin_regex
from pollama.api.state import ServerState
from pollama.errors import PollamaError
from pollama.settings import Settings

log = logging.getLogger(__name__)


class CatchUnexpected:
    """An exception that is not ours (a bug) becomes a 500 in the API's error shape with a
    generic message, its traceback in the log, if nothing of the response was sent yet;
    after the first byte the stream encoders end the stream with an error record."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            if started:
                raise
            log.error("unexpected error serving %s", scope.get("path", ""), exc_info=exc)
            body = error_body_for(scope.get("path", ""))(api_error(exc))
            await JSONResponse(body, status_code=500)(scope, receive, send)


def key_ring(settings: Settings) -> KeyRing:
    """The keys the settings name (InvalidKeys for a list that does not parse)."""
    return KeyRing(parse_keys(settings.api_keys.split(",")), settings.api_keys_file)


def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.scheduler.warm_up()
        try:
            yield
        finally:
            # SIGINT/SIGTERM end up here through uvicorn: no runner may outlive us.
            await state.scheduler.shutdown()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pollama = state
    state.metrics.watch(state.scheduler)
    routes = (catalog, generate, manage, embed, rerank, openai, openai_rerank, anthropic)
    for module in (*routes, metrics):
        app.include_router(module.router)
    # Added last = outermost: the Host check runs before anything else; then every
    # request it lets through is counted, CORS preflights included; a bug of ours
    # still answers in the API's error shape, with CORS headers.
    app.add_middleware(CatchUnexpected)
    app.add_middleware(
        BodyLimit, max_body=state.settings.max_body, max_blob=state.settings.max_blob
    )
    if state.keys is None:
        state.keys = key_ring(state.settings)
    settings = state.settings
    app.add_middleware(
        Guard, keys=state.keys, read_only=settings.read_only, metrics_public=settings.metrics_public
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origin_regex=origin_regex((*DEFAULT_ORIGINS, *state.settings.origins)),
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        allow_headers=["*"],
    )
    app.add_middleware(metrics.RequestMetrics, metrics=state.metrics)
    app.add_middleware(HostCheck, bound=state.settings.host)

    async def _error(request: Request, exc: Exception) -> JSONResponse:
        error = api_error(exc)
        if error.status >= 500 and isinstance(exc, PollamaError):
            # Our own errors say what went wrong; the unexpected get a traceback below.
            log.warning("request failed: %s", exc)
        return JSONResponse(error_body_for(request.url.path)(error), status_code=error.status)

    app.add_exception_handler(PollamaError, _error)  # type: ignore[arg-type]

    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Unknown routes and wrong methods answer in the API's error shape too.
        message = "404 page not found" if exc.status_code == 404 else str(exc.detail).lower()
        body = error_body_for(request.url.path)(ApiError(exc.status_code, message))
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]

    return app
