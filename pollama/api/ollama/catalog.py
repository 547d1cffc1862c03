"""Routes that describe what the server has: /, version, tags, ps."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from pollama import __version__
from pollama.api.ollama.types import (
    ListModel,
    ListResponse,
    LoadingModel,
    ModelDetails,
    ProcessResponse,
    RunningModel,
    VersionResponse,
    rfc3339,
)
from pollama.store.resolved import model_details

router = APIRouter()
# What Ollama reports for a model kept loaded forever.
_FOREVER = datetime(2318, 1, 1, tzinfo=UTC)


@router.get("/", response_class=PlainTextResponse)
@router.head("/", response_class=PlainTextResponse)
async def root() -> str:
    return "Ollama is running"


@router.get("/api/version")
async def version() -> VersionResponse:
    return VersionResponse(version=__version__)


@router.get("/api/tags")
async def tags(request: Request) -> ListResponse:
    store = request.app.state.pollama.store
    models = [
        ListModel(
            name=entry.name.display,
            model=entry.name.display,
            modified_at=rfc3339(entry.modified_at),
            size=entry.size,
            digest=entry.digest,
            details=ModelDetails.model_validate(model_details(entry.config)),
        )
        for entry in store.list_models()
    ]
    return ListResponse(models=models)


@router.get("/api/ps")
async def ps(request: Request) -> ProcessResponse:
    scheduler = request.app.state.pollama.scheduler
    return ProcessResponse(
        models=[
            RunningModel(
                name=row.name,
                model=row.name,
                size=row.size,
                digest=row.digest,
                details=ModelDetails.model_validate(dict(row.details)),
                expires_at=rfc3339(row.expires_at or _FOREVER),
                size_vram=row.size_vram,
                context_length=row.context_length,
            )
            for row in scheduler.running()
        ],
        loading=[
            LoadingModel(name=name, progress=progress)
            for name, progress in scheduler.loading().items()
        ],
    )
