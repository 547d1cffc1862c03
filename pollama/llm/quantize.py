"""Quantize a GGUF in a child process, ``python -m pollama.runner.quantize``.

The server never imports llama.cpp: the child is spawned by module name, so a crash
or a kill takes only the child. What is allowed is decided here, before anything
runs (``quantize_type``, ``check_source``: Ollama's words in a 400); ``run_quantizer``
then reads the child's ``TensorDone`` lines and turns them into the fraction of the
source's tensor bytes written, and kills the child (and waits for it) when its caller
is cancelled, so the caller can remove the partial file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pollama.errors import BadRequest, QuantizeFailed
from pollama.ggufmeta import GGUFModel
from pollama.protocol.quantize import ALIASES, QUANTIZE_TYPES, SOURCE_TYPES, TensorDone

log = logging.getLogger(__name__)

QUANTIZE_COMMAND = (sys.executable, "-m", "pollama.runner.quantize")
ONLY_UNQUANTIZED = "quantization is only supported for F16, BF16 and F32 models"
# Tensor types that hold plain numbers: anything else is already quantized.
_PLAIN = frozenset({*SOURCE_TYPES, "F64", "I8", "I16", "I32", "I64"})
_STDERR_LINES = 20


def quantize_type(name: str) -> str:
    """The canonical type (``Q4_K_M``) for a requested one, in any case, as Ollama takes
    it; BadRequest in Ollama's words for one not supported."""
    upper = name.strip().upper()
    upper = ALIASES.get(upper, upper)
    if upper not in QUANTIZE_TYPES:
        supported = ", ".join(QUANTIZE_TYPES)
        raise BadRequest(f"unsupported quantization type {name} - supported types are {supported}")
    return upper


def check_source(gguf: GGUFModel) -> str:
    """The file type of a model that may be quantized (``F16``); BadRequest, in Ollama's
    words, for one whose file type or any tensor is quantized already."""
    if gguf.file_type not in SOURCE_TYPES or any(t.type_name not in _PLAIN for t in gguf.tensors):
        raise BadRequest(ONLY_UNQUANTIZED)
    return gguf.file_type


@dataclass
class TensorBytes:
    """How much of the source's tensor data llama.cpp has written, by tensor name."""

    sizes: dict[str, int]
    done: int = 0

    @classmethod
    def of(cls, gguf: GGUFModel) -> TensorBytes:
        return cls({t.name: t.n_bytes for t in gguf.tensors})

    def finished(self, record: TensorDone) -> float:
        """The fraction written once ``record``'s tensor is (monotonic, at most 1)."""
        self.done += self.sizes.pop(record.tensor, 0)
        total = self.done + sum(self.sizes.values())
        return min(1.0, self.done / total) if total else record.index / max(1, record.count)


async def run_quantizer(
    src: Path,
    dst: Path,
    kind: str,
    *,
    threads: int,
    progress: TensorBytes,
    report: Callable[[float], None],
) -> None:
    """Quantize ``src`` into ``dst`` (an existing file, overwritten) as ``kind``, calling
    ``report`` with the fraction done after each tensor. QuantizeFailed if the child
    fails or dies; cancelled, the child is killed before this returns."""
    command = [*QUANTIZE_COMMAND, str(src), str(dst), kind, "--threads", str(threads)]
    log.info("quantizing: src=%s type=%s threads=%d", src.name, kind, threads)
    proc = await asyncio.create_subprocess_exec(
        *command,
        "--parent-pipe",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    errors = asyncio.create_task(_tail(proc.stderr))
    try:
        assert proc.stdout is not None
        async for line in proc.stdout:
            record = TensorDone.from_line(line)
            if record is not None:
                report(progress.finished(record))
        code = await proc.wait()
        lines = await errors
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        errors.cancel()
        await asyncio.shield(proc.wait())
        log.info("quantizing stopped: pid=%d type=%s", proc.pid, kind)
        raise
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
    if code != 0:
        raise QuantizeFailed(f"quantizing the model to {kind} failed: {_reason(code, lines)}")
    log.info("quantized: type=%s", kind)


async def _tail(stream: asyncio.StreamReader | None) -> list[str]:
    """The last lines a stream gave before its end."""
    lines: deque[str] = deque(maxlen=_STDERR_LINES)
    if stream is not None:
        async for raw in stream:
            if text := raw.decode(errors="replace").strip():
                lines.append(text)
    return list(lines)


def _reason(code: int, lines: list[str]) -> str:
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1]
    if code < 0:
        try:
            return f"the quantizer was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"the quantizer was killed by signal {-code}"
    return lines[-1] if lines else f"the quantizer exited with status {code}"
