"""The runner's engine: one model, one llama.cpp context, one thread that owns both.

HTTP handlers never touch llama.cpp. They hand work to the engine thread —
completions as ``Request`` objects, everything else as callables — and get
results back through thread-safe callbacks and futures (the shape of
mlx-lm's server: llama.cpp contexts are not thread-safe).

Continuous batching: each step builds one batch from every active slot — one
token for each generating slot first, then prompt chunks up to ``num_batch``
— calls ``llama_decode`` once, and samples every slot that asked for logits
with that slot's own native sampler chain. Requests join and leave between
steps; a cancelled request frees its slot at the next step.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import llama_cpp as L
import numpy as np

from pollama.devices.types import DeviceInfo
from pollama.errors import PollamaError
from pollama.ggufmeta import GGUFModel, read_model
from pollama.memory.estimate import estimate_memory
from pollama.memory.layout import place
from pollama.memory.types import BackendMemory
from pollama.options.load import FlashAttention, LoadConfig
from pollama.protocol.wire import (
    CompletionChunk,
    CompletionDone,
    CompletionRequest,
    EmbeddingResponse,
    Health,
    HealthStatus,
    LoadOperation,
    LoadRequest,
    LoadResponse,
    Logprob,
    RunnerStats,
    SamplingOptions,
    TokenLogprob,
)
from pollama.runner import llama
from pollama.runner.buffers import BufferSizes, visible_devices
from pollama.runner.crash_hook import crash_if_asked
from pollama.runner.measure import measured_memory
from pollama.runner.text import StreamedText

log = logging.getLogger(__name__)
T = TypeVar("T")

# Inputs packed into one embedding decode at most (llama.cpp caps sequences per context).
_EMBED_MAX_SEQS = 64
# A prompt takes its prefix from another sequence's cache only when that saves at
# least this many tokens: llama.cpp copies a sequence's KV stream whole.
_MIN_SHARED_PREFIX = 32
_NOTHING: Any = object()


class EngineError(PollamaError):
    """A request the engine refuses or cannot serve; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class AllocationFailed(EngineError):
    """llama.cpp could not allocate a buffer: the load loop may back off and retry.

    Any other load failure (an unknown architecture, a damaged file) is final and
    answered as an HTTP error, so the server does not retry what cannot work.
    """


_MEMORY_WORDS = ("alloc", "out of memory", "oom", "memory")


Emit = Callable[[CompletionChunk | CompletionDone | EngineError], None]


@dataclass(eq=False)
class Request:
    """One completion inside the engine; ``emit`` must be safe to call from any thread."""

    body: CompletionRequest
    emit: Emit
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] | None = None
    """The prompt as the engine will evaluate it, once tokenized."""


@dataclass(eq=False)
class Slot:
    """One sequence of the context (seq id = index) and what its KV cache holds."""

    index: int
    cache: list[int] = field(default_factory=list)
    """Tokens whose KV is in the cache for this sequence, in position order."""
    last_used: int = 0
    request: Request | None = None
    sampler: llama.SlotSampler | None = None
    think_end: bytes = b""
    """While set, the reply is inside a thinking block that these bytes close; a
    grammar waits for them."""
    think_left: int = -1
    """Thinking tokens left before the runner closes the block itself (-1: no limit)."""
    think_tail: bytes = b""
    pending: list[int] = field(default_factory=list)
    """Prompt tokens still to evaluate."""
    next_token: int | None = None
    """The last sampled token, fed in the next step."""
    text: StreamedText | None = None
    num_predict: int = -1
    prompt_tokens: int = 0
    prompt_cached: int = 0
    generated: int = 0
    prompt_ns: int = 0
    eval_ns: int = 0
    batch_index: int = -1
    logprobs: list[Logprob] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return self.request is not None


@dataclass
class _Loaded:
    model: Any
    ctx: Any
    vocab: llama.Vocab
    batch: llama.Batch
    config: LoadConfig
    memory: BackendMemory
    embed_ctx: Any = None
    threadpool: llama.Threadpool | None = None
    shares_prefixes: bool = False
    """Whether a sequence may start from a copy of another's cache: not for recurrent
    state (it cannot be cut back to a prefix) nor sliding-window caches (which drop
    what a later prompt would need)."""


