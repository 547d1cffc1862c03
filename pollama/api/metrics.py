"""``GET /metrics``: Prometheus metrics in the text exposition format (ollama#3144).

One ``Metrics`` per server owns its own ``CollectorRegistry`` (never the global
default: tests start several apps in one process). What it reports, and where
each figure comes from:

====================================================  =========  ==========================
metric {labels}                                       type       recorded
====================================================  =========  ==========================
pollama_requests_total {endpoint, status}             counter    ``RequestMetrics``
pollama_request_duration_seconds {endpoint}           histogram  ``RequestMetrics``
pollama_prompt_tokens_total {model}                   counter    completion ``Finish``, embed
pollama_generated_tokens_total {model}                counter    completion ``Finish``
pollama_draft_tokens_total {model}                    counter    completion ``Finish``
pollama_draft_accepted_tokens_total {model}           counter    completion ``Finish``
pollama_time_to_first_token_seconds {model}           histogram  first reply ``Delta``
pollama_time_per_output_token_seconds {model}         histogram  completion ``Finish``
pollama_model_load_seconds {model}                    histogram  scheduler ``on_load``
pollama_runner_restarts_total {model}                 counter    scheduler ``on_restart``
pollama_queue_depth                                   gauge      scrape: ``scheduler.waiting``
pollama_model_waiters {model}                         gauge      scrape: ``scheduler.demand()``
pollama_loaded_models                                 gauge      scrape: ``scheduler.loaded()``
pollama_memory_bytes {model, device, kind}            gauge      scrape: each runner's memory
====================================================  =========  ==========================

``endpoint`` is the matched route's path template (``/api/chat``,
``/api/blobs/{digest:path}``), or ``other`` when no route matched, so the label's
values stay bounded whatever paths clients try; ``status`` is the status the
response started with (500 for an exception before it, 499 for a client gone
before it). ``model`` is the model's canonical name (``smollm2:latest``).
``device`` is ``cpu`` for system memory or a GPU as the layout names it
(``CUDA:0``); ``kind`` is ``measured`` (the runner's figures after the load; over
all devices, ``/api/ps``'s ``size``) or ``estimated`` (the server's GGUF estimate
placed with the same layout, so the two compare device by device).

Per request: one label lookup per series and one timestamp for the first token;
per token, nothing but a flag check.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pollama.ggufmeta import GGUFModel, read_model
from pollama.memory.placement import estimate_for_layout
from pollama.memory.types import BackendMemory

if TYPE_CHECKING:
    from pollama.scheduler.loaded import LoadedModel
    from pollama.scheduler.scheduler import Scheduler

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format, which every Prometheus version scrapes."""
OTHER = "other"
"""The ``endpoint`` of a request no route matched."""

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
"""Seconds: from a tags listing to a long generation on a CPU."""
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
"""Seconds: a warm GPU answers in tens of milliseconds; a long prompt on a CPU, or a
request that waited for a load, in tens of seconds."""
TPOT_BUCKETS = (0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1)
"""Seconds per token: 100-400 tokens/s on a GPU, 2-50 tokens/s on a CPU."""
LOAD_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
"""Seconds: a small model from the page cache to a large one from a slow disk."""


class Metrics:
    """The server's metrics and the registry they are exposed from."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "pollama_requests",
            "HTTP requests by route and final status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "pollama_request_duration_seconds",
            "HTTP requests from arrival until the response completed.",
            ["endpoint"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "pollama_prompt_tokens",
            "Prompt tokens evaluated (cached ones left out), embedding inputs included.",
            ["model"],
            registry=r,
        )
        self.generated_tokens = Counter(
            "pollama_generated_tokens", "Tokens generated.", ["model"], registry=r
        )
        self.draft_tokens, self.draft_accepted = _draft_counters(r)
        self.first_token_seconds = Histogram(
            "pollama_time_to_first_token_seconds",
            "From a completion's start (waiting for a slot or load included) "
            "to its first content, thinking or tool call.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.token_seconds = Histogram(
            "pollama_time_per_output_token_seconds",
            "Generation time per output token, one observation per completion.",
            ["model"],
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.load_seconds = Histogram(
            "pollama_model_load_seconds",
            "Model loads, from starting the runner until the model was ready.",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.restarts = Counter(
            "pollama_runner_restarts",
            "Runners loaded again after their process died or failed a ping.",
            ["model"],
            registry=r,
        )
        self._scheduler: SchedulerCollector | None = None

    def watch(self, scheduler: Scheduler) -> None:
        """Report ``scheduler``: its loads and restarts as they happen, its queue,
        runners and memory whenever metrics are scraped."""
        scheduler.on_load = self.model_loaded
        scheduler.on_restart = self.runner_restarted
        if self._scheduler is None:
            self._scheduler = SchedulerCollector(scheduler)
            self.registry.register(self._scheduler)
        else:
            self._scheduler.scheduler = scheduler

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- what the request path reports ----------------------------------------------------

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.request_seconds.labels(endpoint).observe(seconds)

    def completion(self, model: str, started_ns: int) -> CompletionMeter:
        """The meter of one completion that started at ``started_ns`` (``perf_counter_ns``)."""
        return CompletionMeter(self, model, started_ns)

    def embedded(self, model: str, prompt_tokens: int) -> None:
        self.prompt_tokens.labels(model).inc(prompt_tokens)

    def model_loaded(self, model: str, seconds: float) -> None:
        self.load_seconds.labels(model).observe(seconds)

    def runner_restarted(self, model: str) -> None:
        self.restarts.labels(model).inc()


def _draft_counters(registry: CollectorRegistry) -> tuple[Counter, Counter]:
    """Speculative decoding's series: drafted tokens, and those accepted."""
    drafted = Counter(
        "pollama_draft_tokens",
        "Draft tokens verified by speculative decoding.",
        ["model"],
        registry=registry,
    )
    accepted = Counter(
        "pollama_draft_accepted_tokens",
        "Draft tokens the model's own sampling agreed with (decode steps saved).",
        ["model"],
        registry=registry,
    )
    return drafted, accepted


