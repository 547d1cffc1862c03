"""The model's life in llama.cpp: measure it (fit), allocate it, warm it up, free it.

All of it runs on the engine thread. Every NULL llama.cpp returns while opening is
turned into an ``EngineError`` carrying llama.cpp's first specific error line; which
kind of error says whether the server's load loop may retry (``AllocationFailed``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

from pollama.devices.types import DeviceInfo
from pollama.errors import InvalidModelFile
from pollama.ggufmeta import GGUFModel, read_model
from pollama.memory.types import BackendMemory
from pollama.options.load import FlashAttention, LoadConfig
from pollama.protocol.wire import LoadOperation, LoadRequest
from pollama.runner import llama
from pollama.runner.bindings import L
from pollama.runner.buffers import BufferSizes, ProjectorBuffers, visible_devices
from pollama.runner.crash_hook import crash_if_asked
from pollama.runner.draft_model import DraftModel
from pollama.runner.embedding import EMBED_MAX_SEQS
from pollama.runner.lora import Adapters
from pollama.runner.measure import measured_memory
from pollama.runner.state import AllocationFailed, EngineError, Loaded

log = logging.getLogger(__name__)


class ModelLoader:
    """Opens one model file in llama.cpp as load requests describe, and frees it again.

    ``gguf`` is the file as ``read_model`` parsed it when the runner started: that the
    file is a readable GGUF is known before any load, which the failure rule relies on.
    """

    def __init__(
        self,
        model_path: str,
        gguf: GGUFModel,
        log: llama.LlamaLog,
        *,
        progress: Any,
        test_crash: str = "",
    ) -> None:
        self._model_path = model_path
        self._gguf = gguf
        self._log = log
        self._progress = progress
        """llama.cpp's progress callback (kept referenced by its owner)."""
        self._test_crash = test_crash
        self._device_map = visible_devices(os.environ)

    def fit(self, request: LoadRequest, config: LoadConfig, placed: BackendMemory) -> BackendMemory:
        """Weights and KV from the exact arithmetic; the graph from a no-alloc dry run."""
        model, ctx, _, buffers = self._open(request, config, dry_run=True)
        L.llama_free(ctx)
        L.llama_model_free(model)
        return measured_memory(placed, buffers, graph_only=True)

    def alloc(self, request: LoadRequest, config: LoadConfig, placed: BackendMemory) -> Loaded:
        """The model and its context allocated, measured, and given a threadpool."""
        model, ctx, adapters, buffers = self._open(request, config, dry_run=False)
        if adapters:
            adapters.use(ctx, adapters.defaults)  # the warm-up decodes with them
        memory = measured_memory(placed, buffers, graph_only=False)
        # Without it llama.cpp's workers spin between steps, holding the cores the
        # server needs to stream each token (docs/benchmarks.md has the figures).
        threadpool = llama.Threadpool.create(config.num_threads)
        if threadpool is not None:
            threadpool.attach(ctx)
        return Loaded(
            model=model,
            ctx=ctx,
            vocab=llama.Vocab(model),
            batch=llama.Batch(config.batch_size),
            config=config,
            memory=memory,
            threadpool=threadpool,
            adapters=adapters,
            shares_prefixes=(
                config.parallel > 1
                and not L.llama_model_is_recurrent(model)
                and not L.llama_model_is_hybrid(model)
                and L.llama_model_n_swa(model) == 0
            ),
        )

    def open_draft(self, loaded: Loaded, path: str, request: LoadRequest) -> Loaded:
        """``loaded`` with its draft model, on the CPU, sharing the model's threads. Its
        memory is the estimate's (``placed.draft``: exact weights and KV), since its
        buffers cannot be told apart from the model's in llama.cpp's log."""
        drafter = DraftModel.open(
            path,
            loaded.config,
            self._log,
            target_vocab=loaded.vocab.size,
            extra_buffers=request.extra_buffers.on,
        )
        if loaded.threadpool is not None:
            loaded.threadpool.attach(drafter.ctx)
        return replace(loaded, drafter=drafter)

    def projector_buffers(self) -> ProjectorBuffers:
        """A collector for what mtmd logs while it loads a projector."""
        return ProjectorBuffers(device_map=self._device_map)

    def warm_up(self, loaded: Loaded) -> None:
        """Decode two tokens once, now, and forget them.

        A kernel this CPU cannot run (an AMX tile instruction a VM traps) kills the
        process on its first matrix product; here that happens while the server
        still waits for /load, so it can load again on the plain path, instead of
        in the middle of somebody's request. Two rows, because AMX runs its tiles
        only for batches of more than one; the one logits row covers the single-row
        kernels. llama-server warms up the same way.
        """
        crash_if_asked(self._test_crash, "runner", extra_buffers=loaded.config.extra_buffers.on)
        vocab = loaded.vocab
        tokens = [t if 0 <= t < vocab.size else 0 for t in (vocab.bos, vocab.eos)]
        batch = loaded.batch
        batch.clear()
        for pos, token in enumerate(tokens[: batch.capacity]):
            batch.add(token, pos, 0, logits=pos == min(len(tokens), batch.capacity) - 1)
        status = batch.decode(loaded.ctx)
        batch.clear()
        L.llama_memory_seq_rm(L.llama_get_memory(loaded.ctx), 0, -1, -1)
        if status != 0:
            raise EngineError(f"llama.cpp could not decode the warm-up batch (status {status})")

    @staticmethod
    def free(loaded: Loaded) -> None:
        if loaded.drafter is not None:  # before the threads it shares with the model
            if loaded.threadpool is not None:
                loaded.threadpool.detach(loaded.drafter.ctx)
            loaded.drafter.free()
        loaded.batch.free()
        if loaded.threadpool is not None:
            loaded.threadpool.free(loaded.ctx)
        L.llama_free(loaded.ctx)
        loaded.adapters.free()
        L.llama_model_free(loaded.model)

    def _open(
        self, request: LoadRequest, config: LoadConfig, *, dry_run: bool
    ) -> tuple[Any, Any, Adapters, BufferSizes]:
        """Model, LoRA adapters (none in a dry run: they need the weights) and context as
        the request describes them, with the buffer sizes llama.cpp logged while making
        them; nothing stays allocated on failure."""
        buffers = BufferSizes(device_map=self._device_map)
        self._log.begin()
        self._log.collector = buffers
        model = ctx = None
        adapters = Adapters()
        try:
            params = llama.model_params(
                gpu_layers=request.layout.count,
                main_gpu=request.main_gpu,
                use_mmap=request.use_mmap and not dry_run,
                dry_run=dry_run,
                extra_buffers=request.extra_buffers.on,
                progress=None if dry_run else self._progress,
            )
            model = L.llama_model_load_from_file(self._model_path.encode(), params)
            if not model:
                raise self._open_failed(request)
            if request.lora and not dry_run:
                on_gpu = request.layout.count > 0
                adapters = Adapters.load(model, request.lora, self._log, on_gpu=on_gpu)
            ctx = L.llama_init_from_model(model, self._context_params(config))
            if not ctx:
                raise self._context_failed()
            return model, ctx, adapters, buffers
        except BaseException:
            if ctx:
                L.llama_free(ctx)
            adapters.free()
            if model:
                L.llama_model_free(model)
            raise
        finally:
            self._log.collector = None

    # Load failures are classified by where llama.cpp returned NULL, not by the words
    # of its log. Creating the context allocates the KV cache and the compute buffers:
    # a NULL there is a lack of memory, so it is retryable. Opening the model allocates
    # too, but only for the layers placed on a GPU (the rest is mapped): so a NULL from
    # it counts as a lack of memory only when the request placed layers on a GPU and the
    # file is a readable GGUF, which it is here by construction (``read_model`` parsed
    # it before the loader existed). Without GPU layers the file or its architecture is
    # at fault, and no retry fixes that. (A file that cannot load at all but is asked
    # for with GPU layers costs the server's load loop its back-off steps; it then fails
    # with this message as the detail.)

    def _open_failed(self, request: LoadRequest) -> EngineError:
        message = self._log.explain("unable to load model")
        gpu_layers = request.layout.count
        log.debug("model open failed: gpu_layers=%d reason=%s", gpu_layers, self._log.reason())
        if gpu_layers > 0:
            return AllocationFailed(message)
        return EngineError(message)

    def _context_failed(self) -> AllocationFailed:
        message = self._log.explain("unable to create context")
        log.debug("context creation failed: reason=%s", self._log.reason())
        return AllocationFailed(message)

    def _context_params(self, config: LoadConfig) -> Any:
        embedding = self._gguf.is_embedding_model
        return llama.context_params(
            n_ctx=config.kv_size,
            n_seq=config.parallel if not embedding else EMBED_MAX_SEQS,
            n_batch=config.batch_size,
            outputs_per_seq=1 + config.draft_max,
            threads=config.num_threads,
            flash_attention=config.flash_attention.value,
            kv_cache_type=config.kv_cache_type,
            embeddings=embedding,
            # Explicit, not the model's default: a reranker's pooled output is its score.
            pooling=L.LLAMA_POOLING_TYPE_RANK if self._gguf.is_reranker else None,
            unified=embedding,
        )


