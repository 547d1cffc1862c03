"""The soak's short version (``python -m bench.soak`` runs the long one): 4 clients
against a real server for about 35 s, every workload, deliberate disconnects."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import (
    COUNT_TOLERANCE,
    DISCONNECTED,
    FAILED,
    OK,
    WORKLOADS,
    SoakConfig,
    run_soak,
)


@pytest.mark.llama
def test_a_short_soak_fails_nothing_and_leaks_no_fds_or_threads(tmp_path: Path) -> None:
    # Every 6th request abandoned (offset by client): each client leaves within its
    # first six requests, however slow a shared machine makes them.
    config = SoakConfig(
        clients=4, seconds=35, max_requests=600, warmup=8, disconnect_every=6, monitor_interval=5
    )
    result = run_soak(config, tmp_path)
    print(result.table())  # the figures, shown with -s or on failure

    assert result.counts()[FAILED] == 0, [o.error for o in result.failures]
    assert len(result.outcomes) <= config.max_requests
    for workload in WORKLOADS:
        assert result.counts(workload.name)[OK] > 0, workload.name
    disconnects = sorted(o.at for o in result.outcomes if o.result == DISCONNECTED)
    assert disconnects
    # Clients left and the server went on: requests sent after the first one left
    # completed, nothing waits at the end, and a request of each kind succeeds after.
    assert any(o.result == OK and o.at > disconnects[0] for o in result.outcomes)
    assert result.served_after and result.waiting_after == 0
    assert result.restarts == 0 and len(result.runner_pids) == 1
    assert result.quiet
    for who in ("server", "runner"):
        warm, end = getattr(result.warm, who), getattr(result.end, who)
        assert end.fds - warm.fds <= COUNT_TOLERANCE, (who, warm, end)
        assert end.threads - warm.threads <= COUNT_TOLERANCE, (who, warm, end)
