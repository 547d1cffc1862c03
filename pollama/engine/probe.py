"""Run the engine probe (``pollama.runner.probe``) in a child process and read how far it got.

The child prints a line after each step; a kernel the CPU cannot run kills it
by a signal. Whatever it printed before dying still counts: the build's own
description, and whether the plain path ran before the extra buffer types
took it down.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

from pollama.engine.crash import signal_name
from pollama.engine.info import EngineInfo

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 120.0
"""Seconds the probe may take (it takes about one on a 2-core machine)."""
PROBE_COMMAND = (sys.executable, "-m", "pollama.runner.probe")


@dataclass(frozen=True)
class ProbeResult:
    info: EngineInfo | None
    plain: tuple[str, ...] | None
    """Weight buffers of the decode on the plain path; None if it did not finish."""
    extra: tuple[str, ...] | None
    """Weight buffers of the decode with the extra buffer types on; None if it did not finish."""
    signal: int | None = None
    """The signal that killed the child, if one did."""
    error: str = ""
    """Why the probe says nothing (it failed without a signal, or timed out)."""
    seconds: float = 0.0

    @property
    def extra_types_used(self) -> list[str]:
        """The extra buffer types the decode with them on really put weights in."""
        return [b for b in self.extra or () if self.info and b in self.info.extra_buffers]

    def describe(self) -> str:
        if self.error:
            return f"the engine probe failed: {self.error}"
        killed = f"killed by {signal_name(self.signal)}" if self.signal else "stopped"
        if self.plain is None:
            return f"the engine probe was {killed} on the plain CPU path"
        if self.extra is None:
            return f"the engine probe was {killed} with the extra CPU buffer types on"
        used = ", ".join(self.extra_types_used) or "no extra buffer type took a weight"
        return f"the engine probe decoded on both CPU paths (extra buffers used: {used})"


def run_probe(
    *, env: Mapping[str, str] | None = None, timeout: float = PROBE_TIMEOUT
) -> ProbeResult:
    """Run the probe child once; never raises for anything the child does."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            PROBE_COMMAND,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(None, None, None, error=f"no answer in {timeout:g} s")
    except OSError as exc:
        return ProbeResult(None, None, None, error=f"cannot start it: {exc}")
    result = parse_probe_output(
        done.stdout.decode("utf-8", "replace"),
        done.returncode,
        done.stderr.decode("utf-8", "replace"),
    )
    seconds = time.monotonic() - started
    log.debug("engine probe: %s seconds=%.2f", result.describe(), seconds)
    return ProbeResult(
        result.info, result.plain, result.extra, result.signal, result.error, seconds
    )


def parse_probe_output(stdout: str, returncode: int, stderr: str = "") -> ProbeResult:
    """What the child's lines and exit say (a pure function, for the tests)."""
    info: EngineInfo | None = None
    paths: dict[str, tuple[str, ...]] = {}
    for line in stdout.splitlines():
        try:
            body = json.loads(line)
            if "info" in body:
                info = EngineInfo.from_json(body["info"])
            elif body.get("path") in ("plain", "extra"):
                paths[body["path"]] = tuple(str(b) for b in body.get("buffers", ()))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # not one of ours: a library printing on stdout
    signal = -returncode if returncode < 0 else None
    error = ""
    if returncode > 0:
        lines = [line for line in stderr.splitlines() if line.strip()]
        error = f"exit status {returncode}" + (f": {lines[-1].strip()}" if lines else "")
    return ProbeResult(info, paths.get("plain"), paths.get("extra"), signal, error)
