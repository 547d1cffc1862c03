"""Thin, typed helpers over llama-cpp-python's low-level API.

Only the runner imports this module (and through it, llama.cpp). Everything
here runs on the engine thread.
"""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# numpy at start (a spare imports it while it waits), not by the first greedy request:
# there its ~37 ms would delay the first reply of every runner (cold start, model swap).
import numpy as np

from pollama.protocol.wire import SamplingOptions
from pollama.runner.bindings import L
from pollama.runner.buffers import BufferSizes, ProjectorBuffers

LogSink = Callable[[int, str], None]

GGML_LOG_LEVEL_CONT = 5
GGML_LOG_LEVEL_WARN = 3
_KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml_type values
_FLASH = {"auto": -1, "disabled": 0, "enabled": 1}


class LlamaLog:
    """Receives llama.cpp's log, line by line, for the whole process.

    The ctypes callback must stay referenced as long as llama.cpp may call it
    (a temporary one segfaults on the next log line), so this object lives for
    the process. Lines are forwarded to stderr (the server's status writer
    reads them) and to an optional buffer-size collector.
    """

    def __init__(self, verbose: bool) -> None:
        self._verbose = verbose
        self._partial = ""
        self._level = 2
        self._lock = threading.Lock()
        self.collector: BufferSizes | ProjectorBuffers | None = None
        self.errors: list[str] = []
        """Error lines since the last ``begin()``: the first is usually the specific one
        ("unknown model architecture: …"), later ones generic ("failed to load model")."""
        self._callback = L.llama_log_callback(self._on_log)
        L.llama_log_set(self._callback, ctypes.c_void_p(0))

    @property
    def callback(self) -> Any:
        """The ctypes callback, for libraries that log on their own (mtmd)."""
        return self._callback

    def begin(self) -> None:
        """Start of an operation whose failure we may need to explain."""
        self.errors = []

    def reason(self) -> str:
        return self.errors[0] if self.errors else ""

    def explain(self, what: str) -> str:
        """``what`` failed, with llama.cpp's first error line since ``begin()`` as the why."""
        detail = self.reason()
        return f"{what}: {detail}" if detail else what

    def _on_log(self, level: int, text: bytes, _user: Any) -> None:
        chunk = text.decode("utf-8", errors="replace")
        with self._lock:
            if level != GGML_LOG_LEVEL_CONT:
                self._level = level
            self._partial += chunk
            while "\n" in self._partial:
                line, self._partial = self._partial.split("\n", 1)
                self._line(self._level, line)

    def _line(self, level: int, line: str) -> None:
        if self.collector is not None:
            self.collector.feed(line)
        error = level >= 4 or "error" in line.lower() or "failed" in line.lower()
        if error:
            self.errors.append(line.strip())
        if self._verbose or level >= GGML_LOG_LEVEL_WARN or error:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()


def model_params(
    *,
    gpu_layers: int,
    main_gpu: int,
    use_mmap: bool,
    dry_run: bool,
    progress: Any,
    extra_buffers: bool,
) -> Any:
    params = L.llama_model_default_params()
    params.n_gpu_layers = gpu_layers
    params.main_gpu = main_gpu
    # AMX / CPU_REPACK weight layouts: on only where this CPU runs them (pollama.engine).
    params.use_extra_bufts = extra_buffers
    if dry_run:
        # no_alloc asserts unless nothing is mapped or read.
        params.no_alloc = True
        params.load_mode = L.LLAMA_LOAD_MODE_NONE
    else:
        params.load_mode = L.LLAMA_LOAD_MODE_MMAP if use_mmap else L.LLAMA_LOAD_MODE_NONE
    if progress is not None:
        params.progress_callback = progress
    return params


def context_params(
    *,
    n_ctx: int,
    n_seq: int,
    n_batch: int,
    threads: int,
    outputs_per_seq: int = 1,
    flash_attention: str,
    kv_cache_type: str,
    embeddings: bool,
    pooling: int | None = None,
    unified: bool = False,
) -> Any:
    params = L.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_seq_max = n_seq
    params.n_batch = n_batch
    params.n_ubatch = n_batch
    params.n_threads = threads
    params.n_threads_batch = threads
    params.flash_attn_type = _FLASH.get(flash_attention, -1)
    params.type_k = params.type_v = _KV_TYPES.get(kv_cache_type, 1)
    params.swa_full = False  # the estimate assumes window-sized SWA caches
    params.kv_unified = unified
    params.embeddings = embeddings
    params.no_perf = True
    if not embeddings:
        # We ask for logits once per sequence per step (plus its draft's rows, when
        # speculating); reserving them for every position of a batch would waste
        # vocab × batch × 4 bytes of compute buffer.
        params.n_outputs_max = min(n_batch, n_seq * outputs_per_seq)
    if pooling is not None:
        params.pooling_type = pooling
    return params


