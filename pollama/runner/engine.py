"""The runner's engine: one model, one llama.cpp context, one thread that owns both.

HTTP handlers never touch llama.cpp. They hand work to the engine thread —
completions as ``Request`` objects, everything else as callables — and get
results back through thread-safe callbacks and futures (the shape of
mlx-lm's server: llama.cpp contexts are not thread-safe).

``Engine`` is the thread and its state; the work lives beside it: ``model``
(open, measure, allocate, warm up, free), ``slots`` (admission and prefix
sharing), ``step`` (the decode step: continuous batching), ``sampling`` and
``thinking`` (each sampled token), ``embedding``, ``rerank``; ``state`` holds what they share.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from pollama.ggufmeta import GGUFModel, read_model
from pollama.memory.estimate import estimate_memory
from pollama.memory.layout import place
from pollama.memory.types import BackendMemory
from pollama.options.load import LoadConfig
from pollama.protocol.wire import (
    EmbeddingResponse,
    Health,
    HealthStatus,
    LoadOperation,
    LoadRequest,
    LoadResponse,
    RerankResponse,
    RunnerStats,
)
from pollama.runner import llama
from pollama.runner.bindings import L
from pollama.runner.embedding import Embedder
from pollama.runner.model import (
    ModelLoader,
    adapter_headers,
    allocation_of,
    draft_header,
    gpus_of,
    load_config,
)
from pollama.runner.rerank import Reranker
from pollama.runner.slots import admit, fail_all
from pollama.runner.state import AllocationFailed, EngineError, Loaded, Request, Slot
from pollama.runner.step import StepStats, step
from pollama.runner.vision import Vision

log = logging.getLogger(__name__)
T = TypeVar("T")

_NOTHING: Any = object()


@dataclass(frozen=True)
class StepHooks:
    before: Callable[[], None] = lambda: None
    after: Callable[[], None] = lambda: None


class Engine:
    """Owns the model. Public methods are thread-safe; the ``_`` ones run on the engine thread
    (as do ``load``, ``tokenize``, ``detokenize``, ``embed`` and ``rerank``, through ``call``)."""

    def __init__(self, model_path: str, *, verbose: bool = False, test_crash: str = "") -> None:
        self.model_path = model_path
        self.gguf: GGUFModel = read_model(model_path)
        self._log = llama.LlamaLog(verbose)
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting: deque[Request] = deque()
        self._slots: list[Slot] = []
        self._loaded: Loaded | None = None
        self._loaded_with: LoadRequest | None = None
        self._embedder: Embedder | None = None
        self._projector: GGUFModel | None = None
        self._status = HealthStatus.LAUNCHED
        self._progress = 0.0
        self._error = ""
        self._stats = StepStats()
        self._progress_cb = L.llama_progress_callback(self._on_progress)
        self._loader = ModelLoader(
            model_path, self.gguf, self._log, progress=self._progress_cb, test_crash=test_crash
        )
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._hooks = StepHooks()
        L.llama_backend_init()

    # -- thread-safe API -------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=30)

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the engine thread, between two decode steps."""
        future: Future[T] = Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)

        self._inbox.put(run)
        return future

    def set_step_hooks(self, hooks: StepHooks) -> None:
        """Called on the engine thread around each decode step (from the next step on):
        the HTTP side holds what a step emits and sends it in one go (``outbox``)."""
        self._hooks = hooks

    def submit(self, request: Request) -> None:
        self._inbox.put(request)

    def health(self) -> Health:
        status = self._status
        if status is HealthStatus.READY and self._slots and all(s.busy for s in self._slots):
            status = HealthStatus.NO_SLOTS
        return Health(status, self._progress, self._error)

    def memory(self) -> BackendMemory | None:
        """What the loaded model's buffers measured when llama.cpp allocated them."""
        loaded = self._loaded
        return loaded.memory if loaded is not None else None

    def stats(self) -> RunnerStats:
        return self._stats.to_wire()

    # -- the engine thread -----------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                item = self._inbox.get(block=not self._has_work())
            except queue.Empty:
                item = _NOTHING
            while item is not _NOTHING:
                if item is None:
                    self._close()
                    return
                if isinstance(item, Request):
                    self._waiting.append(item)
                else:
                    item()
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = _NOTHING
            if self._has_work():
                self._hooks.before()
                try:
                    self._step()
                except Exception as exc:  # a failed decode fails its requests, not the runner
                    log.exception("decode step failed")
                    self._fail_all(EngineError(f"llama.cpp decode failed: {exc}"))
                finally:
                    self._hooks.after()

    def _has_work(self) -> bool:
        if self._loaded is None:
            return False
        return bool(self._waiting) or any(s.busy for s in self._slots)

    def _step(self) -> None:
        loaded = self._loaded
        if loaded is None:
            return
        ready = loaded if self._status is HealthStatus.READY else None
        generates = not self.gguf.is_embedding_model
        admit(
            self._waiting, self._slots, ready, self._log, generates=generates, now=self._stats.steps
        )
        step(loaded, self._slots, self._stats)

    def _fail_all(self, error: EngineError) -> None:
        fail_all(self._slots, self._waiting, self._loaded, error)

    # -- loading ---------------------------------------------------------------

    def load(self, request: LoadRequest) -> LoadResponse:
        """Runs on the engine thread (via ``call``)."""
        try:
            return self._load(request)
        except AllocationFailed as exc:
            self._close()
            self._error = str(exc)
            return LoadResponse(success=False, error=str(exc))
        except EngineError as exc:
            self._close()
            self._error = str(exc)
            raise

    def _load(self, request: LoadRequest) -> LoadResponse:
        if request.operation is LoadOperation.CLOSE:
            self._close()
            return LoadResponse(success=True)
        config = load_config(request)
        estimate = estimate_memory(
            self.gguf,
            config,
            gpus_of(request),
            projector=self._projector_header(request.projector),
            adapters=adapter_headers(request.lora),
            draft=draft_header(request.draft, config),
        )
        placed = place(estimate, request.layout)
        if request.operation is LoadOperation.FIT:
            return LoadResponse(success=True, memory=self._loader.fit(request, config, placed))
        if self._loaded is not None and self._loaded_with != allocation_of(request):
            self._close()  # a new layout or context size: allocate afresh
        if self._loaded is None:
            self._alloc(request, config, placed)
            self._loaded_with = allocation_of(request)
        assert self._loaded is not None
        if request.operation is LoadOperation.COMMIT:
            self._status = HealthStatus.READY
            self._progress = 1.0
        return LoadResponse(success=True, memory=self._loaded.memory)

    def _alloc(self, request: LoadRequest, config: LoadConfig, placed: BackendMemory) -> None:
        self._status, self._progress, self._error = HealthStatus.LOADING, 0.0, ""
        loaded = self._loader.alloc(request, config, placed)
        self._loaded = loaded
        if request.projector:  # on failure, load() closes what is here
            vision = Vision.open(
                request.projector, loaded.model, config, self._log, self._loader.projector_buffers()
            )
            memory = replace(loaded.memory, projector=vision.memory)
            loaded = self._loaded = replace(loaded, vision=vision, memory=memory)
        if request.draft and config.draft_max > 0:  # not loaded when nothing drafts
            loaded = self._loaded = self._loader.open_draft(loaded, request.draft, request)
        self._slots = [Slot(i) for i in range(config.parallel)]
        self._embedder = Embedder(loaded, self._log, embedding_model=self.gguf.is_embedding_model)
        self._loader.warm_up(loaded)  # on failure, load() closes what is here

    def _on_progress(self, progress: float, _user: Any) -> bool:
        self._progress = float(progress)
        return True

    def _close(self) -> None:
        self._fail_all(EngineError("model unloaded", status=503))
        loaded, self._loaded = self._loaded, None
        self._slots = []
        if self._embedder is not None:
            self._embedder.free()
            self._embedder = None
        if loaded is not None:
            if loaded.vision is not None:
                loaded.vision.free()
            self._loader.free(loaded)
        self._status, self._progress = HealthStatus.LAUNCHED, 0.0

    def _projector_header(self, path: str) -> GGUFModel | None:
        if not path:
            return None
        if self._projector is None or str(self._projector.path) != path:
            self._projector = read_model(path)
        return self._projector

    def _require_loaded(self) -> Loaded:
        if self._loaded is None or self._status is not HealthStatus.READY:
            raise EngineError("model not loaded", status=503)
        return self._loaded

    # -- tokens and embeddings (on the engine thread, via ``call``) ---------------

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return self._require_loaded().vocab.tokenize(text, add_special)

    def detokenize(self, tokens: list[int]) -> str:
        loaded = self._require_loaded()
        if any(not 0 <= t < loaded.vocab.size for t in tokens):
            raise EngineError("token id out of range for this vocabulary", status=400)
        return loaded.vocab.detokenize(tokens)

    def embed(self, texts: list[str], truncate: bool) -> EmbeddingResponse:
        """As many inputs per decode as fit (``embedding``)."""
        self._require_loaded()
        if self.gguf.is_reranker:
            # Its pooled output is a score, not a vector of n_embd floats.
            raise EngineError("this model is a reranker; it does not embed", status=400)
        assert self._embedder is not None
        return self._embedder.embed(texts, truncate)

    def rerank(self, query: str, documents: list[str]) -> RerankResponse:
        """One score per document, as many pairs per decode as fit (``rerank``)."""
        loaded = self._require_loaded()
        if not self.gguf.is_reranker:
            raise EngineError("this model does not support reranking", status=400)
        return Reranker(loaded, self._log).rerank(query, documents)
