"""``python -m pollama.runner``: the runner process, started by the server.

It skips the CLI (typer and every command's imports), which the runner never needs.
With ``--model`` it serves that model. Without it, it is a spare: it imports what a
runner needs (llama.cpp, the HTTP stack) at once, then waits for one line on its stdin
naming the model; end-of-file there (the server is gone, or closed its spare) ends it.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import socket
import sys

_PR_SET_NAME = 15
SPARE_NAME = b"pollama-spare"
"""The process name of a spare waiting for its model (tests tell it from a runner)."""
RUNNER_NAME = b"pollama-runner"


def _set_process_name(name: bytes) -> None:
    """The kernel's name for this process (``ps -o comm``, psutil's ``name()``); Linux only."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # a name is a convenience, never a reason to fail


def _listen(port: int) -> socket.socket:
    """A loopback socket listening on ``port``: connections wait in its backlog until
    the HTTP server accepts them, so the server's first /health is never refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


def _await_model() -> str:
    """The model path the server writes on our stdin; "" at end-of-file."""
    return sys.stdin.readline().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pollama.runner")
    parser.add_argument("--model", default="", help="GGUF file to serve (none: a spare)")
    parser.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    args = parser.parse_args(argv)
    sock = None
    if not args.model:
        _set_process_name(SPARE_NAME)
        sock = _listen(args.port)  # the port is ours from now on, however long we wait

    # OMP_WAIT_POLICY is left to the user: "passive" saves CPU on a busy machine, but on a
    # quiet one it halves single-stream decode (docs/benchmarks.md, "Cold start").
    from pollama.errors import PollamaError
    from pollama.logs import configure_logging
    from pollama.runner.app import serve  # llama.cpp and the HTTP stack, before any model
    from pollama.runner.parent import exit_with_parent
    from pollama.settings import Settings

    settings = Settings.from_env()
    configure_logging(settings.debug)
    model = args.model or _await_model()
    if not model:
        return 0
    exit_with_parent()  # a server killed outright must not leave a model's memory held
    if not args.model:
        _set_process_name(RUNNER_NAME)
    try:
        serve(model, args.port, verbose=settings.debug, test_crash=settings.test_crash, sock=sock)
    except PollamaError as exc:
        # The server's status writer keeps this line as the reason the runner died.
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
