"""The load loop: settle a layout with the runner's own memory figures, then load it.

The server's estimate is a first guess. The runner knows better (exact buffer
and compute-graph sizes from llama.cpp), so loading is a conversation:

With no GPU, step 1 is skipped: every figure gives the same all-CPU layout.

1. Send the current layout with operation ``fit`` (report memory, allocate
   nothing); lay out again from the figures that come back. Keep going while
   the new layout is one not tried yet and places no more layers than the
   current one — more information only ever shrinks what fits.
2. If instead the figures swing between N and N+k layers (k > 1, typically a
   compute graph that moves on and off a GPU), and the user did not force
   ``num_gpu``, try each count in between, highest first, with ``num_gpu``
   forced to it; accept the first that the runner accepts and that a fresh
   layout of its figures would place at least as many layers for.
3. Repeat 1–2 with ``alloc`` (buffers really allocated). When an allocation
   fails, hold back another tenth of each GPU's free memory (the backoff) and
   lay out again; give up once the backoff would pass the whole of it, and at
   once if the user forced ``num_gpu`` (no other layout would honour it).
4. ``commit`` the last layout once: the runner reads the weights.

Any failure, an exception from the client included, sends ``close`` before it
propagates, so a failed load leaves nothing allocated in the runner.
``LoadRequiredFull`` and ``InsufficientMemory`` from the layout functions pass
through unchanged: the scheduler tells them apart.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from pollama.devices.types import DeviceID, DeviceInfo, SystemInfo
from pollama.errors import LoadError
from pollama.memory.layout import Layout, LayoutPolicy, create_layout
from pollama.memory.types import BackendMemory
from pollama.protocol.wire import LoadOperation, LoadRequest, LoadResponse

log = logging.getLogger(__name__)

BACKOFF_STEP = 0.1
# Backoff is kept in whole steps so ten increments make exactly 1.0.
_MAX_BACKOFF_STEPS = 10


class LoadClient(Protocol):
    async def load(self, request: LoadRequest) -> LoadResponse: ...


@dataclass(frozen=True)
class LoadResult:
    layout: Layout
    memory: BackendMemory
    """The runner's figures from the commit (or the last ones it reported)."""

    def devices(self) -> list[DeviceID]:
        """The GPUs the final layout uses, each once, in layout order."""
        return list(dict.fromkeys(self.layout.devices()))


