"""The quantizer child: llama.cpp's ``llama_model_quantize`` in a process of its own.

    python -m pollama.runner.quantize SRC DST TYPE [--threads N] [--parent-pipe]

A crash or a kill here cannot take ``pollama serve`` down; the server removes DST
when this process fails. Progress is llama.cpp's own: it logs one line per tensor
(``[  12/ 272] blk.0.ffn_up.weight - [...], type = f16, converting to q4_K .. size =
…``), complete when the tensor is written; each becomes a ``TensorDone`` line on
stdout (``pollama.protocol.quantize``). With ``--parent-pipe`` the process exits when
its stdin reaches end-of-file, i.e. when the server that started it is gone.
"""

from __future__ import annotations

import argparse
import ctypes
import re
import sys

from pollama.protocol.quantize import ALIASES, QUANTIZE_TYPES, TensorDone
from pollama.runner.bindings import L
from pollama.runner.llama import LlamaLog
from pollama.runner.parent import exit_with_parent

# "[  12/ 272] blk.0.ffn_up.weight        - [  576,  1536, ...], type =    f16, ..."
_TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)\s+-")


class _ProgressLog(LlamaLog):
    """llama.cpp's log, each finished tensor's line also reported on stdout."""

    def _line(self, level: int, line: str) -> None:
        super()._line(level, line)
        match = _TENSOR_LINE.match(line)
        if match is not None:
            done = TensorDone(match[3], int(match[1]), int(match[2]))
            sys.stdout.write(done.to_line() + "\n")
            sys.stdout.flush()


def ftype_of(name: str) -> int:
    """llama.cpp's ``llama_ftype`` for a type name (any case); ValueError if unknown."""
    upper = name.upper()
    upper = ALIASES.get(upper, upper)
    if upper not in QUANTIZE_TYPES:
        raise ValueError(f"unsupported quantization type {name}")
    return int(getattr(L, f"LLAMA_FTYPE_MOSTLY_{upper}"))


def quantize(src: str, dst: str, ftype: int, threads: int, log: LlamaLog) -> None:
    """Write ``dst``, ``src`` quantized to ``ftype``; RuntimeError with llama.cpp's reason."""
    params = L.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads  # 0: llama.cpp's own count
    log.begin()
    if L.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(log.explain("llama.cpp could not quantize the model"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pollama.runner.quantize")
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("type")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--parent-pipe", action="store_true")
    args = parser.parse_args(argv)
    if args.parent_pipe:
        exit_with_parent()
    try:
        ftype = ftype_of(args.type)
        quantize(args.src, args.dst, ftype, args.threads, _ProgressLog(verbose=False))
    except (ValueError, RuntimeError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