def load_config(request: LoadRequest) -> LoadConfig:
    """The memory model's view of a load request."""
    return LoadConfig(
        num_ctx=request.num_ctx,
        parallel=request.parallel,
        batch_size=request.batch_size,
        num_threads=request.num_threads or 1,
        flash_attention=FlashAttention(request.flash_attention),
        kv_cache_type=request.kv_cache_type,
        use_mmap=request.use_mmap,
        num_gpu=request.layout.count,
        main_gpu=request.main_gpu,
        extra_buffers=request.extra_buffers,
        draft_max=request.draft_max,
    )


def allocation_of(request: LoadRequest) -> LoadRequest:
    """The request without its operation: two loads with equal ones share an allocation."""
    return replace(request, operation=LoadOperation.FIT)


def gpus_of(request: LoadRequest) -> list[DeviceInfo]:
    """Placeholder device records for the layout's GPUs: the estimate needs only their ids."""
    return [DeviceInfo(g.device, str(g.device), 0, 0) for g in request.layout.gpus]


def draft_header(path: str, config: LoadConfig) -> GGUFModel | None:
    """The draft model's GGUF header, when the load drafts with it (``draft_max`` > 0)."""
    if not path or config.draft_max <= 0:
        return None
    try:
        return read_model(path)
    except InvalidModelFile as exc:
        raise EngineError(f"draft model: {exc}", status=400) from None


def adapter_headers(paths: tuple[str, ...]) -> tuple[GGUFModel, ...]:
    """The LoRA adapters' GGUF headers, for the estimate that shapes the measured figures."""
    try:
        return tuple(read_model(path) for path in paths)
    except InvalidModelFile as exc:
        raise EngineError(f"LoRA adapter: {exc}", status=400) from None
