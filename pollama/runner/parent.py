"""Leaving with the server: a runner (or a quantize job) exits when its server is gone.

The server holds the write end of the child's stdin, so however the server ends —
SIGKILL, the OOM killer, a crash — the child reads end-of-file there, and exits
instead of holding a model's memory for nobody.
"""

from __future__ import annotations

import os
import stat
import threading

EXIT_STATUS = 3


def exit_with_parent() -> None:
    """Watch stdin in a daemon thread; exit the process at its end-of-file. Only a pipe
    or a socket (uvloop's subprocess pipes are socket pairs) is watched: a runner
    started by hand (a terminal, /dev/null) has no server to leave."""
    try:
        mode = os.fstat(0).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return
    except OSError:
        return

    def watch() -> None:
        # The raw fd, not sys.stdin: a daemon thread blocked inside the buffered reader
        # holds its lock, and the interpreter aborts on it when the main thread exits.
        while os.read(0, 4096):
            pass
        os._exit(EXIT_STATUS)

    threading.Thread(target=watch, name="parent-pipe", daemon=True).start()
