"""LoRA adapters: loaded with the model, applied to the context per decode step.

llama.cpp applies adapters per context, not per sequence: one ``llama_decode`` runs
every sequence in its batch under the same scales. So each request carries its scale
set (``request_scales``: llama-server's rule), a decode step takes only the slots of
one set (``pick_scales`` chooses it: sets take turns of ``QUANTUM`` steps, so that
nobody starves and the context is not re-reserved every step), and ``Adapters.use`` sets
the context's adapters only when the set changes: llama.cpp rebuilds its graph
reservation on every change.

A model without adapters has the empty scale set ``()`` everywhere; nothing here
runs for it.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from typing import Any

from pollama.protocol.wire import LoraScale
from pollama.runner import llama
from pollama.runner.bindings import L
from pollama.runner.errors import AllocationFailed, EngineError

log = logging.getLogger(__name__)

Scales = tuple[float, ...]
"""One scale per adapter of the model, in ADAPTER order; () for a model without any."""

DEFAULT_SCALE = 1.0
"""Each adapter's scale when a request names none (as Ollama and llama-server load them)."""

QUANTUM = 4
"""Steps one scale set may keep the context while slots of another set wait: switching
costs llama.cpp a graph re-reservation, so sets take turns in runs of steps, not steps."""


def request_scales(requested: Sequence[LoraScale], defaults: Scales) -> Scales:
    """The scales a request decodes with, by llama-server's rule: no ``lora`` list →
    every adapter at its load scale; a list → the adapters it names at their scale, the
    others at 0 (off). An id the model does not have is a 400."""
    if not requested:
        return defaults
    scales = [0.0] * len(defaults)
    for entry in requested:
        if not 0 <= entry.id < len(defaults):
            raise EngineError(_bad_id(entry.id, len(defaults)), status=400)
        scales[entry.id] = entry.scale
    return tuple(scales)


def _bad_id(adapter_id: int, count: int) -> str:
    if count == 0:
        return f"lora id {adapter_id}: this model has no LoRA adapters"
    return f"lora id {adapter_id} is out of range: the model's adapters are 0-{count - 1}"


def pick_scales(active: Sequence[tuple[Scales, int]], current: Scales | None, held: int) -> Scales:
    """The scale set the next step decodes. ``active`` holds each slot with work as its
    (scales, the step it last decoded in); ``current`` is the set on the context, which
    has had ``held`` steps in a row.

    The current set keeps the context while some slot of it has work, for ``QUANTUM``
    steps in a row at most when another set waits; then the set of the slot that has
    waited longest (of equals, the first) takes it. With k sets, none waits more than
    ``QUANTUM × (k - 1)`` steps.
    """
    others = [item for item in active if item[0] != current]
    if len(others) < len(active) and (not others or held < QUANTUM):
        assert current is not None
        return current
    return min(others, key=lambda item: item[1])[0]


class Adapters:
    """The model's adapters in llama.cpp (in ADAPTER order), and the scales on the
    engine's main context."""

    def __init__(self, handles: Sequence[Any] = (), paths: Sequence[str] = ()) -> None:
        self._handles = list(handles)
        self.paths = tuple(paths)
        self.defaults: Scales = (DEFAULT_SCALE,) * len(self._handles)
        self.current: Scales | None = None
        """The scales set on the main context (None: never set)."""
        self.held = 0
        """Steps in a row the main context has decoded with ``current``."""

    def __len__(self) -> int:
        return len(self._handles)

    @classmethod
    def load(
        cls, model: Any, paths: Sequence[str], lg: llama.LlamaLog, *, on_gpu: bool
    ) -> Adapters:
        """Each adapter file loaded onto ``model``; on a failure, those loaded are freed.

        A NULL from llama.cpp, for a file we could read, means the adapter does not fit
        this model (another architecture, a tensor the model lacks, a wrong shape): a
        400 naming the file with llama.cpp's reason, since no retry fixes it. With layers
        on a GPU it may also be memory, so the load loop may back off (as for the model).
        """
        loaded = cls()
        try:
            for path in paths:
                loaded._load_one(model, path, lg, on_gpu=on_gpu)
        except BaseException:
            loaded.free()
            raise
        return loaded

    def _load_one(self, model: Any, path: str, lg: llama.LlamaLog, *, on_gpu: bool) -> None:
        if not os.access(path, os.R_OK):
            raise EngineError(f"LoRA adapter {path} cannot be read")
        lg.begin()
        handle = L.llama_adapter_lora_init(model, path.encode())
        if not handle:
            reason = lg.reason()
            log.debug("adapter load failed: path=%s on_gpu=%s reason=%s", path, on_gpu, reason)
            message = f"the LoRA adapter {path} does not fit this model"
            message = f"{message}: {reason}" if reason else message
            raise AllocationFailed(message) if on_gpu else EngineError(message, status=400)
        self._handles.append(handle)
        self.paths = (*self.paths, path)
        self.defaults = (*self.defaults, DEFAULT_SCALE)

    def scales_for(self, requested: Sequence[LoraScale]) -> Scales:
        return request_scales(requested, self.defaults)

    def use(self, ctx: Any, scales: Scales) -> bool:
        """Put ``scales`` on the main context for a step, if they are not on it already;
        whether that changed the scales it had."""
        if scales == self.current:
            self.held += 1
            return False
        self.set(ctx, scales)
        changed = self.current is not None
        self.current, self.held = scales, 1
        return changed

    def set(self, ctx: Any, scales: Scales) -> None:
        """Put ``scales`` on ``ctx`` (llama.cpp leaves out the adapters at 0)."""
        n = len(self._handles)
        handles = (L.llama_adapter_lora_p_ctypes * n)(*self._handles)
        values = (ctypes.c_float * n)(*scales)
        status = L.llama_set_adapters_lora(ctx, handles, n, values)
        if status != 0:
            raise EngineError(f"llama.cpp could not set the LoRA adapters (status {status})")

    def free(self) -> None:
        """Free every adapter; before the model (which would free them too, and after
        which their handles dangle)."""
        for handle in self._handles:
            L.llama_adapter_lora_free(handle)
        self._handles = []
        self.paths, self.defaults = (), ()
        self.current, self.held = None, 0