class Engine:
    """Owns the model. Public methods are thread-safe; the ``_`` ones run on the engine thread."""

    def __init__(self, model_path: str, *, verbose: bool = False, test_crash: str = "") -> None:
        self.model_path = model_path
        self._test_crash = test_crash
        self.gguf: GGUFModel = read_model(model_path)
        self._log = llama.LlamaLog(verbose)
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting: deque[Request] = deque()
        self._slots: list[Slot] = []
        self._loaded: _Loaded | None = None
        self._loaded_with: LoadRequest | None = None
        self._status = HealthStatus.LAUNCHED
        self._progress = 0.0
        self._error = ""
        self._step_count = 0
        self._tokens_decoded = 0
        self._seqs_per_step: Counter[int] = Counter()
        self._progress_cb = L.llama_progress_callback(self._on_progress)
        self._device_map = visible_devices(os.environ)
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
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
        counts = dict(self._seqs_per_step)
        return RunnerStats(
            decode_steps=self._step_count,
            tokens_decoded=self._tokens_decoded,
            max_sequences_per_step=max(counts, default=0),
            sequences_per_step=counts,
        )

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
                try:
                    self._step()
                except Exception as exc:  # a failed decode fails its requests, not the runner
                    log.exception("decode step failed")
                    self._fail_all(EngineError(f"llama.cpp decode failed: {exc}"))

    def _has_work(self) -> bool:
        if self._loaded is None:
            return False
        return bool(self._waiting) or any(s.busy for s in self._slots)

    # -- loading ---------------------------------------------------------------

    def load(self, request: LoadRequest) -> LoadResponse:
        """Runs on the engine thread (via ``call``)."""
        try:
            if request.operation is LoadOperation.CLOSE:
                self._close()
                return LoadResponse(success=True)
            config = _config(request)
            placed = place(estimate_memory(self.gguf, config, _gpus_of(request)), request.layout)
            if request.operation is LoadOperation.FIT:
                return LoadResponse(success=True, memory=self._fit(request, config, placed))
            if self._loaded is not None and self._loaded_with != _without_operation(request):
                self._close()  # a new layout or context size: allocate afresh
            if self._loaded is None:
                self._alloc(request, config, placed)
                self._loaded_with = _without_operation(request)
            assert self._loaded is not None
            if request.operation is LoadOperation.COMMIT:
                self._status = HealthStatus.READY
                self._progress = 1.0
            return LoadResponse(success=True, memory=self._loaded.memory)
        except AllocationFailed as exc:
            self._close()
            self._error = str(exc)
            return LoadResponse(success=False, error=str(exc))
        except EngineError as exc:
            self._close()
            self._error = str(exc)
            raise

    def _fit(
        self, request: LoadRequest, config: LoadConfig, placed: BackendMemory
    ) -> BackendMemory:
        """Weights and KV from the exact arithmetic; the graph from a no-alloc dry run."""
        model, ctx, buffers = self._open(request, config, dry_run=True)
        L.llama_free(ctx)
        L.llama_model_free(model)
        return measured_memory(placed, buffers, graph_only=True)

    def _alloc(self, request: LoadRequest, config: LoadConfig, placed: BackendMemory) -> None:
        self._status, self._progress, self._error = HealthStatus.LOADING, 0.0, ""
        model, ctx, buffers = self._open(request, config, dry_run=False)
        memory = measured_memory(placed, buffers, graph_only=False)
        vocab = llama.Vocab(model)
        self._loaded = _Loaded(model, ctx, vocab, llama.Batch(config.batch_size), config, memory)
        self._loaded.shares_prefixes = (
            config.parallel > 1
            and not L.llama_model_is_recurrent(model)
            and not L.llama_model_is_hybrid(model)
            and L.llama_model_n_swa(model) == 0
        )
        # Without it llama.cpp's workers spin between steps, holding the cores the
        # server needs to stream each token (docs/benchmarks.md has the figures).
        self._loaded.threadpool = llama.Threadpool.create(config.num_threads)
        if self._loaded.threadpool is not None:
            self._loaded.threadpool.attach(ctx)
        self._slots = [Slot(i) for i in range(config.parallel)]
        self._warm_up(self._loaded)

    def _warm_up(self, loaded: _Loaded) -> None:
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

    def _open(
        self, request: LoadRequest, config: LoadConfig, *, dry_run: bool
    ) -> tuple[Any, Any, BufferSizes]:
        """Model and context as the request describes them, with the buffer sizes
        llama.cpp logged while making them; nothing stays allocated on failure."""
        buffers = BufferSizes(device_map=self._device_map)
        self._log.begin()
        self._log.collector = buffers
        model = ctx = None
        try:
            params = llama.model_params(
                gpu_layers=request.layout.count,
                main_gpu=request.main_gpu,
                use_mmap=request.use_mmap and not dry_run,
                dry_run=dry_run,
                extra_buffers=request.extra_buffers.on,
                progress=None if dry_run else self._progress_cb,
            )
            model = L.llama_model_load_from_file(self.model_path.encode(), params)
            if not model:
                raise self._load_failed("unable to load model")
            ctx = L.llama_init_from_model(model, self._context_params(config))
            if not ctx:
                raise self._load_failed("unable to create context")
            return model, ctx, buffers
        except BaseException:
            if ctx:
                L.llama_free(ctx)
            if model:
                L.llama_model_free(model)
            raise
        finally:
            self._log.collector = None

    def _context_params(self, config: LoadConfig) -> Any:
        embedding = self.gguf.is_embedding_model
        return llama.context_params(
            n_ctx=config.kv_size,
            n_seq=config.parallel if not embedding else _EMBED_MAX_SEQS,
            n_batch=config.batch_size,
            threads=config.num_threads,
            flash_attention=config.flash_attention.value,
            kv_cache_type=config.kv_cache_type,
            embeddings=embedding,
            unified=embedding,
        )

    def _why(self, what: str) -> str:
        detail = self._log.reason()
        return f"{what}: {detail}" if detail else what

    def _load_failed(self, what: str) -> EngineError:
        """The error for a NULL from llama.cpp: allocation failures may be retried."""
        message = self._why(what)
        if any(word in self._log.reason().lower() for word in _MEMORY_WORDS):
            return AllocationFailed(message)
        return EngineError(message)

    def _on_progress(self, progress: float, _user: Any) -> bool:
        self._progress = float(progress)
        return True

    def _close(self) -> None:
        self._fail_all(EngineError("model unloaded", status=503))
        loaded, self._loaded = self._loaded, None
        for slot in self._slots:
            if slot.sampler:
                slot.sampler.free()
        self._slots = []
        if loaded is not None:
            loaded.batch.free()
            if loaded.embed_ctx:
                L.llama_free(loaded.embed_ctx)
            if loaded.threadpool is not None:
                loaded.threadpool.free(loaded.ctx)
            L.llama_free(loaded.ctx)
            L.llama_model_free(loaded.model)
        self._status, self._progress = HealthStatus.LAUNCHED, 0.0

    def _require_loaded(self) -> _Loaded:
        if self._loaded is None or self._status is not HealthStatus.READY:
            raise EngineError("model not loaded", status=503)
        return self._loaded

    # -- tokens ----------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return self._require_loaded().vocab.tokenize(text, add_special)

    def detokenize(self, tokens: list[int]) -> str:
        loaded = self._require_loaded()
        if any(not 0 <= t < loaded.vocab.size for t in tokens):
            raise EngineError("token id out of range for this vocabulary", status=400)
        return loaded.vocab.detokenize(tokens)

    # -- completions: admission ------------------------------------------------

    def _admit(self) -> None:
        while self._waiting:
            request = self._waiting[0]
            if request.cancelled.is_set():
                self._waiting.popleft()
                continue
            free = [s for s in self._slots if not s.busy]
            if not free:
                return
            try:
                if request.tokens is None:
                    request.tokens = self._prompt_tokens(request.body)
            except EngineError as exc:
                self._waiting.popleft()
                request.emit(exc)
                continue
            if self._prefix_in_flight(request.tokens):
                return  # another sequence evaluates it in this step: share it next step
            self._waiting.popleft()
            try:
                self._start(request, request.tokens, free)
            except EngineError as exc:
                request.emit(exc)

    def _prompt_tokens(self, body: CompletionRequest) -> list[int]:
        """The prompt's tokens, checked, and truncated to the context if asked to."""
        loaded = self._require_loaded()
        if self.gguf.is_embedding_model:
            raise EngineError("this model does not support generation", status=400)
        tokens = (
            list(body.tokens)
            if body.tokens is not None
            else loaded.vocab.tokenize(body.prompt, add_special=True)
        )
        if body.tokens is not None and any(not 0 <= t < loaded.vocab.size for t in tokens):
            raise EngineError("token id out of range for this vocabulary", status=400)
        if not tokens:
            raise EngineError("empty prompt", status=400)
        n_ctx = loaded.config.num_ctx
        opts = body.options
        if len(tokens) > n_ctx:
            if not body.truncate:
                raise EngineError(
                    f"the input length ({len(tokens)} tokens) exceeds the context length "
                    f"({n_ctx} tokens)",
                    status=400,
                )
            keep = min(max(opts.num_keep, 0), n_ctx - 1)
            tokens = tokens[:keep] + tokens[len(tokens) - (n_ctx - keep) :]
        return tokens

    def _prefix_in_flight(self, tokens: list[int]) -> bool:
        """Whether a prompt still being evaluated for another request holds a prefix of
        ``tokens`` worth sharing (identical system prompts arriving together): waiting
        one step for it to be in the cache beats evaluating it twice."""
        loaded = self._loaded
        if loaded is None or not loaded.shares_prefixes:
            return False
        cached = max(_common_prefix(s.cache, tokens) for s in self._slots)
        for slot in self._slots:
            if slot.busy and slot.pending and _common_prefix(slot.cache, tokens) == len(slot.cache):
                coming = len(slot.cache) + _common_prefix(slot.pending, tokens[len(slot.cache) :])
                if coming - cached >= _MIN_SHARED_PREFIX:
                    return True
        return False

    def _donor(self, slot: Slot, tokens: list[int], reuse: int) -> tuple[Slot, int] | None:
        """Another sequence whose cache holds a longer prefix of ``tokens`` than
        ``slot``'s own, by enough to be worth copying: it, and the prefix's length."""
        best: tuple[Slot, int] | None = None
        best_len = reuse + _MIN_SHARED_PREFIX - 1
        for other in self._slots:
            if other is not slot:
                shared = _common_prefix(other.cache, tokens)
                if shared > best_len:
                    best, best_len = (other, shared), shared
        return best

    def _start(self, request: Request, tokens: list[int], free: list[Slot]) -> None:
        loaded = self._require_loaded()
        body = request.body
        opts = body.options
        n_ctx = loaded.config.num_ctx
        slot = max(free, key=lambda s: (_common_prefix(s.cache, tokens), -s.last_used))
        reuse = _common_prefix(slot.cache, tokens)
        mem = L.llama_get_memory(loaded.ctx)
        donor = self._donor(slot, tokens, reuse) if loaded.shares_prefixes else None
        if donor is not None:
            # Sequences live in streams of their own, so this copies the donor's stream
            # (at the next decode); the tail past the shared prefix is dropped below.
            lender, reuse = donor
            L.llama_memory_seq_rm(mem, slot.index, -1, -1)
            L.llama_memory_seq_cp(mem, lender.index, slot.index, -1, -1)
            slot.cache = lender.cache[:reuse]
        if reuse == len(tokens):
            reuse -= 1  # the last prompt token must be evaluated to get logits
        if not L.llama_memory_seq_rm(mem, slot.index, reuse, -1):
            # Recurrent caches cannot drop a tail; start the sequence afresh.
            L.llama_memory_seq_rm(mem, slot.index, -1, -1)
            reuse = 0
        del slot.cache[reuse:]

        if slot.sampler:
            slot.sampler.free()
        slot.sampler = None  # a failing _sampler must not leave a freed one behind
        slot.sampler = self._sampler(loaded, opts, body, tokens)
        slot.think_end = body.think_end.encode("utf-8")
        slot.think_left = body.think_budget if body.think_end else -1
        slot.think_tail = b""
        slot.request = request
        slot.pending = tokens[reuse:]
        slot.next_token = None
        slot.text = StreamedText(opts.stop)
        limit = 10 * n_ctx
        slot.num_predict = limit if opts.num_predict < 0 else min(opts.num_predict, limit)
        slot.prompt_tokens = len(slot.pending)
        slot.prompt_cached = reuse
        slot.generated = slot.prompt_ns = slot.eval_ns = 0
        slot.logprobs = []
        slot.last_used = self._step_count
        if slot.num_predict == 0:
            self._finish(slot, "length")

    def _sampler(
        self, loaded: _Loaded, opts: SamplingOptions, body: CompletionRequest, prompt: list[int]
    ) -> llama.SlotSampler:
        self._log.begin()
        try:
            return llama.SlotSampler(
                loaded.vocab,
                opts,
                prompt,
                loaded.config.num_ctx,
                grammar=body.grammar,
                armed=not body.think_end,
            )
        except ValueError:
            raise EngineError(self._why("invalid grammar"), status=400) from None

    # -- completions: the decode step ------------------------------------------

    def _step(self) -> None:
        self._admit()
        loaded = self._loaded
        if loaded is None:
            return
        for slot in self._slots:
            if slot.request is not None and slot.request.cancelled.is_set():
                self._release(slot)
        batch = loaded.batch
        batch.clear()
        budget = batch.capacity
        in_batch: list[Slot] = []
        # Generating slots first: one token each keeps every stream moving.
        for slot in self._slots:
            if slot.busy and slot.next_token is not None and budget > 0:
                if not self._make_room(loaded, slot, 1):
                    continue
                slot.batch_index = batch.add(slot.next_token, len(slot.cache), slot.index, True)
                slot.cache.append(slot.next_token)
                slot.next_token = None
                budget -= 1
                in_batch.append(slot)
        for slot in self._slots:
            if not slot.busy or not slot.pending or budget <= 0:
                continue
            chunk = slot.pending[:budget]
            del slot.pending[: len(chunk)]
            last = not slot.pending
            for i, token in enumerate(chunk):
                wants_logits = last and i == len(chunk) - 1
                index = batch.add(token, len(slot.cache), slot.index, wants_logits)
                slot.cache.append(token)
            slot.batch_index = index if last else -1
            budget -= len(chunk)
            in_batch.append(slot)
        if not in_batch:
            return

        started = time.perf_counter_ns()
        status = batch.decode(loaded.ctx)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        self._step_count += 1
        self._tokens_decoded += batch.n
        self._seqs_per_step[len(in_batch)] += 1
        prompt_phase = [slot.generated == 0 for slot in in_batch]
        for slot in in_batch:
            if slot.batch_index >= 0:
                self._sample(loaded, slot)
        elapsed = time.perf_counter_ns() - started
        for slot, prompt in zip(in_batch, prompt_phase, strict=True):
            # The step that samples a request's first token still counts as prompt work.
            if prompt:
                slot.prompt_ns += elapsed
            else:
                slot.eval_ns += elapsed
            slot.last_used = self._step_count

    def _make_room(self, loaded: _Loaded, slot: Slot, needed: int) -> bool:
        """Context shift when a generating sequence reaches num_ctx; False if it ended."""
        n_ctx = loaded.config.num_ctx
        if len(slot.cache) + needed <= n_ctx:
            return True
        request = slot.request
        assert request is not None
        mem = L.llama_get_memory(loaded.ctx)
        if not request.body.shift or not L.llama_memory_can_shift(mem):
            self._finish(slot, "length")
            return False
        n_past = len(slot.cache)
        keep = min(max(request.body.options.num_keep, 0), n_past - 1)
        discard = (n_past - keep) // 2
        L.llama_memory_seq_rm(mem, slot.index, keep, keep + discard)
        L.llama_memory_seq_add(mem, slot.index, keep + discard, n_past, -discard)
        del slot.cache[keep : keep + discard]
        return True

    def _sample(self, loaded: _Loaded, slot: Slot) -> None:
        request = slot.request
        assert request is not None and slot.text is not None
        assert slot.sampler is not None
        token = slot.sampler.sample(loaded.ctx, slot.batch_index)
        body = request.body
        logprob = (
            self._logprob(loaded, slot.batch_index, token, body.top_logprobs)
            if body.logprobs
            else None
        )
        if loaded.vocab.is_eog(token):
            self._finish(slot, "stop")
            return
        slot.generated += 1
        piece = loaded.vocab.piece(token)
        replay: list[int] = []
        if slot.think_end:
            piece, replay = self._watch_thinking(loaded, slot, token, piece)
        out = slot.text.feed(piece)
        if logprob is not None:
            slot.logprobs.append(logprob)
        if out.text:
            # Logprobs of tokens whose text is still held back ride with the next text.
            request.emit(CompletionChunk(out.text, tuple(slot.logprobs)))
            slot.logprobs = []
        if out.stopped:
            self._finish(slot, "stop", flush=False)
            return
        if slot.generated >= slot.num_predict:
            self._finish(slot, "length")
            return
        if replay:
            slot.pending = replay  # evaluated like prompt tokens; the last one samples
        else:
            slot.next_token = token

    @staticmethod
    def _watch_thinking(
        loaded: _Loaded, slot: Slot, token: int, piece: bytes
    ) -> tuple[bytes, list[int]]:
        """Follow a reply through its thinking block; at its end, arm a waiting grammar.

        Returns the bytes to emit for this token and, when the block's end is not simply
        this token, the tokens to decode instead of it:

        - the token ran on past the end into text the grammar never saw: decode exactly
          the text up to the end, so the constrained answer starts right after it;
        - the thinking budget ran out: decode the token and then the closing text, which
          is emitted too, as if the model had written it.
        """
        assert slot.sampler is not None
        end = slot.think_end
        tail = slot.think_tail + piece
        at = tail.find(end)
        if at < 0:
            if slot.think_left > 0:
                slot.think_left -= 1
            if slot.think_left != 0:
                slot.think_tail = tail[-(len(end) - 1) :] if len(end) > 1 else b""
                return piece, []
            closing = b"\n" + end + b"\n\n"
            slot.think_end = slot.think_tail = b""
            slot.sampler.arm()
            text = closing.decode("utf-8", errors="ignore")
            return piece + closing, [token, *loaded.vocab.tokenize(text, add_special=False)]
        slot.think_end = slot.think_tail = b""
        slot.sampler.arm()
        beyond = tail[at + len(end) :]
        if not beyond.strip():
            return piece, []
        kept = piece[: len(piece) - len(beyond)]
        return kept, loaded.vocab.tokenize(kept.decode("utf-8", errors="ignore"), add_special=False)

    def _logprob(self, loaded: _Loaded, index: int, token: int, top: int) -> Logprob:
        logits = np.ctypeslib.as_array(
            L.llama_get_logits_ith(loaded.ctx, index), shape=(loaded.vocab.size,)
        ).astype(np.float64)
        peak = logits.max()
        logsum = peak + np.log(np.exp(logits - peak).sum())
        tops: tuple[TokenLogprob, ...] = ()
        if top > 0:
            best = np.argpartition(-logits, top)[:top]
            best = best[np.argsort(-logits[best])]
            tops = tuple(self._token_logprob(loaded, int(t), logits[t] - logsum) for t in best)
        chosen = self._token_logprob(loaded, token, logits[token] - logsum)
        return Logprob(chosen.token, chosen.logprob, chosen.bytes, tops)

    @staticmethod
    def _token_logprob(loaded: _Loaded, token: int, logprob: float) -> TokenLogprob:
        piece = loaded.vocab.piece(token)
        return TokenLogprob(piece.decode("utf-8", errors="replace"), float(logprob), tuple(piece))

    def _finish(self, slot: Slot, reason: str, *, flush: bool = True) -> None:
        request = slot.request
        assert request is not None
        tail = slot.text.finish().text if flush and slot.text else ""
        if tail or slot.logprobs:
            request.emit(CompletionChunk(tail, tuple(slot.logprobs)))
        request.emit(
            CompletionDone(
                done_reason=reason,
                prompt_eval_count=slot.prompt_tokens,
                prompt_cached=slot.prompt_cached,
                prompt_eval_duration=slot.prompt_ns,
                eval_count=slot.generated,
                eval_duration=slot.eval_ns,
            )
        )
        self._release(slot)

    def _release(self, slot: Slot) -> None:
        slot.request = None
        slot.pending = []
        slot.next_token = None
        slot.text = None

    def _fail_all(self, error: EngineError) -> None:
        for slot in self._slots:
            if slot.request is not None:
                slot.request.emit(error)
                self._release(slot)
                slot.cache.clear()
        while self._waiting:
            self._waiting.popleft().emit(error)
        if self._loaded is not None:
            L.llama_memory_clear(L.llama_get_memory(self._loaded.ctx), True)

    # -- embeddings ------------------------------------------------------------

    def embed(self, texts: list[str], truncate: bool) -> EmbeddingResponse:
        """Runs on the engine thread: as many inputs per decode as fit."""
        loaded = self._require_loaded()
        ctx = self._embedding_context(loaded)
        n_ctx = int(L.llama_n_ctx(ctx))
        n_seq = min(_EMBED_MAX_SEQS, n_ctx)
        inputs = []
        for text in texts:
            tokens = loaded.vocab.tokenize(text, add_special=True)
            if len(tokens) > n_ctx:
                if not truncate:
                    raise EngineError("the input length exceeds the context length", status=400)
                tokens = tokens[:n_ctx]
            inputs.append(tokens or [0])
        vectors: list[tuple[float, ...]] = []
        count = sum(len(t) for t in inputs)
        batch = llama.Batch(n_ctx)
        try:
            start = 0
            while start < len(inputs):
                batch.clear()
                group: list[list[int]] = []
                used = 0
                while start < len(inputs) and len(group) < n_seq:
                    tokens = inputs[start]
                    if group and used + len(tokens) > n_ctx:
                        break
                    for pos, token in enumerate(tokens):
                        batch.add(token, pos, len(group), True)
                    group.append(tokens)
                    used += len(tokens)
                    start += 1
                # Forget the cells, keep the bytes: unused cells are masked, and zeroing
                # the whole cache cost more than embedding a short input.
                L.llama_memory_clear(L.llama_get_memory(ctx), False)
                if batch.decode(ctx) != 0:
                    raise EngineError(self._why("embedding decode failed"))
                n_embd = int(L.llama_model_n_embd(loaded.model))
                for seq in range(len(group)):
                    ptr = L.llama_get_embeddings_seq(ctx, seq)
                    if not ptr:
                        raise EngineError("the model produced no pooled embedding")
                    vectors.append(tuple(float(x) for x in ptr[:n_embd]))
        finally:
            batch.free()
            L.llama_memory_clear(L.llama_get_memory(ctx), False)
        return EmbeddingResponse(tuple(vectors), count)

    def _embedding_context(self, loaded: _Loaded) -> Any:
        """Embedding models embed in their own context; others get a second context,
        made on first use, so embeddings never disturb the generation slots."""
        if self.gguf.is_embedding_model:
            return loaded.ctx
        if loaded.embed_ctx is None:
            config = loaded.config
            params = llama.context_params(
                n_ctx=config.num_ctx,
                n_seq=min(_EMBED_MAX_SEQS, config.num_ctx),
                n_batch=config.num_ctx,
                threads=config.num_threads,
                flash_attention=config.flash_attention.value,
                kv_cache_type=config.kv_cache_type,
                embeddings=True,
                pooling=L.LLAMA_POOLING_TYPE_MEAN,
                unified=True,
            )
            loaded.embed_ctx = L.llama_init_from_model(loaded.model, params)
            if not loaded.embed_ctx:
                raise self._load_failed("unable to create the embedding context")
        return loaded.embed_ctx


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _config(request: LoadRequest) -> LoadConfig:
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
    )


def _without_operation(request: LoadRequest) -> LoadRequest:
    return replace(request, operation=LoadOperation.FIT)


def _gpus_of(request: LoadRequest) -> list[DeviceInfo]:
    """Placeholder device records for the layout's GPUs: the estimate needs only their ids."""
    return [DeviceInfo(g.device, str(g.device), 0, 0) for g in request.layout.gpus]
