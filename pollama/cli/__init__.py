"""The ``pollama`` command line (``app``), with a short way in for ``pollama serve``.

``serve`` takes no arguments, and it is the start users wait for: it skips building the
typer app, whose commands import the clients, ``fit``'s GGUF tooling and numpy, none
of which the server needs before its first request.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["serve"]:
        from pollama.cli.serve import serve

        serve()
        return
    from pollama.cli.app import app

    app()
