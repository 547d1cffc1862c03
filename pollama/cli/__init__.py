"""The ``pollama`` command line (``app``), with short ways in for the starts users wait for.

``serve`` takes no arguments: it skips building the typer app, whose commands import
the clients, ``fit``'s GGUF tooling and numpy, none of which the server needs before
its first request. ``run`` with no server to talk to starts one before it imports
the command line (``launch``), so the two start at once.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["serve"]:
        from pollama.cli.serve import serve

        serve()
        return
    args = sys.argv[1:]
    if args[:1] == ["run"] and len(args) > 1 and not {"-h", "--help"} & set(args):
        from pollama.cli.launch import start_early
        from pollama.settings import Settings

        start_early(Settings.from_env())
    from pollama.cli.app import app

    app()