class LoadLoop:
    """One load of one model into one runner. Use ``await LoadLoop(...).run()``."""

    def __init__(
        self,
        client: LoadClient,
        system: SystemInfo,
        gpus: Sequence[DeviceInfo],
        *,
        request: LoadRequest,
        layout: Layout,
        memory: BackendMemory,
        policy: LayoutPolicy,
    ) -> None:
        self._client = client
        self._system = system
        self._gpus = tuple(gpus)
        self._template = request
        self.layout = layout
        self.memory = memory
        self._policy = policy
        self._backoff_steps = 0
        self._seen: set[str] = set()

    @property
    def backoff(self) -> float:
        return self._backoff_steps * BACKOFF_STEP

    async def run(self) -> LoadResult:
        try:
            for operation in self._operations():
                await self._settle(operation)
            response = await self._send(LoadOperation.COMMIT, self.layout)
            if not response.success:
                raise LoadError(_with_detail("failed to commit memory for model", response))
        except BaseException:
            await self._close()
            raise
        log.info("model loaded: layout=%s", self.layout)
        return LoadResult(self.layout, self.memory)

    def _operations(self) -> tuple[LoadOperation, ...]:
        """With no GPU there is one layout (all on the CPU) whatever the figures say, so
        the dry run could change nothing: the load allocates at once, and the allocation
        reports the same measured figures (and fails, backs off, closes as before)."""
        if not self._gpus:
            return (LoadOperation.ALLOC,)
        return (LoadOperation.FIT, LoadOperation.ALLOC)

    async def _settle(self, operation: LoadOperation) -> None:
        """Iterate ``operation`` until the layout stops changing and the runner accepts it."""
        response = await self._send(operation, self.layout)
        while True:
            new = self._create_layout(self.memory)
            log.debug("%s: new layout %s (was %s)", operation, new, self.layout)
            if new.digest() not in self._seen and new.count <= self.layout.count:
                self.layout = new
                response = await self._send(operation, new)
                continue
            if self._policy.num_gpu < 0 and new.count - self.layout.count > 1:
                if await self._explore(operation, new.count):
                    return
            if response.success:
                return
            # Our figures said this fits and the runner could not allocate it: free
            # memory is lower than reported, or changing. Hold more back and retry.
            response = await self._back_off(operation, response)

    async def _explore(self, operation: LoadOperation, above: int) -> bool:
        """Try the layer counts strictly between the current layout and ``above``
        (highest first); adopt the first one that holds. Seen layouts are forgotten
        on success: counting up, we must be able to come back down."""
        for count in range(above - 1, self.layout.count - 1, -1):
            log.debug("%s: exploring %d layers", operation, count)
            trial = self._create_layout(self.memory, num_gpu=count)
            response = await self._send(operation, trial, remember=False)
            if not response.success or response.memory is None:
                continue
            verify = self._create_layout(response.memory)
            if trial.count <= verify.count:
                self.layout, self.memory = trial, response.memory
                self._seen.clear()
                self._seen.add(trial.digest())
                return True
        return False

    async def _back_off(self, operation: LoadOperation, failed: LoadResponse) -> LoadResponse:
        """Raise the backoff until the layout changes, then send the new layout."""
        while True:
            if self._policy.num_gpu >= 0:
                raise LoadError(
                    _with_detail(
                        f"memory layout cannot be allocated with num_gpu = {self._policy.num_gpu}",
                        failed,
                    )
                )
            if self._backoff_steps >= _MAX_BACKOFF_STEPS:
                log.warning("memory layout cannot be allocated: %s", self.layout)
                raise LoadError(_with_detail("memory layout cannot be allocated", failed))
            self._backoff_steps += 1
            log.info("model layout did not fit, applying backoff %.2f", self.backoff)
            new = self._create_layout(self.memory)
            if new != self.layout:
                self.layout = new
                return await self._send(operation, new)

    async def _send(
        self, operation: LoadOperation, layout: Layout, *, remember: bool = True
    ) -> LoadResponse:
        request = replace(self._template, operation=operation, layout=layout)
        response = await self._client.load(request)
        log.debug("%s %s: success=%s error=%s", operation, layout, response.success, response.error)
        if remember:
            self._seen.add(layout.digest())
            if response.memory is not None:
                self.memory = response.memory
        return response

    def _create_layout(self, memory: BackendMemory, *, num_gpu: int | None = None) -> Layout:
        policy = replace(self._policy, backoff=self.backoff)
        if num_gpu is not None:
            policy = replace(policy, num_gpu=num_gpu)
        return create_layout(self._system, self._gpus, memory, policy)

    async def _close(self) -> None:
        try:
            await self._client.load(replace(self._template, operation=LoadOperation.CLOSE))
        except Exception as exc:  # the runner may be the reason we are failing
            log.debug("closing the model after a failed load: %s", exc)


async def load_model(
    client: LoadClient,
    system: SystemInfo,
    gpus: Sequence[DeviceInfo],
    *,
    request: LoadRequest,
    layout: Layout,
    memory: BackendMemory,
    policy: LayoutPolicy,
) -> LoadResult:
    """Run the load loop from an estimated ``layout`` and ``memory``; see the module doc."""
    loop = LoadLoop(
        client, system, gpus, request=request, layout=layout, memory=memory, policy=policy
    )
    return await loop.run()


def _with_detail(message: str, response: LoadResponse) -> str:
    return f"{message}: {response.error}" if response.error else message
