"""AMD GPUs, read from the amdgpu driver's sysfs files (no ROCm library needed).

Cards are numbered in ``/sys/class/drm/cardN`` order, which is ROCm's order
on ordinary machines; ``ROCR_VISIBLE_DEVICES`` then ``HIP_VISIBLE_DEVICES``
filter and renumber them as the ROCm runtime does.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pollama.devices._visible import visible_indices
from pollama.devices.types import DeviceID, DeviceInfo
from pollama.units import MiB

logger = logging.getLogger(__name__)

AMD_VENDOR_ID = 0x1002
# APUs report only a small carve-out of system RAM as VRAM.
INTEGRATED_MAX_VRAM = 512 * MiB

_CARD = re.compile(r"card(\d+)")
_RENDER = re.compile(r"renderD(\d+)")


@dataclass(frozen=True)
class _Card:
    name: str
    total: int
    used: int
    uuid: str | None
    gfx: tuple[int, int]


def amd_gpus(
    sysfs_root: Path = Path("/sys"), environ: Mapping[str, str] | None = None
) -> list[DeviceInfo]:
    """The AMD GPUs ROCm would show this process; [] when there are none."""
    env = os.environ if environ is None else environ
    cards = _cards(sysfs_root)
    if not cards:
        return []
    rocr = visible_indices(env.get("ROCR_VISIBLE_DEVICES"), len(cards), lambda i: cards[i].uuid)
    hip = visible_indices(env.get("HIP_VISIBLE_DEVICES"), len(rocr), lambda i: cards[rocr[i]].uuid)
    return [_device(cards[rocr[i]], str(ordinal)) for ordinal, i in enumerate(hip)]


def _device(card: _Card, ordinal: str) -> DeviceInfo:
    return DeviceInfo(
        id=DeviceID("ROCm", ordinal),
        name=card.name,
        total_memory=card.total,
        free_memory=max(card.total - card.used, 0),
        compute_major=card.gfx[0],
        compute_minor=card.gfx[1],
        integrated=card.total <= INTEGRATED_MAX_VRAM,
    )


def _cards(sysfs_root: Path) -> list[_Card]:
    drm = sysfs_root / "class" / "drm"
    gfx_by_render = _gfx_versions(sysfs_root)
    cards = []
    for path in _numbered(drm, _CARD).values():
        device = path / "device"
        if _read_int(device / "vendor", base=16) != AMD_VENDOR_ID:
            continue
        total = _read_int(device / "mem_info_vram_total")
        if total is None:
            # Not driven by amdgpu (e.g. the old radeon driver): ROCm cannot use it.
            logger.debug("skipping AMD card without VRAM info path=%s", path)
            continue
        unique_id = _read(device / "unique_id")
        cards.append(
            _Card(
                name=_read(device / "product_name") or "AMD GPU",
                total=total,
                used=_read_int(device / "mem_info_vram_used") or 0,
                uuid=f"GPU-{unique_id}" if unique_id else None,
                gfx=_gfx(device, gfx_by_render),
            )
        )
    return cards


def _gfx(device: Path, gfx_by_render: dict[int, int]) -> tuple[int, int]:
    """(major, minor) of the card's gfx target, matched to KFD through its render node."""
    for minor in _numbered(device / "drm", _RENDER):
        if version := gfx_by_render.get(minor):
            # 90010 is gfx90a: major 9, minor 0, stepping 10 (dropped).
            return version // 10000, version // 100 % 100
    return 0, 0


def _gfx_versions(sysfs_root: Path) -> dict[int, int]:
    """gfx_target_version of each KFD node, keyed by its DRM render minor."""
    nodes = sysfs_root / "class" / "kfd" / "kfd" / "topology" / "nodes"
    versions: dict[int, int] = {}
    try:
        node_dirs = list(nodes.iterdir())
    except OSError:
        return versions
    for node in node_dirs:
        properties: dict[str, str] = {}
        for line in (_read(node / "properties") or "").splitlines():
            key, _, value = line.partition(" ")
            properties[key] = value.strip()
        try:
            versions[int(properties["drm_render_minor"])] = int(properties["gfx_target_version"])
        except (KeyError, ValueError):
            continue
    return versions


def _numbered(directory: Path, pattern: re.Pattern[str]) -> dict[int, Path]:
    """Entries named like ``card3`` by their number, in numeric order (card10 after card9)."""
    try:
        matches = [(pattern.fullmatch(p.name), p) for p in directory.iterdir()]
    except OSError:
        return {}
    found = {int(m.group(1)): p for m, p in matches if m}
    return dict(sorted(found.items()))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def _read_int(path: Path, base: int = 10) -> int | None:
    text = _read(path)
    try:
        return int(text, base) if text else None
    except ValueError:
        return None
