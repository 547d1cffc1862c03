"""Load a GGUF with llama.cpp in this process and print the buffer sizes it logs.

Run as a subprocess by the tests, so llama.cpp's stderr is ours to read and a
crash in it cannot take pytest down:

    python tests/llama_probe.py MODEL N_CTX N_SEQ N_BATCH FLASH(-1|0|1) KV_TYPE [EXTRA MMAP]

EXTRA (0|1, default 0) loads with llama.cpp's extra CPU buffer types (AMX, CPU_REPACK);
MMAP (0|1, default 1) maps the file. Nothing is decoded, so a kernel this CPU cannot run
never runs.

Prints one JSON object: {"model", "kv", "compute", "output"} in bytes, each
summed over the devices llama.cpp names, from its "... buffer size = X MiB" lines.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile

_LINE = re.compile(r"(model|KV|compute|output) buffer size =\s+([0-9.]+) MiB")
_KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml_type values


def main() -> None:
    path, n_ctx, n_seq, n_batch, flash, kv_type = sys.argv[1:7]
    extra = sys.argv[7] if len(sys.argv) > 7 else "0"
    mmap = sys.argv[8] if len(sys.argv) > 8 else "1"
    # llama.cpp logs to the C stderr; send it to a file we read back afterwards.
    with tempfile.TemporaryFile(mode="w+") as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            _load(
                path,
                int(n_ctx),
                int(n_seq),
                int(n_batch),
                int(flash),
                kv_type,
                extra=extra == "1",
                mmap=mmap == "1",
            )
        finally:
            os.dup2(saved, 2)
        log.seek(0)
        text = log.read()
    sizes = {"model": 0.0, "kv": 0.0, "compute": 0.0, "output": 0.0}
    for kind, mib in _LINE.findall(text):
        sizes[kind.lower()] += float(mib)
    print(json.dumps({k: round(v * 1024 * 1024) for k, v in sizes.items()}))


def _load(
    path: str,
    n_ctx: int,
    n_seq: int,
    n_batch: int,
    flash: int,
    kv_type: str,
    *,
    extra: bool,
    mmap: bool,
) -> None:
    import llama_cpp as L

    L.llama_backend_init()
    params = L.llama_model_default_params()
    params.use_extra_bufts = extra
    params.load_mode = L.LLAMA_LOAD_MODE_MMAP if mmap else L.LLAMA_LOAD_MODE_NONE
    model = L.llama_model_load_from_file(path.encode(), params)
    if not model:
        raise SystemExit("model failed to load")
    params = L.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_seq_max = n_seq
    params.n_batch = n_batch
    params.n_ubatch = n_batch
    params.flash_attn_type = flash
    params.type_k = params.type_v = _KV_TYPES[kv_type]
    params.swa_full = False
    params.n_outputs_max = n_seq  # as the runner configures it
    ctx = L.llama_init_from_model(model, params)
    if not ctx:
        raise SystemExit("context failed to initialise")
    L.llama_free(ctx)
    L.llama_model_free(model)


if __name__ == "__main__":
    main()
