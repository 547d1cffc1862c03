"""System memory and CPU cores, as this process may use them.

In a container the cgroup's memory limit, not the host's RAM, is what a model
must fit in, so a cgroup limit smaller than the RAM replaces it. cgroup v2
(``memory.max``) is read first, then cgroup v1 (``memory/memory.limit_in_bytes``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import psutil

from pollama.devices.types import SystemInfo

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class _Limit:
    limit: int
    free: int
    free_swap: int | None
    """Swap the cgroup may still use; None when it sets no swap limit."""


def system_info(cgroup_root: Path = CGROUP_ROOT, *, threads: int = 0) -> SystemInfo:
    """RAM, swap and physical cores (``threads`` instead, when set); a cgroup memory
    limit caps RAM and swap."""
    memory = psutil.virtual_memory()
    total, free = int(memory.total), int(memory.available)
    free_swap = int(psutil.swap_memory().free)
    cgroup = _cgroup_limit(cgroup_root)
    if cgroup is not None and cgroup.limit < total:
        logger.debug("cgroup memory limit applies limit=%d free=%d", cgroup.limit, cgroup.free)
        total, free = cgroup.limit, min(free, cgroup.free)
    if cgroup is not None and cgroup.free_swap is not None:
        free_swap = min(free_swap, cgroup.free_swap)
    cores = threads or psutil.cpu_count(logical=False) or psutil.cpu_count(logical=True) or 1
    return SystemInfo(total_memory=total, free_memory=free, free_swap=free_swap, thread_count=cores)


def _cgroup_limit(root: Path) -> _Limit | None:
    if (root / "memory.max").exists():
        limit = _read_int(root / "memory.max")
        usage = _read_int(root / "memory.current")
        inactive = _stat(root / "memory.stat", "inactive_file")
        swap_max = _read_int(root / "memory.swap.max")
        swap_free = None
        if swap_max is not None:
            swap_free = max(swap_max - (_read_int(root / "memory.swap.current") or 0), 0)
    else:
        v1 = root / "memory"
        limit = _read_int(v1 / "memory.limit_in_bytes")
        usage = _read_int(v1 / "memory.usage_in_bytes")
        inactive = _stat(v1 / "memory.stat", "total_inactive_file")
        swap_free = None  # v1 only limits memory+swap together; not worth modelling
    if limit is None:
        return None
    # Inactive page cache (e.g. a model file read earlier) is counted in the
    # usage but the kernel drops it before it would enforce the limit.
    used = max((usage or 0) - inactive, 0)
    return _Limit(limit=limit, free=max(limit - used, 0), free_swap=swap_free)


def _stat(path: Path, key: str) -> int:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _read_int(path: Path) -> int | None:
    """The number in a cgroup file; None when missing or ``max`` (no limit)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
