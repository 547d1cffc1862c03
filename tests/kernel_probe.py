"""Evaluate one prompt with llama.cpp in a process of its own and save the next-token logits.

    python tests/kernel_probe.py MODEL EXTRA(0|1) OUT.npy

Prints ``{"buffers": [...]}``: the weight buffers llama.cpp made (``CPU_REPACK`` when it
repacked weights). Run as a subprocess, so a kernel this CPU cannot run kills only it.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import llama_cpp as L
import numpy as np

PROMPT = b"<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n"
_BUFFER = re.compile(r"\b([A-Za-z_]+\d*)\s+model buffer size")
buffers: list[str] = []


def _on_log(_level: int, text: bytes, _user: Any) -> None:
    match = _BUFFER.search(text.decode("utf-8", "replace"))
    if match:
        buffers.append(match[1])


def main() -> None:
    path, extra, out = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
    callback = L.llama_log_callback(_on_log)  # kept referenced while llama.cpp logs
    L.llama_log_set(callback, None)
    L.llama_backend_init()
    params = L.llama_model_default_params()
    params.use_extra_bufts = extra
    params.load_mode = L.LLAMA_LOAD_MODE_NONE
    model = L.llama_model_load_from_file(path.encode(), params)
    ctx_params = L.llama_context_default_params()
    ctx_params.n_ctx = 512
    ctx_params.n_threads = ctx_params.n_threads_batch = 2
    ctx = L.llama_init_from_model(model, ctx_params)
    vocab = L.llama_model_get_vocab(model)
    tokens = (L.llama_token * 256)()
    n = L.llama_tokenize(vocab, PROMPT, len(PROMPT), tokens, 256, True, True)
    if L.llama_decode(ctx, L.llama_batch_get_one(tokens, n)) != 0:
        raise SystemExit("decode failed")
    size = L.llama_vocab_n_tokens(vocab)
    np.save(out, np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(size,)))
    print(json.dumps({"buffers": buffers}))
    L.llama_free(ctx)
    L.llama_model_free(model)


if __name__ == "__main__":
    main()
