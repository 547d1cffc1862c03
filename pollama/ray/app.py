"""The Ray Serve application: the ingress in front of N pollama replicas.

``build`` takes plain figures (the CLI derives each replica's resources from the
memory model, as ``pollama fit`` does) and returns the application for ``serve.run``.
Each replica asks Ray for its CPUs (its llama.cpp threads), the memory its models
need and a GPU when they go on one, so Ray places replicas where they fit; with
autoscaling, Ray adds and removes replicas on the requests each has in flight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import AutoscalingConfig, RequestRouterConfig

from pollama.ray.ingress import PollamaIngress
from pollama.ray.replica import PollamaReplica

INGRESS = "pollama"
REPLICAS = "pollama-replica"
ROUTER: dict[str, Any] = {
    "request_router_class": "pollama.ray.router:AffinityRouter",
    "request_routing_stats_period_s": 1.0,  # what replicas hold, a second old at most
    "request_routing_stats_timeout_s": 5.0,
}


@dataclass(frozen=True)
class ReplicaResources:
    num_cpus: float
    """Ray CPUs per replica: its llama.cpp threads."""
    memory: int = 0
    """Bytes of memory its models need (0: not reserved)."""
    num_gpus: float = 0.0


@dataclass(frozen=True)
class Deployment:
    replicas: int = 2
    resources: ReplicaResources = ReplicaResources(num_cpus=1)
    parallel: int = 1
    """Sequences each replica decodes at once (OLLAMA_NUM_PARALLEL)."""
    min_replicas: int | None = None
    max_replicas: int | None = None
    """Both set: autoscaling between them; else ``replicas``, fixed."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment of every replica's ``pollama serve`` (the shared OLLAMA_MODELS…)."""
    affinity: bool = True
    """Route by prefix and model (``router``); False: Ray Serve's default router (power
    of two choices), for comparison (``python -m bench rayscale``)."""

    def replica_env(self) -> dict[str, str]:
        threads = max(1, int(self.resources.num_cpus))
        return {
            **self.env,
            "POLLAMA_NUM_THREAD": str(threads),
            "OLLAMA_NUM_PARALLEL": str(self.parallel),
        }


def build(deployment: Deployment) -> Application:
    res = deployment.resources
    actor: dict[str, Any] = {"num_cpus": res.num_cpus}
    if res.memory:
        actor["memory"] = res.memory
    if res.num_gpus:
        actor["num_gpus"] = res.num_gpus
    scaling: dict[str, Any]
    if deployment.min_replicas is not None and deployment.max_replicas is not None:
        scaling = {
            "autoscaling_config": AutoscalingConfig(
                min_replicas=deployment.min_replicas,
                max_replicas=deployment.max_replicas,
                target_ongoing_requests=deployment.parallel,
            )
        }
    else:
        scaling = {"num_replicas": deployment.replicas}
    replica = serve.deployment(
        name=REPLICAS,
        # A replica is saturated when its slots are: one more request would only queue
        # there, so the router falls through to the next rank (another replica, loading
        # the model if it must), and queues itself once every replica is full.
        max_ongoing_requests=deployment.parallel,
        ray_actor_options=actor,
        request_router_config=RequestRouterConfig(**(ROUTER if deployment.affinity else {})),
        health_check_period_s=2.0,
        health_check_timeout_s=30.0,
        graceful_shutdown_timeout_s=10.0,
        **scaling,
    )(PollamaReplica)
    ingress = serve.deployment(
        name=INGRESS,
        num_replicas=1,
        max_ongoing_requests=10_000,
        ray_actor_options={"num_cpus": 0},
    )(PollamaIngress)
    return ingress.bind(replica.bind(deployment.replica_env()))
