"""A test-only hook: a process that sends itself a signal where the engine would first decode.

``POLLAMA_TEST_CRASH=WHERE:SIGNAL[:always]`` (``Settings.test_crash``) makes the
runner (``WHERE=runner``, at its warm-up decode) or the engine probe
(``WHERE=probe``) die by ``SIGNAL`` as a CPU that cannot run a kernel would:
with the extra buffer types on only, or on either path with ``always``.
Unset, it does nothing.
"""

from __future__ import annotations

import os
import signal


def crash_if_asked(spec: str, where: str, *, extra_buffers: bool) -> None:
    if not spec:
        return
    parts = spec.split(":")
    if len(parts) < 2 or parts[0] != where:
        return
    always = parts[2:] == ["always"]
    if extra_buffers or always:
        os.kill(os.getpid(), signal.Signals[parts[1]])
