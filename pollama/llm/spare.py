"""A spare runner: one runner process started ahead of need, waiting for its model.

A runner spends most of its start importing llama.cpp and its HTTP stack (about a
second on a small CPU), before it can read a model. The spare does that while nothing
waits for it: ``SpareRunner.start()`` launches ``python -m pollama.runner --port P``
without a model; ``take(model, env)`` hands it the model's path on its stdin and
returns it, already listening, to the load that asked. The load then calls ``start()``
again for the next one, so the replacement's imports never compete with the load.

A spare is only taken by a load whose environment is the spare's (on a machine with
GPUs, a load sees only its chosen GPUs, so such loads start their own runner as
before). An idle spare holds the interpreter and the imported libraries, no model
memory; it leaves when closed, and by itself when the server dies (end-of-file on its
stdin). ``POLLAMA_SPARE_RUNNER=0`` turns it off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pollama.llm.process import RunnerProcess, free_port, runner_environment

log = logging.getLogger(__name__)

RUNNER_MODULE = ("-m", "pollama.runner")
"""How the server starts a runner: the module, not the CLI (the CLI imports every command)."""
REFILL_IDLE = 1.0
"""Seconds after the latest request before a taken spare is replaced (``refill_later``)."""


@dataclass(frozen=True)
class Spare:
    process: RunnerProcess
    port: int
    env: Mapping[str, str]


class SpareRunner:
    """At most one idle runner process. All methods run on one event loop."""

    def __init__(self, *, enabled: bool = True, stop_grace: float = 5.0) -> None:
        self._enabled = enabled
        self._stop_grace = stop_grace
        self._spare: Spare | None = None
        self._starting: asyncio.Task[None] | None = None
        self._refill: asyncio.TimerHandle | None = None
        self._closed = False
        self._broken = False
        """A spare died while idle (a broken environment, the OOM killer): start no more;
        loads start their own runners, and the reason shows in their errors."""

    @property
    def enabled(self) -> bool:
        """Whether spares start at all (POLLAMA_SPARE_RUNNER; none on a machine with GPUs)."""
        return self._enabled

    @property
    def pid(self) -> int | None:
        """The idle spare's process id (None when there is none)."""
        return self._spare.process.pid if self._spare else None

    def start(self) -> None:
        """Launch a spare in the background unless one is there or starting (idempotent)."""
        if not self._enabled or self._closed or self._broken or self._spare is not None:
            return
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._spawn())

    def refill_later(self, start: Callable[[], None]) -> None:
        """Call ``start`` (which starts the next spare if the server is idle then) once
        REFILL_IDLE has passed since the latest call. A spare's imports take a quarter of
        a second of CPU, which must not slow the load that took the last one, nor a
        request sent right after it: ``pollama run`` loads, then asks milliseconds later,
        and a spare starting between them made that first reply 0.29 s against 0.24."""
        if self._refill is not None:
            self._refill.cancel()
        if self._enabled and not self._closed:
            self._refill = asyncio.get_running_loop().call_later(REFILL_IDLE, start)

    async def launch(self) -> None:
        """Start a spare now; return once its process runs (not once it has imported)."""
        self.start()
        if self._starting is not None:
            await asyncio.shield(self._starting)

    async def take(self, model: Path, env: Mapping[str, str]) -> tuple[RunnerProcess, int] | None:
        """The spare, told to serve ``model``, with its port; None when there is no live
        spare started with ``env`` (the caller starts a runner of its own)."""
        if self._starting is not None and not self._starting.done():
            await asyncio.shield(self._starting)  # launched already: exec is quick
        spare = self._spare
        if spare is None or spare.env != env:
            return None
        self._spare = None
        if spare.process.has_exited():
            process = spare.process
            log.warning(
                "spare runner pid=%d died while idle (%s); starting no more spares",
                process.pid,
                process.exit_reason,
            )
            self._broken = True
            return None
        try:
            await spare.process.send_line(str(model))
        except (OSError, RuntimeError) as exc:  # it died between the check and the write
            log.warning(
                "spare runner pid=%d died while idle (%s); starting no more spares",
                spare.process.pid,
                exc,
            )
            self._broken = True
            await spare.process.stop()
            return None
        log.info("spare runner pid=%d takes model=%s", spare.process.pid, model.name)
        return spare.process, spare.port

    async def close(self) -> None:
        """Stop the idle spare and start no other. Idempotent."""
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        spare, self._spare = self._spare, None
        if spare is not None:
            await spare.process.stop()

    async def _spawn(self) -> None:
        port = free_port()
        env = runner_environment((), os.environ)
        command = [sys.executable, *RUNNER_MODULE, "--port", str(port)]
        try:
            process = await RunnerProcess.spawn(
                command, env, stop_grace=self._stop_grace, label="spare runner"
            )
        except OSError as exc:
            log.warning("could not start a spare runner: %s", exc)
            return
        if self._closed:
            await process.stop()
            return
        self._spare = Spare(process, port, env)
