"""What pollama can run models on: GPUs (real or simulated) and system memory."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pollama.devices.amd import amd_gpus
from pollama.devices.nvidia import nvidia_gpus
from pollama.devices.simulated import parse_gpu_specs
from pollama.devices.system import system_info
from pollama.devices.types import DeviceID, DeviceInfo, SystemInfo
from pollama.settings import Settings
from pollama.units import format_bytes

__all__ = [
    "DeviceID",
    "DeviceInfo",
    "SystemInfo",
    "amd_gpus",
    "discover_gpus",
    "nvidia_gpus",
    "parse_gpu_specs",
    "system_info",
]

logger = logging.getLogger(__name__)


def discover_gpus(settings: Settings) -> list[DeviceInfo]:
    """The GPUs to place models on: the simulated inventory if one is set, else real ones.

    A missing or broken driver means no GPUs of that kind, never an error; a
    malformed simulated spec raises InvalidDeviceSpec.
    """
    if settings.simulated_gpus:
        devices = parse_gpu_specs(settings.simulated_gpus)
    else:
        devices = [*_safely(nvidia_gpus), *_safely(amd_gpus)]
    for device in devices:
        logger.info(
            "inference compute id=%s library=%s name=%r total=%r available=%r "
            "compute=%d.%d integrated=%s simulated=%s",
            device.id.id,
            device.library,
            device.name,
            format_bytes(device.total_memory),
            format_bytes(device.free_memory),
            device.compute_major,
            device.compute_minor,
            device.integrated,
            device.simulated,
        )
    if not devices:
        logger.info("no GPUs found; models will run on the CPU")
    return devices


def _safely(probe: Callable[[], list[DeviceInfo]]) -> list[DeviceInfo]:
    # A driver that misbehaves in a way the probe does not expect must not stop
    # the server: it can still run on the other GPUs or the CPU.
    try:
        return probe()
    except Exception:
        logger.warning("GPU discovery failed probe=%s", probe.__name__, exc_info=True)
        return []
