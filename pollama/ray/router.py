"""Ray Serve's request router for pollama replicas: prefix, then model affinity.

It ranks with ``affinity.rank`` from what the replicas report (``record_routing_stats``,
every second) and from what it routed itself since (a conversation's last replica, a
model's last replica), so the second turn of a chat goes where the first went even
before any report says so. Ray Serve then takes, within a rank, the least loaded
replica that has room, and falls through to the next rank when none has.
"""

from __future__ import annotations

from typing import Any

from ray.serve.request_router import (
    FIFOMixin,
    PendingRequest,
    ReplicaID,
    ReplicaResult,
    RequestRouter,
    RunningReplica,
)

from pollama.ray.affinity import Hint, Recent, ReplicaView, rank


def _hint(pending: PendingRequest | None) -> Hint:
    raw: Any = pending.kwargs.get("hint") if pending is not None else None
    if not isinstance(raw, dict):
        return Hint()
    return Hint(str(raw.get("model", "")), str(raw.get("prefix", "")))


def _view(replica: RunningReplica) -> ReplicaView:
    stats = replica.routing_stats or {}
    return ReplicaView(
        id=replica.replica_id.unique_id,
        models=frozenset(stats.get("models", ())),
        prefixes=frozenset(stats.get("prefixes", ())),
    )


class AffinityRouter(FIFOMixin, RequestRouter):
    """Routes a conversation to the replica that holds its prefix, a model to a replica
    that has it loaded, and anything else to the least loaded replica."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._conversations = Recent(capacity=100_000)
        self._models = Recent(capacity=1_000)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        hint = _hint(pending_request)
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        ranks = rank(
            [_view(r) for r in candidate_replicas],
            hint,
            last=self._conversations.get(hint.prefix) if hint.prefix else None,
            loaded_on=self._models.get(hint.model) if hint.model else None,
        )
        return [[by_id[i] for i in group] for group in ranks]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult
    ) -> None:
        hint = _hint(pending_request)
        if hint.prefix:
            self._conversations.put(hint.prefix, replica_id.unique_id)
        if hint.model:
            self._models.put(hint.model, replica_id.unique_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._conversations.forget_value(replica_id.unique_id)
        self._models.forget_value(replica_id.unique_id)
