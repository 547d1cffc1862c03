"""The runner as an operating-system process: start it, read its output, reap it, stop it.

- ``free_port()`` binds 127.0.0.1:0, reads the port the kernel chose, closes.
- ``runner_environment()`` is the server's environment with the GPU
  visibility variables restricted to the chosen GPUs.
- ``RunnerProcess`` owns the child: one task feeds its merged stdout/stderr
  to a ``StatusWriter``; another waits for it to exit and records why
  (the last error line, else the exit status or signal). ``stop()`` sends
  SIGTERM, then SIGKILL after a grace period, and waits; it is idempotent.

The child's stdin is a pipe the server never writes to: when the server dies,
however it dies, the runner sees end-of-file there and can exit instead of
holding GPU memory as an orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Mapping, Sequence

from pollama.devices.types import DeviceInfo
from pollama.llm.status import StatusWriter

log = logging.getLogger(__name__)

# Environment variables worth logging when a runner starts (never the whole env).
_LOGGED_PREFIXES = (
    "OLLAMA_",
    "POLLAMA_",
    "CUDA_",
    "HIP_",
    "ROCR_",
    "ROCM_",
    "GPU_",
    "HSA_",
    "GGML_",
)
_LOGGED_NAMES = ("PATH", "LD_LIBRARY_PATH")
_VISIBLE_DEVICES = {"CUDA": "CUDA_VISIBLE_DEVICES", "ROCm": "HIP_VISIBLE_DEVICES"}
# After the process exits, how long its output may take to reach end-of-file
# (a grandchild could hold the pipe open forever).
_DRAIN_TIMEOUT = 2.0
_READ_CHUNK = 64 * 1024


def free_port() -> int:
    """A loopback port that was free a moment ago (the runner binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def runner_environment(gpus: Sequence[DeviceInfo], base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with each chosen library's visible-devices variable listing exactly
    the chosen GPUs; libraries with no chosen GPU are left as they are. Library
    paths are kept: the runner loads the same llama.cpp the server found."""
    env = dict(base)
    by_library: dict[str, list[str]] = {}
    for gpu in gpus:
        by_library.setdefault(gpu.library, [])
        if gpu.id.id not in by_library[gpu.library]:
            by_library[gpu.library].append(gpu.id.id)
    for library, ids in by_library.items():
        variable = _VISIBLE_DEVICES.get(library)
        if variable:
            env[variable] = ",".join(ids)
    if "CUDA" in by_library:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # ordinals as nvidia-smi/NVML number them
    return env


def relevant_environment(env: Mapping[str, str]) -> dict[str, str]:
    return {
        k: v for k, v in sorted(env.items()) if k.startswith(_LOGGED_PREFIXES) or k in _LOGGED_NAMES
    }


class RunnerProcess:
    """A started runner child process. Create with ``await RunnerProcess.spawn(...)``."""

    def __init__(self, proc: asyncio.subprocess.Process, stop_grace: float) -> None:
        self._proc = proc
        self._stop_grace = stop_grace
        self.status = StatusWriter(pid=proc.pid)
        self._exited = asyncio.Event()
        self._exit_reason = ""
        self._stopping = False
        self._reader = asyncio.create_task(self._read_output(), name=f"runner-{proc.pid}-output")
        self._reaper = asyncio.create_task(self._reap(), name=f"runner-{proc.pid}-reaper")

    @classmethod
    async def spawn(
        cls,
        command: Sequence[str],
        env: Mapping[str, str],
        *,
        stop_grace: float = 5.0,
        label: str = "runner",
    ) -> RunnerProcess:
        log.info("starting %s: %s", label, " ".join(command))
        log.debug(
            "runner environment: %s",
            " ".join(f"{k}={v}" for k, v in relevant_environment(env).items()),
        )
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
        )
        return cls(proc, stop_grace)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def has_exited(self) -> bool:
        return self._exited.is_set()

    @property
    def stopping(self) -> bool:
        """Whether we asked it to stop (so a signal it dies of is ours, not a crash)."""
        return self._stopping

    @property
    def exit_reason(self) -> str:
        """Why the process ended: its last error line, else its exit status; "" while alive."""
        return self._exit_reason

    async def wait_exited(self, timeout: float | None = None) -> bool:
        """Wait until the process has exited and its output is drained; False on timeout."""
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def send_line(self, text: str) -> None:
        """One line on the child's stdin (a spare runner reads its model path there)."""
        stdin = self._proc.stdin
        assert stdin is not None
        stdin.write(text.encode() + b"\n")
        await stdin.drain()

    def kill(self) -> None:
        """SIGKILL now: for a runner that cannot be asked (stopped by a signal, wedged)."""
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()

    async def stop(self) -> None:
        """SIGTERM, SIGKILL after the grace period, wait. Safe to call any number of times."""
        self._stopping = True
        if not self._exited.is_set() and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()
            if not await self.wait_exited(self._stop_grace):
                log.warning("runner pid=%d ignored SIGTERM; killing it", self.pid)
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
        await asyncio.shield(self._reaper)

    async def _read_output(self) -> None:
        stream = self._proc.stdout
        assert stream is not None
        while chunk := await stream.read(_READ_CHUNK):
            self.status.write(chunk)

    async def _reap(self) -> None:
        returncode = await self._proc.wait()
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), _DRAIN_TIMEOUT)
        except TimeoutError:
            self._reader.cancel()
        except Exception as exc:  # a broken pipe must not hide the exit
            log.debug("reading runner output: %s", exc)
        self.status.close()
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._exit_reason = self._describe_exit(returncode)
        level = logging.DEBUG if self._stopping else logging.ERROR
        log.log(level, "runner pid=%d terminated: %s", self.pid, self._exit_reason)
        self._exited.set()

    def _describe_exit(self, returncode: int) -> str:
        last = self.status.last_error
        if returncode != 0 and last and not self._stopping:
            return last
        if returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = str(-returncode)
            return f"signal: {name}"
        return f"exit status {returncode}" + (f": {last}" if last else "")
