"""What pollama knows about the machine: GPUs and system memory."""

from __future__ import annotations

from dataclasses import dataclass

from pollama.units import MiB

# VRAM a backend needs for itself beyond what a model asks for (driver
# context, cuBLAS workspace…). Kept back on every GPU before placing layers.
_MINIMUM_RESERVE = {"CUDA": 457 * MiB, "ROCm": 457 * MiB, "Metal": 512 * MiB}


@dataclass(frozen=True, order=True)
class DeviceID:
    """A device as its library names it: ``DeviceID("CUDA", "0")``."""

    library: str
    id: str

    def __str__(self) -> str:
        return f"{self.library}:{self.id}"


@dataclass(frozen=True)
class DeviceInfo:
    """One GPU, real or simulated; the layout code cannot tell them apart."""

    id: DeviceID
    name: str
    total_memory: int
    free_memory: int
    compute_major: int = 0
    compute_minor: int = 0
    integrated: bool = False
    driver_major: int = 0
    driver_minor: int = 0
    simulated: bool = False

    @property
    def library(self) -> str:
        return self.id.library

    @property
    def minimum_memory(self) -> int:
        """VRAM that must stay free on this device whatever is loaded."""
        return _MINIMUM_RESERVE.get(self.library, 0)

    @property
    def supports_flash_attention(self) -> bool:
        if self.library == "CUDA":
            return self.compute_major >= 7
        return self.library in ("ROCm", "Metal")


@dataclass(frozen=True)
class SystemInfo:
    """System memory and CPU as the scheduler sees them."""

    total_memory: int
    free_memory: int
    free_swap: int
    thread_count: int
    """Physical cores: the default thread count for inference."""
