"""Which CPU path runners load with: llama.cpp's extra buffer types (AMX, CPU_REPACK) or not.

llama.cpp's optional CPU kernels are its fastest, and they are the ones that
trap where a build met a CPU it was not made for (AMX in some VMs). Nothing is
turned off by guesswork:

1. Once per (engine build, CPU), the probe child runs every kernel family on
   a tiny model, first on the plain path, then with the extra buffer types.
   What it found is kept under the state directory (``verdicts``).
2. ``auto`` (POLLAMA_CPU_EXTRA_BUFFERS) loads with the extra buffer types
   exactly where they ran; ``on`` and ``off`` override.
3. Every runner is a second witness: one killed by SIGILL with them on (or
   SIGSEGV/SIGBUS while loading) turns them off for this build and CPU, and
   the scheduler loads the model again without them. One killed by SIGILL
   without them while loading (its warm-up decode) means the build cannot run
   here at all: later loads fail at once with the same explanation instead of
   crashing again.

``decide`` is the pure rule; ``CpuPath`` holds the state and does the I/O.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pollama.devices.cpu import CpuInfo, read_cpu
from pollama.engine.build import EngineBuild, find_build
from pollama.engine.crash import rebuild_command, signal_name
from pollama.engine.info import EngineInfo
from pollama.engine.kernels import PLAIN, ExtraBuffers
from pollama.engine.probe import ProbeResult, run_probe
from pollama.engine.verdicts import ExtraPath, Verdict, VerdictStore, now
from pollama.errors import EngineUnusable
from pollama.settings import Settings

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class Decision:
    extra: ExtraBuffers
    why: str


def verdict_from_probe(result: ProbeResult) -> Verdict | None:
    """What a probe run proves; None when it proves nothing (it failed on its own)."""
    if result.error:
        return None
    if result.plain is None:
        path = ExtraPath.ENGINE_CRASHES if result.signal else None
    elif result.extra is None:
        path = ExtraPath.TRAPS if result.signal else None
    else:
        path = ExtraPath.WORKS
    if path is None:
        return None
    return Verdict(path, result.describe(), result.info, now())


def on_with(info: EngineInfo | None) -> ExtraBuffers:
    if info is None:
        return ExtraBuffers(on=True)
    return ExtraBuffers(True, info.extra_buffers, frozenset(info.cpu_features))


def decide(mode: str, verdict: Verdict | None, *, fix: str) -> Decision:
    """The path a load takes. Raises EngineUnusable when the build cannot run here at all."""
    if verdict is not None and verdict.extra_path is ExtraPath.ENGINE_CRASHES:
        raise EngineUnusable(
            "the llama.cpp build uses CPU instructions this machine cannot run "
            f"({verdict.reason}, {verdict.at}); rebuild it for this CPU with: {fix}"
        )
    info = verdict.info if verdict else None
    if mode == "off":
        return Decision(PLAIN, "POLLAMA_CPU_EXTRA_BUFFERS=off")
    if mode == "on":
        return Decision(on_with(info), "POLLAMA_CPU_EXTRA_BUFFERS=on")
    if verdict is None:
        return Decision(PLAIN, "auto: the engine probe gave no verdict, so the plain path")
    if verdict.extra_path is ExtraPath.TRAPS:
        return Decision(PLAIN, f"auto: {verdict.reason}")
    return Decision(on_with(info), f"auto: {verdict.reason}")


class CpuPath:
    """The decision for every load of one server (or one CLI command), probing at most once."""

    def __init__(
        self,
        mode: str,
        store: VerdictStore | None,
        *,
        probe: Callable[[], ProbeResult],
        build: EngineBuild,
        cpu: CpuInfo,
    ) -> None:
        self.mode = mode if mode in MODES else "auto"
        self.store = store
        self.build = build
        self.cpu = cpu
        self._probe = probe
        self._verdict: Verdict | None = store.load() if store is not None else None
        self._probed = False
        self._lock = threading.Lock()

    @classmethod
    def for_settings(cls, settings: Settings) -> CpuPath:
        build, cpu = find_build(), read_cpu()
        store = VerdictStore(settings.state_path, build.key, cpu.identity)
        return cls(settings.cpu_extra_buffers, store, probe=run_probe, build=build, cpu=cpu)

    @property
    def fix(self) -> str:
        """The command that rebuilds the engine for this CPU."""
        return rebuild_command(self.cpu.portable_cmake_args(), self.build.version)

    @property
    def known(self) -> Verdict | None:
        """The verdict as it stands, without probing."""
        return self._verdict

    def verdict(self, *, recheck: bool = False) -> Verdict | None:
        """The verdict for this build and CPU, probing (blocking, ~1 s) if there is none.
        ``off`` never probes: it needs no verdict, and a user may set it to avoid one."""
        with self._lock:
            wanted = recheck or (self._verdict is None and not self._probed)
            if wanted and (self.mode != "off" or recheck):
                self._probed = True
                result = self._probe()
                verdict = verdict_from_probe(result)
                if verdict is None:
                    log.warning("%s; loading on the plain CPU path", result.describe())
                else:
                    self._keep(verdict)
            return self._verdict

    def decide(self, *, recheck: bool = False) -> Decision:
        return decide(self.mode, self.verdict(recheck=recheck), fix=self.fix)

    async def extra_buffers(self) -> ExtraBuffers:
        """The path the next load takes (the scheduler's seam). Raises EngineUnusable."""
        if self._verdict is None and not self._probed and self.mode != "off":
            await asyncio.to_thread(self.verdict)
        return self.decide().extra

    def summary(self) -> str:
        """One log line: the engine, what it was compiled for, the path taken and why."""
        try:
            decision = self.decide()
            path, why = decision.extra.describe(), decision.why
        except EngineUnusable as exc:
            path, why = "none", str(exc)
        verdict = self._verdict
        info = verdict.info if verdict else None
        compiled = " ".join(info.cpu_features) if info else "unknown"
        extra = ",".join(info.extra_buffers) if info else "unknown"
        return (
            f"engine llama-cpp-python={self.build.version or 'missing'} "
            f"compiled=[{compiled}] extra_buffer_types=[{extra}] "
            f"gpu_libraries=[{','.join(self.build.gpu_libraries())}] cpu={self.cpu.model!r} "
            f"cpu_allows=[{' '.join(self.cpu.simd())}] cpu_extra_buffers={self.mode} "
            f"path={path!r} why={why!r}"
        )

    def record_crash(self, number: int, *, extra_on: bool, during_load: bool, pid: int) -> bool:
        """A runner died of ``number``: keep what that proves. True when the next load
        takes another path (so the scheduler may retry at once)."""
        stage = "while loading the model" if during_load else "while generating"
        witness = f"runner pid={pid} was killed by {signal_name(number)} {stage}"
        info = self._verdict.info if self._verdict else None
        if extra_on and (number == signal.SIGILL or during_load):
            verdict = Verdict(
                ExtraPath.TRAPS, f"{witness} with the extra CPU buffer types on", info, now()
            )
        elif not extra_on and number == signal.SIGILL and during_load:
            # Not even the warm-up's two tokens run: every load would die the same way.
            verdict = Verdict(ExtraPath.ENGINE_CRASHES, f"{witness} on the plain path", info, now())
        else:
            return False
        with self._lock:
            self._keep(verdict)
        retry = verdict.extra_path is ExtraPath.TRAPS and self.mode == "auto"
        log.warning(
            "%s; %s (verdict kept in %s)",
            verdict.reason,
            "loading without llama.cpp's extra CPU buffer types from now on"
            if retry
            else "llama.cpp cannot run on this CPU as built; rebuild it with: " + self.fix
            if verdict.extra_path is ExtraPath.ENGINE_CRASHES
            else "POLLAMA_CPU_EXTRA_BUFFERS=on keeps them on",
            self.store.path if self.store else "memory",
        )
        return retry

    def _keep(self, verdict: Verdict) -> None:
        self._verdict = verdict
        if self.store is not None:
            self.store.save(verdict)
