"""A runner killed by the CPU, explained to the person who has to fix it.

"signal: SIGILL" tells nobody what to do. A llama.cpp compiled with
``-march=native`` on one machine (pip's default) and run on another, or
one whose AMX kernels a VM traps, dies by SIGILL on its first matrix
product; a kernel it cannot run can also surface as SIGSEGV or SIGBUS.
"""

from __future__ import annotations

import signal

CRASH_SIGNALS = frozenset({signal.SIGILL, signal.SIGSEGV, signal.SIGBUS})
"""Signals that say the engine's code, not the OS or a person, ended the runner."""

_WHAT = {
    signal.SIGILL: "illegal instruction",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGBUS: "bus error",
}


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def crash_signal(returncode: int | None) -> int | None:
    """The crash signal a process with this return code died of, or None."""
    if returncode is None or returncode >= 0:
        return None
    return -returncode if -returncode in CRASH_SIGNALS else None


def rebuild_command(cmake_args: str, version: str) -> str:
    pin = f"=={version}" if version else ""
    return (
        f'CMAKE_ARGS="{cmake_args}" pip install --no-cache-dir --force-reinstall '
        f"--no-deps llama-cpp-python{pin}"
    )


def explain_crash(
    number: int, stage: str, *, cmake_args: str, version: str, next_load: str = ""
) -> str:
    """The message for a runner the engine crashed; ``stage`` says when ("while loading
    the model"). Names the signal, what it means, what happens next, and the rebuild
    that avoids it."""
    what = f"{signal_name(number)} ({_WHAT.get(signal.Signals(number), 'crash')})"
    fix = rebuild_command(cmake_args, version)
    then = f"; {next_load}" if next_load else ""
    if number == signal.SIGILL:
        return (
            "the llama.cpp build uses CPU instructions this machine cannot run: the runner "
            f"was killed by {what} {stage}{then}; rebuild it for this CPU with: {fix}"
        )
    return (
        f"the llama.cpp engine crashed: the runner was killed by {what} {stage}{then}; if "
        f"the build uses CPU instructions this machine cannot run, rebuild it for this CPU "
        f"with: {fix}"
    )
