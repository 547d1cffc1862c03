"""The CPU: what it is, and which instruction-set extensions it and the OS let a program use.

Linux lists a feature in ``/proc/cpuinfo`` only when the kernel has enabled its
register state, so a listed ``avx512f`` is usable. AMX is the exception that
matters: its tile state must also be requested per process
(``arch_prctl(ARCH_REQ_XCOMP_PERM)``), and in some VMs everything reports AMX as
usable while the instruction still traps. So ``amx_permitted`` says what the
OS offers; only running the instruction (``pollama.engine.probe``) says more.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")

_SYS_ARCH_PRCTL = 158  # x86_64
_ARCH_GET_XCOMP_SUPP = 0x1021
_XFEATURE_XTILEDATA = 18

# /proc/cpuinfo flag → llama.cpp's CMake option that compiles kernels for it.
# AMX is left out on purpose: a portable build should not depend on it.
CMAKE_OPTIONS = {
    "avx": "GGML_AVX",
    "avx2": "GGML_AVX2",
    "fma": "GGML_FMA",
    "f16c": "GGML_F16C",
    "bmi2": "GGML_BMI2",
    "avx_vnni": "GGML_AVX_VNNI",
    "avx512f": "GGML_AVX512",
    "avx512vbmi": "GGML_AVX512_VBMI",
    "avx512_vnni": "GGML_AVX512_VNNI",
    "avx512_bf16": "GGML_AVX512_BF16",
}
# The flags worth showing a person: the vector and matrix extensions llama.cpp has kernels for.
SIMD_FLAGS = (
    "sse3",
    "ssse3",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi2",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512vbmi",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
)


@dataclass(frozen=True)
class CpuInfo:
    """One CPU model as the OS presents it."""

    model: str
    """``model name`` (x86) or a description built from the ARM ids."""
    machine: str
    """``platform.machine()``: x86_64, aarch64, …"""
    flags: frozenset[str]
    """Extensions the CPU has and the OS has enabled."""
    amx_permitted: bool | None = None
    """Whether the OS supports AMX tile data for processes (None: not x86 Linux)."""

    @property
    def identity(self) -> str:
        """A short stable key for this CPU as the OS presents it (verdicts are kept by it)."""
        text = "|".join([self.machine, self.model, *sorted(self.flags), str(self.amx_permitted)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def simd(self) -> list[str]:
        """The vector/matrix extensions llama.cpp cares about, in a fixed order."""
        return [flag for flag in SIMD_FLAGS if flag in self.flags]

    def portable_cmake_args(self) -> str:
        """``CMAKE_ARGS`` for a llama.cpp build that uses what this CPU allows, and no AMX."""
        options = ["-DGGML_NATIVE=OFF"]
        options += [f"-D{name}=ON" for flag, name in CMAKE_OPTIONS.items() if flag in self.flags]
        return " ".join(options)


def read_cpu(cpuinfo: Path = CPUINFO) -> CpuInfo:
    """This machine's CPU; a CPU with nothing readable is an empty description, not an error."""
    fields: dict[str, str] = {}
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError as exc:
        log.debug("cannot read %s: %s", cpuinfo, exc)
        text = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor describes them all
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    if "pni" in flags:
        flags.add("sse3")  # Linux's name for SSE3 ("Prescott New Instructions")
    model = fields.get("model name") or _arm_model(fields) or platform.processor() or "unknown"
    machine = platform.machine()
    amx = _amx_permitted() if machine == "x86_64" and "amx_tile" in flags else None
    return CpuInfo(model=model, machine=machine, flags=frozenset(flags), amx_permitted=amx)


def _arm_model(fields: dict[str, str]) -> str:
    parts = [fields.get(k, "") for k in ("CPU implementer", "CPU part", "CPU variant")]
    return "ARM " + "/".join(parts) if any(parts) else ""


def _amx_permitted() -> bool | None:
    """Whether the kernel supports AMX tile data (ARCH_GET_XCOMP_SUPP lists XTILEDATA)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mask = ctypes.c_uint64(0)
        if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_GET_XCOMP_SUPP, ctypes.byref(mask)) != 0:
            return False
        return bool(mask.value & (1 << _XFEATURE_XTILEDATA))
    except (OSError, AttributeError) as exc:
        log.debug("arch_prctl unavailable: %s", exc)
        return None