class Batch:
    """A reusable llama_batch of up to ``capacity`` tokens, one sequence id each."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._batch = L.llama_batch_init(capacity, 0, 1)
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        b = self._batch
        i = self.n
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits
        self.n = i + 1
        return i

    def decode(self, ctx: Any) -> int:
        self._batch.n_tokens = self.n
        return int(L.llama_decode(ctx, self._batch))

    def free(self) -> None:
        L.llama_batch_free(self._batch)


class Vocab:
    """Tokenization with the model's own vocabulary; pieces cached per token."""

    def __init__(self, model: Any) -> None:
        self._vocab = L.llama_model_get_vocab(model)
        self.size = int(L.llama_vocab_n_tokens(self._vocab))
        self._pieces: dict[int, bytes] = {}
        self._buf = ctypes.create_string_buffer(256)

    @property
    def handle(self) -> Any:
        return self._vocab

    @property
    def bos(self) -> int:
        return int(L.llama_vocab_bos(self._vocab))

    @property
    def eos(self) -> int:
        return int(L.llama_vocab_eos(self._vocab))

    def tokenize(
        self, text: str, add_special: bool = True, *, parse_special: bool = True
    ) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 16
        while True:
            out = (L.llama_token * capacity)()
            n = L.llama_tokenize(
                self._vocab, data, len(data), out, capacity, add_special, parse_special
            )
            if n >= 0:
                return list(out[:n])
            capacity = -n

    def piece(self, token: int) -> bytes:
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        n = L.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[:n]
        else:
            piece = self._buf.raw[:n]
        self._pieces[token] = piece
        return piece

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(L.llama_vocab_is_eog(self._vocab, token))


def sampler_chain(vocab: Vocab, opts: SamplingOptions, prompt: Sequence[int], num_ctx: int) -> Any:
    """llama.cpp's native sampler chain for Ollama's options, without a grammar.

    Order as Ollama and llama-server use it: penalties, top-k, typical-p, top-p,
    min-p, temperature, then a seeded draw — or greedy at temperature 0. Samplers
    that would do nothing at their values are left out. (A grammar is applied
    around the chain by ``SlotSampler``.)
    """
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    last_n = num_ctx if opts.repeat_last_n < 0 else opts.repeat_last_n
    if _penalised(opts, num_ctx):
        penalties = L.llama_sampler_init_penalties(
            vocab.size,
            last_n,
            opts.repeat_penalty,
            opts.frequency_penalty,
            opts.presence_penalty,
        )
        # The prompt counts towards repetition, as in Ollama and llama-server.
        for token in prompt[-last_n:]:
            L.llama_sampler_accept(penalties, token)
        L.llama_sampler_chain_add(chain, penalties)
    if opts.temperature <= 0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        return chain
    if opts.top_k > 0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(opts.top_k))
    if opts.typical_p < 1.0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_typical(opts.typical_p, 1))
    if opts.top_p < 1.0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(opts.top_p, 1))
    if opts.min_p > 0.0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(opts.min_p, 1))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(opts.temperature))
    seed = opts.seed & 0xFFFFFFFF if opts.seed >= 0 else L.LLAMA_DEFAULT_SEED
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed))
    return chain


def _penalised(opts: SamplingOptions, num_ctx: int) -> bool:
    last_n = num_ctx if opts.repeat_last_n < 0 else opts.repeat_last_n
    return last_n > 0 and bool(
        opts.repeat_penalty != 1.0 or opts.frequency_penalty or opts.presence_penalty
    )


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)


