"""Requantize a GGUF with llama.cpp's own quantizer, in a process of its own.

    python tests/requantize.py SRC DST TYPE

TYPE is a llama_ftype name such as Q4_0; every tensor, the token embeddings
included, gets it (llama.cpp's ``--pure``), so the test model exercises the
kernels that type has. Quantizing runs no matrix products: it is safe on any CPU.
"""

from __future__ import annotations

import ctypes
import sys

import llama_cpp as L


def main() -> None:
    src, dst, kind = sys.argv[1:4]
    params = L.llama_model_quantize_default_params()
    params.ftype = getattr(L, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.allow_requantize = True
    params.pure = True
    params.nthread = 2
    if L.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"quantizing {src} to {kind} failed")


if __name__ == "__main__":
    main()
