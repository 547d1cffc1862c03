"""What every route needs: the settings, the model store, the scheduler and the metrics."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import lru_cache

from pollama.api.auth import KeyRing
from pollama.api.metrics import Metrics
from pollama.demo import DEMO_MODEL_NAME
from pollama.errors import ModelNotFound
from pollama.ggufmeta import GGUFModel, read_model
from pollama.scheduler.loaded import ModelSpec
from pollama.scheduler.scheduler import Scheduler
from pollama.settings import Settings
from pollama.store.disk import Store, ensure_demo
from pollama.store.names import ModelName
from pollama.store.resolved import ResolvedModel, model_details


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
            await asyncio.to_thread(ensure_demo, self.store)
        resolved = await asyncio.to_thread(self.store.resolve, name)
        gguf = _header(str(resolved.model_path))
        spec = ModelSpec(
            name=resolved.name.display,
            model=gguf,
            digest=resolved.digest,
            parameters=dict(resolved.parameters),
            adapters=tuple(str(p) for p in resolved.adapter_paths),
            projector=str(resolved.projector_paths[0]) if resolved.projector_paths else "",
            details=model_details(resolved.config),
        )
        return spec, resolved


@lru_cache(maxsize=64)
def _header(path: str) -> GGUFModel:
    # Blobs are content-addressed: a path always holds the same bytes.
    return read_model(path)
