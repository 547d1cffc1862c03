"""Merging replicas' /metrics into one exposition (pure; no Ray)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pollama.ray.metrics import merge


def exposition(requests: int, loaded: int) -> str:
    registry = CollectorRegistry()
    counter = Counter("pollama_requests", "Requests.", ["route"], registry=registry)
    counter.labels(route="/api/chat").inc(requests)
    Gauge("pollama_models_loaded", "Loaded models.", registry=registry).set(loaded)
    latency = Histogram("pollama_seconds", "Latency.", registry=registry, buckets=(1.0,))
    latency.observe(0.5)
    return generate_latest(registry).decode()


def test_every_sample_keeps_its_value_and_gains_its_replica():
    merged = merge({"r1": exposition(3, 1), "r2": exposition(5, 0)}).decode()
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    requests = {
        s.labels["replica"]: s.value
        for s in families["pollama_requests"].samples
        if s.name == "pollama_requests_total"
    }
    assert requests == {"r1": 3.0, "r2": 5.0}
    loaded = {s.labels["replica"]: s.value for s in families["pollama_models_loaded"].samples}
    assert loaded == {"r1": 1.0, "r2": 0.0}
    assert families["pollama_seconds"].type == "histogram"
    buckets = [s for s in families["pollama_seconds"].samples if s.name.endswith("_bucket")]
    assert {s.labels["replica"] for s in buckets} == {"r1", "r2"}
    # One HELP and one TYPE per family, whatever the number of replicas.
    assert merged.count("# TYPE pollama_models_loaded gauge") == 1


def test_no_replica_is_an_empty_exposition():
    assert merge({}) == b""
