"""Pure statistics for the comparison: what is measured, medians, paired ratios, targets.

A comparison is a list of runs; each run maps a server to the figures measured on
it in that run (``Runs``). Servers take turns within a run, so a ratio between two
of them is taken run by run — background load drifting between runs cancels out
of each — and the median of those per-run ratios is what we report.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Runs = Sequence[Mapping[str, Mapping[str, float]]]
"""run → server → metric → value."""

RAW = "raw"
POLLAMA = "pollama"
LLAMA_SERVER = "llama-server"
LLAMA_CPP_PYTHON = "llama-cpp-python"
SERVERS = (RAW, POLLAMA, LLAMA_SERVER, LLAMA_CPP_PYTHON)


@dataclass(frozen=True)
class Metric:
    """One figure of the table: its key in a run, how it reads, which way is better."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    digits: int = 1
    paired: bool = True
    """Whether ratios between servers mean anything (not for the machine's background)."""
    vs_raw: str | None = None
    """The key of a ratio to the raw engine measured within each server's turn, back to
    back with the server's own figure: the ratio to use in place of pairing turns."""


def metrics(levels: Iterable[int]) -> list[Metric]:
    """Every row of the table, in order, for the given concurrency levels."""
    rows = [
        Metric("decode_tps", "single-stream decode", "tok/s", True, vs_raw="decode_vs_raw"),
        Metric("ttft_ms", "time to first token, short prompt", "ms", False, 0),
        Metric(
            "prompt_tps", "prompt evaluation, ~1,000 tokens", "tok/s", True, vs_raw="prompt_vs_raw"
        ),
    ]
    for c in levels:
        clients = f"{c} client{'s' if c != 1 else ''}"
        rows += [
            Metric(f"agg_tps_c{c}", f"{clients}: aggregate", "tok/s", True),
            Metric(f"p50_ms_c{c}", f"{clients}: request latency p50", "ms", False, 0),
            Metric(f"p99_ms_c{c}", f"{clients}: request latency p99", "ms", False, 0),
        ]
    rows += [
        Metric("chat_ttft1_ms", "chat, long system prompt: TTFT turn 1", "ms", False, 0),
        Metric("chat_ttft2_ms", "chat, long system prompt: TTFT turn 2", "ms", False, 0),
        Metric("chat_turn2_ratio", "chat: TTFT turn 2 ÷ turn 1", "×", False, 3),
        Metric("embed_batch_ips", "embeddings: 64 inputs in one request", "inputs/s", True),
        Metric("embed_single_ips", "embeddings: 64 separate requests", "inputs/s", True),
        Metric("embed_speedup", "embeddings: one request ÷ separate", "×", True, 2),
        Metric("rss_mib", "peak RSS, server process tree (1 slot)", "MiB", False, 0),
        Metric("rss_serving_mib", "peak RSS, server + runner (idle spare apart)", "MiB", False, 0),
        Metric("load_s", "load: process start → first response", "s", False, 2),
        Metric("other_cpu", "other processes' CPU during the turn", "cores", False, 2, False),
    ]
    return rows


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100), interpolating linearly between closest ranks
    (numpy's default), so p50 of two values is their mean and p99 of few is near max."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0–100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def values_of(runs: Runs, server: str, metric: str) -> list[float]:
    """The metric's value in each run that measured it on ``server``."""
    return [run[server][metric] for run in runs if metric in run.get(server, {})]


def median_of(runs: Runs, server: str, metric: str) -> float | None:
    values = values_of(runs, server, metric)
    return statistics.median(values) if values else None


def per_run_ratios(runs: Runs, server: str, peer: str, metric: str) -> list[float]:
    """``server ÷ peer`` for ``metric`` in each run that measured it on both."""
    ratios = []
    for run in runs:
        mine, theirs = run.get(server, {}), run.get(peer, {})
        if metric in mine and metric in theirs and theirs[metric] != 0:
            ratios.append(mine[metric] / theirs[metric])
    return ratios


def paired_ratio(runs: Runs, server: str, peer: str, metric: str) -> float | None:
    """The median of the per-run ratios (not the ratio of the medians)."""
    ratios = per_run_ratios(runs, server, peer, metric)
    return statistics.median(ratios) if ratios else None


def ratio(runs: Runs, server: str, peer: str, metric: Metric) -> float | None:
    """``server ÷ peer`` for ``metric``: against the raw engine, the ratio measured back
    to back within the server's turns when there is one; else paired by run."""
    if peer == RAW and metric.vs_raw is not None:
        within = median_of(runs, server, metric.vs_raw)
        if within is not None:
            return within
    return paired_ratio(runs, server, peer, metric.key)


@dataclass(frozen=True)
class Target:
    """``server``'s ``metric`` (÷ ``peer``'s in the same run, when there is a peer)
    compared with ``bound``."""

    label: str
    metric: str
    op: Literal[">=", "<="]
    bound: float
    server: str = POLLAMA
    peer: str | None = None

    def figures(self, runs: Runs) -> list[float]:
        if self.peer is None:
            return values_of(runs, self.server, self.metric)
        return per_run_ratios(runs, self.server, self.peer, self.metric)


@dataclass(frozen=True)
class Verdict:
    target: Target
    runs: tuple[float, ...]

    @property
    def figure(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None

    @property
    def met(self) -> bool | None:
        """None when nothing was measured (a peer missing, say)."""
        figure = self.figure
        if figure is None:
            return None
        bound = self.target.bound
        return figure >= bound if self.target.op == ">=" else figure <= bound

    @property
    def shortfall(self) -> float | None:
        """How far the figure misses its bound, relative to the bound (0 when met)."""
        figure, bound = self.figure, self.target.bound
        if figure is None:
            return None
        gap = bound - figure if self.target.op == ">=" else figure - bound
        return max(gap, 0.0) / bound

    def describe(self) -> str:
        figure, shortfall = self.figure, self.shortfall
        if figure is None or shortfall is None:
            return "not measured"
        op = "≥" if self.target.op == ">=" else "≤"
        text = f"{figure:.3f}× (target {op} {self.target.bound:g}×)"
        if self.met:
            return f"met: {text}"
        return f"missed by {shortfall:.1%}: {text}"


TARGETS = (
    Target("single-stream decode ÷ raw engine (back to back)", "decode_vs_raw", ">=", 0.97),
    Target("aggregate at 4 clients ÷ llama-server", "agg_tps_c4", ">=", 1.0, peer=LLAMA_SERVER),
    Target(
        "aggregate at 4 clients ÷ llama-cpp-python server",
        "agg_tps_c4",
        ">=",
        1.3,
        peer=LLAMA_CPP_PYTHON,
    ),
    Target("chat TTFT turn 2 ÷ turn 1", "chat_turn2_ratio", "<=", 0.3),
    Target("embeddings, one request of 64 ÷ 64 requests", "embed_speedup", ">=", 3.0),
)


def check(targets: Iterable[Target], runs: Runs) -> list[Verdict]:
    return [Verdict(t, tuple(t.figures(runs))) for t in targets]
