"""What every route needs: the settings, the model store, the scheduler and the metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pollama.api.auth import KeyRing
from pollama.api.metrics import Metrics
from pollama.chat.capabilities import is_vision_projector
from pollama.demo import DEMO_MODEL_NAME
from pollama.errors import InvalidModelFile, ModelNotFound
from pollama.ggufmeta import GGUFModel, read_model
from pollama.scheduler.loaded import ModelSpec
from pollama.scheduler.scheduler import Scheduler
from pollama.settings import Settings
from pollama.store.disk import Store, demo_missing, ensure_demo
from pollama.store.lock import to_thread_to_the_end
from pollama.store.names import ModelName
from pollama.store.resolved import ResolvedModel, model_details

log = logging.getLogger(__name__)


@dataclass
class ServerState:
    settings: Settings
    store: Store
    scheduler: Scheduler
    metrics: Metrics = field(default_factory=Metrics)
    keys: KeyRing | None = None
    """The API keys in force (None: from the settings, when the app is made)."""

    async def model(self, name: str) -> tuple[ModelSpec, ResolvedModel]:
        """The stored model a request names, as the scheduler and prompt code need it.

        The bundled demo model is imported into the store the first time it is named.
        """
        if not name:
            raise ModelNotFound("")
        parsed = ModelName.parse(name)
        if parsed.model.lower() == DEMO_MODEL_NAME and parsed.tag == "latest":
            await self._ensure_demo()
        resolved = await asyncio.to_thread(self.store.resolve, name)
        gguf = header(str(resolved.model_path))
        spec = ModelSpec(
            name=resolved.name.display,
            model=gguf,
            digest=resolved.digest,
            parameters=dict(resolved.parameters),
            adapters=tuple(str(p) for p in resolved.adapter_paths),
            projector=await asyncio.to_thread(vision_projector, resolved.projector_paths),
            draft=str(resolved.draft_path) if resolved.draft_path is not None else "",
            details=model_details(resolved.config),
        )
        return spec, resolved

    async def _ensure_demo(self) -> None:
        """Import the demo model if no process sharing the store has: a write, under the
        store's lock (looked for again once held: another server may have imported it)."""
        if not await asyncio.to_thread(demo_missing, self.store):
            return
        async with self.store.lock.held():
            await to_thread_to_the_end(ensure_demo, self.store)


def vision_projector(paths: Sequence[Path]) -> str:
    """The model's projector when the runner can read images with it, else "": a projector
    layer that is no vision projector leaves the model text-only (it claims no vision, and
    images sent to it are refused by name) rather than failing every load."""
    if not paths:
        return ""
    try:
        projector = header(str(paths[0]))
    except InvalidModelFile as exc:
        log.warning("projector unreadable, model is text-only: path=%s reason=%s", paths[0], exc)
        return ""
    return str(paths[0]) if is_vision_projector(projector.metadata) else ""


@lru_cache(maxsize=64)
def header(path: str) -> GGUFModel:
    # Blobs are content-addressed: a path always holds the same bytes.
    return read_model(path)
