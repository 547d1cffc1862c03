"""Quantize on create: ``/api/create`` with ``quantize`` (or the older ``quantization``).

Everything is checked before the progress stream begins, so a mistake is a 400: the
type (``llm.quantize.quantize_type``) and the source, which must hold unquantized
weights (``check_source``). Then the quantizer child (``llm.quantize``) fills a
partial file in the store's ``blobs/``; the file is hashed and renamed into place
(``BlobStore.file_to_fill`` / ``adopt``) and becomes the new model's weights, its
other layers as the create asks (a ``from`` model's template, parameters, … kept).
A client that leaves mid-way cancels the work: the child is killed, the partial file
removed, and no manifest is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pollama.devices.system import system_info
from pollama.ggufmeta import GGUFModel, read_model
from pollama.llm.quantize import TensorBytes, check_source, quantize_type, run_quantizer
from pollama.store.blobs import BlobStore
from pollama.store.lock import to_thread_to_the_end
from pollama.store.progress import Progress

PROGRESS_DIGEST = "0000000000000000000"
"""The digest Ollama's create streams on its quantizing lines (one progress bar)."""


@dataclass(frozen=True)
class QuantizeJob:
    source: GGUFModel
    source_type: str
    """``F16``, ``BF16`` or ``F32``."""
    target: str
    """``Q4_K_M``, …"""

    @property
    def status(self) -> str:
        return f"quantizing {self.source_type} model to {self.target}"


def requested_type(quantize: str | None, quantization: str | None) -> str | None:
    """The canonical type a create asks for; None for none; BadRequest for an unknown one."""
    name = quantize or quantization
    return quantize_type(name) if name else None


async def plan_quantize(source: Path, target: str) -> QuantizeJob:
    """The job for quantizing the GGUF at ``source``; BadRequest unless it may be."""
    gguf = await asyncio.to_thread(read_model, source)
    return QuantizeJob(gguf, check_source(gguf), target)


async def run_quantize(
    job: QuantizeJob, blobs: BlobStore, report: Callable[[Progress], None]
) -> str:
    """Quantize into the store; the new blob's digest. Progress is reported as Ollama
    streams it: ``completed`` of ``total`` (the source's size) under one digest."""
    total = job.source.file_size
    last = -1

    def advance(fraction: float) -> None:
        nonlocal last
        completed = round(fraction * total)
        if completed > last:
            last = completed
            report(Progress(job.status, PROGRESS_DIGEST, total, completed))

    advance(0.0)
    threads = system_info().thread_count
    with blobs.file_to_fill() as partial:
        await run_quantizer(
            job.source.path,
            partial,
            job.target,
            threads=threads,
            progress=TensorBytes.of(job.source),
            report=advance,
        )
        advance(1.0)
        report(Progress("verifying conversion"))
        return await to_thread_to_the_end(blobs.adopt, partial)  # the lock outlasts it
