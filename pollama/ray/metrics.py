"""``/metrics`` across replicas: each replica's own figures, labelled with the replica.

Every replica posts its server's ``/metrics`` to one small actor (``MetricsBoard``)
whenever Ray Serve asks it for routing stats (every second); the ingress answers
``GET /metrics`` with every replica heard from lately, merged into one exposition in
which each sample carries ``replica="<id>"``. A Prometheus scraping the proxy sees
the whole deployment; ``sum without (replica)`` gives totals.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

BOARD = "pollama-metrics"
"""The board actor's name, in the Serve application's namespace."""

STALE_S = 30.0
"""A replica not heard from for this long is left out (it died, or was scaled away)."""


def merge(texts: Mapping[str, str]) -> bytes:
    """One Prometheus text exposition of several replicas' (replica id → text)."""
    families: dict[str, Metric] = {}
    for replica, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                labels = {**sample.labels, "replica": replica}
                merged.samples.append(sample._replace(labels=labels))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class MetricsBoard:
    """The latest ``/metrics`` text of each replica (a Ray actor: ``app`` starts it)."""

    def __init__(self) -> None:
        self._texts: dict[str, tuple[float, str]] = {}

    def put(self, replica: str, text: str) -> None:
        self._texts[replica] = (time.monotonic(), text)

    def texts(self) -> dict[str, str]:
        now = time.monotonic()
        return {r: text for r, (at, text) in self._texts.items() if now - at < STALE_S}


def board() -> object:
    """The deployment's board actor, started by whoever asks first."""
    import ray

    actor = ray.remote(MetricsBoard).options(  # type: ignore[attr-defined]
        name=BOARD, namespace="serve", get_if_exists=True, lifetime="detached", num_cpus=0
    )
    return actor.remote()
