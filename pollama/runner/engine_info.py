"""What the loaded llama.cpp build says about itself: compiled CPU features, the CPU
backend's extra buffer types, backends and devices (for the probe and ``pollama info``)."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

from pollama.engine.info import EngineDevice, EngineInfo
from pollama.runner.bindings import VERSION, L

# ggml_cpu_has_<name>() → the feature's name as llama.cpp prints it.
_CPU_FEATURES = (
    "sse3",
    "ssse3",
    "avx",
    "avx2",
    "avx_vnni",
    "f16c",
    "fma",
    "bmi2",
    "avx512",
    "avx512_vbmi",
    "avx512_vnni",
    "avx512_bf16",
    "amx_int8",
    "neon",
    "arm_fma",
    "fp16_va",
    "dotprod",
    "matmul_int8",
    "sve",
    "sme",
    "riscv_v",
    "vsx",
    "vxe",
)
_DEVICE_KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}
_CPU_DEVICE = 0
_ExtraBufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)


@functools.cache
def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    lib_dir = Path(L.__file__).parent / "lib"
    ggml = ctypes.CDLL(str(lib_dir / "libggml.so"))
    cpu = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"))
    for name, argtypes, restype in (
        ("ggml_backend_dev_count", [], ctypes.c_size_t),
        ("ggml_backend_dev_get", [ctypes.c_size_t], ctypes.c_void_p),
        ("ggml_backend_dev_by_type", [ctypes.c_int], ctypes.c_void_p),
        ("ggml_backend_dev_name", [ctypes.c_void_p], ctypes.c_char_p),
        ("ggml_backend_dev_description", [ctypes.c_void_p], ctypes.c_char_p),
        ("ggml_backend_dev_type", [ctypes.c_void_p], ctypes.c_int),
        ("ggml_backend_dev_backend_reg", [ctypes.c_void_p], ctypes.c_void_p),
        ("ggml_backend_reg_count", [], ctypes.c_size_t),
        ("ggml_backend_reg_get", [ctypes.c_size_t], ctypes.c_void_p),
        ("ggml_backend_reg_name", [ctypes.c_void_p], ctypes.c_char_p),
        ("ggml_backend_reg_get_proc_address", [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_void_p),
        ("ggml_backend_buft_name", [ctypes.c_void_p], ctypes.c_char_p),
    ):
        function = getattr(ggml, name)
        function.argtypes, function.restype = argtypes, restype
    return ggml, cpu


def engine_info() -> EngineInfo:
    ggml, cpu = _libs()
    features = []
    for name in _CPU_FEATURES:
        function = getattr(cpu, f"ggml_cpu_has_{name}", None)
        if function is not None:
            function.restype = ctypes.c_int
            if function():
                features.append(name.upper())
    devices = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        devices.append(
            EngineDevice(
                name=_text(ggml.ggml_backend_dev_name(dev)),
                description=_text(ggml.ggml_backend_dev_description(dev)),
                kind=_DEVICE_KINDS.get(ggml.ggml_backend_dev_type(dev), "unknown"),
            )
        )
    backends = [
        _text(ggml.ggml_backend_reg_name(ggml.ggml_backend_reg_get(i)))
        for i in range(ggml.ggml_backend_reg_count())
    ]
    return EngineInfo(
        version=VERSION,
        system_info=L.llama_print_system_info().decode("utf-8", "replace").strip(),
        cpu_features=tuple(features),
        extra_buffers=tuple(_extra_buffer_types(ggml)),
        backends=tuple(backends),
        devices=tuple(devices),
        gpu_offload=bool(L.llama_supports_gpu_offload()),
    )


def _extra_buffer_types(ggml: ctypes.CDLL) -> list[str]:
    """The CPU device's extra buffer types, as llama.cpp lists them for a model's weights."""
    device = ggml.ggml_backend_dev_by_type(_CPU_DEVICE)
    if not device:
        return []
    reg = ggml.ggml_backend_dev_backend_reg(device)
    address = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    if not address:
        return []
    array = _ExtraBufts(address)(device)
    names = []
    i = 0
    while array and array[i]:
        names.append(_text(ggml.ggml_backend_buft_name(array[i])))
        i += 1
    return names


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw else ""
