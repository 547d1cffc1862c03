"""The runner's output, read line by line: forwarded to logging, last error kept.

A runner that dies says why on stderr ("unknown model architecture", "out of
memory", a ``GGML_ASSERT``) and then exits; the exit code alone tells nobody
anything. ``StatusWriter`` is fed the raw bytes of the runner's merged stdout
and stderr, splits them into lines, hands each line to the ``pollama.runner``
logger, and remembers the last line that reads like an error — cleaned of
timestamps and log-level or C-function prefixes — so ``RunnerDied`` can carry
it to the user.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("pollama.runner")

ERROR_MARKERS = (
    "error",
    "Error",
    "ERROR",
    "fatal",
    "FATAL",
    "panic",
    "failed",
    "out of memory",
    "CUDA error",
    "unknown model architecture",
    "GGML_ASSERT",
    "abort",
)
_WARNING_MARKERS = ("warn", "WARN", "Warning")
UNSUPPORTED_MODEL = (
    "this model is not supported by your version of pollama; you may need to upgrade"
)
# A line longer than this without a newline is cut and treated as a line of its own.
MAX_LINE = 64 * 1024

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_TIMESTAMP = re.compile(
    r"^\[?\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?\]?\s*"
)
# ``ERROR``, ``[ERROR]``, ``ERROR:pollama.runner:`` (logging's default format).
_LEVEL = re.compile(
    r"^\[?(?:DEBUG|INFO|WARN|WARNING|ERROR|CRITICAL|FATAL)\]?(?::[\w.]+)?(?::\s*|\s+)"
)
# ``pollama.runner.engine: …``: a dotted logger name (after a level).
_LOGGER = re.compile(r"^[A-Za-z_]\w*(?:\.\w+)+:\s+(?=\S)")
# ``llama_model_load: error …``: a C function name.
_C_FUNCTION = re.compile(r"^[a-z][a-z0-9]*_[a-z0-9_]*:\s+(?=\S)")


def is_error_line(line: str) -> bool:
    return any(marker in line for marker in ERROR_MARKERS)


def clean_line(line: str) -> str:
    """Strip ANSI colours, a leading timestamp, a log level, a logger name, and a
    C-function prefix: what is left is the message."""
    text = _ANSI.sub("", line).strip()
    text = _TIMESTAMP.sub("", text)
    text, leveled = _LEVEL.subn("", text)
    if leveled:  # after a level comes the logger's name; alone it may be an exception type
        text = _LOGGER.sub("", text)
    text = _C_FUNCTION.sub("", text)
    return text.strip()


def explain_error(line: str) -> str:
    """Rewrite errors a user cannot act on into ones they can (as Ollama does)."""
    if "unknown model architecture" in line:
        return f"{UNSUPPORTED_MODEL} ({line})"
    return line


class StatusWriter:
    """Consumes a runner's output; keeps its last error line.

    Not thread-safe: one reader task feeds it.
    """

    def __init__(self, logger: logging.Logger = log, pid: int | None = None) -> None:
        self._log = logger
        self._pid = pid
        self._partial = b""
        self._last_error = ""

    @property
    def last_error(self) -> str:
        """The last error-looking line, cleaned and explained; "" if none yet."""
        return self._last_error

    def write(self, data: bytes) -> None:
        """Feed raw output; complete lines are processed at once, the rest is held."""
        buffer = self._partial + data
        *lines, self._partial = re.split(rb"\r\n|\r|\n", buffer)
        for raw in lines:
            self.line(raw.decode("utf-8", "replace"))
        while len(self._partial) > MAX_LINE:
            head, self._partial = self._partial[:MAX_LINE], self._partial[MAX_LINE:]
            self.line(head.decode("utf-8", "replace"))

    def close(self) -> None:
        """End of output: process whatever is left without a newline."""
        if self._partial:
            raw, self._partial = self._partial, b""
            self.line(raw.decode("utf-8", "replace"))

    def line(self, line: str) -> None:
        """One complete line (without its newline)."""
        text = line.rstrip()
        if not text.strip():
            return
        prefix = f"[{self._pid}] " if self._pid is not None else ""
        if is_error_line(text):
            cleaned = clean_line(text)
            if cleaned:
                self._last_error = explain_error(cleaned)
            self._log.info("%s%s", prefix, text)
        elif any(marker in text for marker in _WARNING_MARKERS):
            self._log.info("%s%s", prefix, text)
        else:
            self._log.debug("%s%s", prefix, text)