class CompletionMeter:
    """One completion's figures, its labelled series resolved once up front."""

    __slots__ = (
        "_first",
        "_per_token",
        "_prompt",
        "_generated",
        "_started",
        "_answered",
        "_metrics",
        "_model",
    )

    def __init__(self, metrics: Metrics, model: str, started_ns: int) -> None:
        self._metrics = metrics
        self._model = model
        self._first = metrics.first_token_seconds.labels(model)
        self._per_token = metrics.token_seconds.labels(model)
        self._prompt = metrics.prompt_tokens.labels(model)
        self._generated = metrics.generated_tokens.labels(model)
        self._started = started_ns
        self._answered = False

    def first_token(self) -> None:
        """A content, thinking or tool-call delta is ready to send; only the first counts."""
        if not self._answered:
            self._answered = True
            self._first.observe((time.perf_counter_ns() - self._started) / 1e9)

    def finish(self, prompt_eval_count: int, eval_count: int, eval_duration: int) -> None:
        """The completion's totals (``eval_duration`` in nanoseconds)."""
        self._prompt.inc(prompt_eval_count)
        self._generated.inc(eval_count)
        if eval_count > 0:
            self._per_token.observe(eval_duration / eval_count / 1e9)

    def drafted(self, drafted: int, accepted: int) -> None:
        """Speculative decoding's share of the completion (series made only once used)."""
        if drafted > 0:
            self._metrics.draft_tokens.labels(self._model).inc(drafted)
            self._metrics.draft_accepted.labels(self._model).inc(accepted)


# -- read at scrape time --------------------------------------------------------------------


class SchedulerCollector(Collector):
    """The scheduler's queue, runners and their memory, read when metrics are scraped
    (on the event loop, which the scheduler's state belongs to)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._estimates: weakref.WeakKeyDictionary[LoadedModel, BackendMemory | None] = (
            weakref.WeakKeyDictionary()
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        scheduler = self.scheduler
        queue, waiters, loaded, memory = self._families()
        queue.add_metric([], scheduler.waiting)
        for model, count in sorted(scheduler.demand().items()):
            waiters.add_metric([model], count)
        runners = scheduler.loaded()
        loaded.add_metric([], len(runners))
        for runner in runners:
            measured = runner.server.memory
            if measured is None:
                continue
            if runner not in self._estimates:
                self._estimates[runner] = _estimate(runner, measured)
            estimated = self._estimates[runner]
            for kind, figures in (("measured", measured), ("estimated", estimated)):
                if figures is not None:
                    for device, size in memory_by_device(figures):
                        memory.add_metric([runner.name, device, kind], size)
        return [queue, waiters, loaded, memory]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "pollama_queue_depth", "Requests waiting for a model load or a free slot."
            ),
            GaugeMetricFamily(
                "pollama_model_waiters",
                "Requests per model: running, or waiting for its load or a free slot.",
                labels=["model"],
            ),
            GaugeMetricFamily("pollama_loaded_models", "Models loaded in a live runner."),
            GaugeMetricFamily(
                "pollama_memory_bytes",
                "Memory of each loaded model per device (cpu = system memory): the "
                "runner's measured figures, and the estimate for the same layout.",
                labels=["model", "device", "kind"],
            ),
        )


def memory_by_device(memory: BackendMemory) -> Iterator[tuple[str, int]]:
    """(device, bytes): system memory as ``cpu``, then each GPU that holds anything.
    The sizes sum to ``memory.memory_size()[0]``."""
    yield "cpu", memory.cpu_total
    for gpu in memory.gpus:
        if gpu.size:
            yield (str(gpu.device) if gpu.device is not None else gpu.name), gpu.size


def _estimate(runner: LoadedModel, measured: BackendMemory) -> BackendMemory | None:
    try:
        projector = _header(runner.spec.projector) if runner.spec.projector else None
        adapters = tuple(_header(path) for path in runner.spec.adapters)
        draft = _header(runner.spec.draft) if runner.spec.draft else None
        return estimate_for_layout(
            runner.spec.model, runner.config, measured, projector, adapters=adapters, draft=draft
        )
    except Exception:  # a scrape must not fail over one model's figures
        log.warning("no memory estimate for model=%s", runner.name, exc_info=True)
        return None


@lru_cache(maxsize=32)
def _header(path: str) -> GGUFModel:
    # A LoRA adapter's header (its blob is content-addressed: a path keeps its bytes).
    return read_model(path)


# -- the HTTP side ----------------------------------------------------------------------------


class RequestMetrics:
    """ASGI middleware: every HTTP request counted by route and final status, and timed
    until its response completes. Bodies pass through untouched (streams stay streams);
    only the status of ``http.response.start`` is read."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except asyncio.CancelledError:
            status = status or 499  # the client went away before an answer (Ollama's 499)
            raise
        except BaseException:
            status = status or 500
            raise
        finally:
            # The router leaves the matched route in the scope it was handed.
            endpoint = getattr(scope.get("route"), "path", None) or OTHER
            self.metrics.request(endpoint, status or 500, time.perf_counter() - started)


router = APIRouter()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    # Rendered on the event loop: the collectors read the scheduler's state, which
    # only the loop may touch.
    registry: Metrics = request.app.state.pollama.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)