class SlotSampler:
    """One request's sampling: its options' chain and, when it has one, a grammar.

    Without a grammar every token is drawn by llama.cpp in one native call. With
    one, the chain draws first and the grammar only checks the token drawn; only
    when it refuses that token is the grammar applied to the whole vocabulary and
    the draw repeated (llama-server's shortcut: checking one token is cheap,
    filtering 49k candidates through the grammar costs milliseconds per token).
    Either way the token returned is one the grammar allows, so the output is
    exactly as constrained as with the grammar first in the chain.

    A grammar may wait (``armed=False``): then tokens are drawn freely until
    ``arm()``, so a model can think before its constrained answer.
    """

    def __init__(
        self,
        vocab: Vocab,
        opts: SamplingOptions,
        prompt: Sequence[int],
        num_ctx: int,
        *,
        grammar: str = "",
        armed: bool = True,
    ) -> None:
        self._grammar: Any = None
        if grammar:
            self._grammar = L.llama_sampler_init_grammar(
                vocab.handle, grammar.encode("utf-8"), b"root"
            )
            if not self._grammar:
                raise ValueError("invalid grammar")
        # Plain greedy needs no chain: llama_sampler_sample would copy the whole
        # vocabulary into a fresh candidate array first, ~0.2 ms a token that the
        # compute threads spend waiting (docs/benchmarks.md). argmax picks the first
        # of equal maxima, as llama.cpp's greedy sampler does.
        self._argmax = not grammar and opts.temperature <= 0 and not _penalised(opts, num_ctx)
        self._chain = None if self._argmax else sampler_chain(vocab, opts, prompt, num_ctx)
        self._n_vocab = vocab.size
        self.armed = armed
        self._candidates: np.ndarray | None = None
        self._one = np.zeros(1, dtype=_TOKEN_DATA)

    @property
    def constrained(self) -> bool:
        return self._grammar is not None and self.armed

    def arm(self) -> None:
        self.armed = True

    def sample(self, ctx: Any, index: int) -> int:
        if not self.constrained and not self._argmax:
            return int(L.llama_sampler_sample(self._chain, ctx, index))
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, index), shape=(self._n_vocab,))
        if self._argmax:
            return int(logits.argmax())
        token = self._draw(logits, grammar=False)
        if not self._allows(token):
            token = self._draw(logits, grammar=True)
        L.llama_sampler_accept(self._chain, token)
        L.llama_sampler_accept(self._grammar, token)
        return token

    def _draw(self, logits: np.ndarray, *, grammar: bool) -> int:
        if self._candidates is None:
            self._candidates = np.zeros(self._n_vocab, dtype=_TOKEN_DATA)
        cand = self._candidates
        cand["id"] = np.arange(self._n_vocab, dtype=np.int32)  # the last apply sorted them
        cand["logit"] = logits
        cand["p"] = 0.0
        array = _token_array(cand)
        if grammar:
            L.llama_sampler_apply(self._grammar, ctypes.byref(array))
        L.llama_sampler_apply(self._chain, ctypes.byref(array))
        if not 0 <= array.selected < array.size:
            raise RuntimeError("the sampler chain selected no token")
        return int(cand["id"][array.selected])

    def _allows(self, token: int) -> bool:
        one = self._one
        one["id"], one["logit"], one["p"] = token, 0.0, 0.0
        array = _token_array(one)
        L.llama_sampler_apply(self._grammar, ctypes.byref(array))
        return bool(np.isfinite(one["logit"][0]))

    def free(self) -> None:
        for sampler in (self._chain, self._grammar):
            if sampler:
                L.llama_sampler_free(sampler)
        self._chain = self._grammar = None


def _token_array(candidates: np.ndarray) -> Any:
    return L.llama_token_data_array(
        data=candidates.ctypes.data_as(ctypes.POINTER(L.llama_token_data)),
        size=len(candidates),
        selected=-1,
        sorted=False,
    )


# -- a threadpool that does not spin between decode steps ---------------------------------

_MAX_THREADS = 512  # GGML_MAX_N_THREADS: the size of ggml_threadpool_params.cpumask


class _ThreadpoolParams(ctypes.Structure):
    _fields_ = [
        ("cpumask", ctypes.c_bool * _MAX_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


@functools.cache
def _ggml_libs() -> tuple[ctypes.CDLL, ctypes.CDLL] | None:
    lib_dir = Path(L.__file__).parent / "lib"
    try:
        base = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
        cpu = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"))
    except OSError:
        return None
    base.ggml_threadpool_params_default.argtypes = [ctypes.c_int]
    base.ggml_threadpool_params_default.restype = _ThreadpoolParams
    cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(_ThreadpoolParams)]
    cpu.ggml_threadpool_new.restype = ctypes.c_void_p
    cpu.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
    cpu.ggml_threadpool_free.restype = None
    L._lib.llama_attach_threadpool.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    L._lib.llama_attach_threadpool.restype = None
    L._lib.llama_detach_threadpool.argtypes = [ctypes.c_void_p]
    L._lib.llama_detach_threadpool.restype = None
    return base, cpu


class Threadpool:
    """llama.cpp's compute threads with polling off: idle workers sleep at once.

    By default a worker spins for a while after each graph, waiting for the next.
    While the engine thread samples and streams between decode steps, that spinning
    holds a core that the server and client processes need to pass the token on.
    """

    def __init__(self, handle: int, cpu: ctypes.CDLL) -> None:
        self._handle: int | None = handle
        self._cpu = cpu

    @classmethod
    def create(cls, threads: int) -> Threadpool | None:
        libs = _ggml_libs()
        if libs is None or threads < 1:
            return None
        base, cpu = libs
        params = base.ggml_threadpool_params_default(threads)
        params.poll = 0
        handle = cpu.ggml_threadpool_new(ctypes.byref(params))
        return cls(handle, cpu) if handle else None

    def attach(self, ctx: Any) -> None:
        L._lib.llama_attach_threadpool(ctx, self._handle, self._handle)

    def detach(self, ctx: Any) -> None:
        """Stop ``ctx`` using these threads (a second context sharing them, freed first)."""
        L._lib.llama_detach_threadpool(ctx)

    def free(self, ctx: Any) -> None:
        """Detach from ``ctx`` (if it is still alive) and free the threads."""
        if self._handle is None:
            return
        if ctx:
            L._lib.llama_detach_threadpool(ctx)
        self._cpu.ggml_threadpool_free(self._handle)
        self._handle = None
