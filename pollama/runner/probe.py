"""The engine probe's child: run this llama.cpp build's CPU kernels once and say what happened.

    python -m pollama.runner.probe

Prints one JSON object per line on stdout, each as soon as it is known:

1. ``{"info": {...}}``: what the build says about itself (``EngineInfo``);
2. ``{"path": "plain", "buffers": [...]}``: a tiny model (``pollama.engine.probe_model``)
   decoded a batch and a single token with the extra buffer types off;
3. ``{"path": "extra", "buffers": [...]}``: the same with them on.

A kernel this CPU cannot run kills the process (SIGILL, usually): the parent
(``pollama.engine.probe``) reads how far it got from the lines it has.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from pollama.engine.probe_model import BOS, EOS, write_probe_model
from pollama.runner.bindings import L
from pollama.runner.crash_hook import crash_if_asked
from pollama.runner.engine_info import engine_info
from pollama.settings import Settings

_BUFFER = re.compile(r"\b([A-Za-z_]+\d*)\s+model buffer size")
_BATCH = 8


class _Log:
    """llama.cpp's log, kept (not printed): the names of the weight buffers it made."""

    def __init__(self) -> None:
        self.buffers: list[str] = []
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._callback = L.llama_log_callback(self._on_log)  # must outlive every log call
        L.llama_log_set(self._callback, None)

    def _on_log(self, _level: int, text: bytes, _user: Any) -> None:
        line = text.decode("utf-8", "replace")
        with self._lock:
            self.lines.append(line)
            match = _BUFFER.search(line)
            if match and match[1] not in self.buffers:
                self.buffers.append(match[1])

    def take(self) -> list[str]:
        with self._lock:
            buffers, self.buffers = self.buffers, []
            return buffers


def main() -> int:
    settings = Settings.from_env()
    L.llama_backend_init()
    log = _Log()
    _emit({"info": engine_info().to_json()})
    with tempfile.TemporaryDirectory(prefix="pollama-probe-") as tmp:
        path = write_probe_model(Path(tmp) / "probe.gguf")
        for extra in (False, True):
            crash_if_asked(settings.test_crash, "probe", extra_buffers=extra)
            error = _decode(path, extra)
            if error:
                print(error + "\n" + "".join(log.lines[-20:]), file=sys.stderr)
                return 1
            _emit({"path": "extra" if extra else "plain", "buffers": log.take()})
    return 0


def _decode(path: Path, extra: bool) -> str:
    """Load the probe model and decode a batch then one token; "" or what failed."""
    params = L.llama_model_default_params()
    params.use_extra_bufts = extra
    params.load_mode = L.LLAMA_LOAD_MODE_NONE
    model = L.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        return "the probe model did not load"
    ctx_params = L.llama_context_default_params()
    ctx_params.n_ctx = 64
    ctx_params.n_batch = ctx_params.n_ubatch = _BATCH
    ctx_params.n_threads = ctx_params.n_threads_batch = 1
    ctx_params.no_perf = True
    ctx = L.llama_init_from_model(model, ctx_params)
    if not ctx:
        L.llama_model_free(model)
        return "the probe context was not created"
    batch = L.llama_batch_init(_BATCH, 0, 1)
    try:
        # A batch of several rows, then one: AMX, for one, runs tiles only for the first.
        for start, count in ((0, _BATCH), (_BATCH, 1)):
            batch.n_tokens = count
            for i in range(count):
                batch.token[i] = BOS if start + i == 0 else EOS
                batch.pos[i] = start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i == count - 1
            if L.llama_decode(ctx, batch) != 0:
                return "the probe decode failed"
        return ""
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        L.llama_model_free(model)


def _emit(body: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(body) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
