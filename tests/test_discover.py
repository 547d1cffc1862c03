"""GPU and system discovery: simulated specs, NVML and sysfs through fakes, cgroups."""

from __future__ import annotations

import ctypes.util
import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pollama.devices as discover
from pollama.devices import (
    DeviceID,
    DeviceInfo,
    amd_gpus,
    discover_gpus,
    nvidia_gpus,
    parse_gpu_specs,
    system_info,
)
from pollama.errors import InvalidDeviceSpec
from pollama.settings import Settings
from pollama.units import GiB, MiB

# --- simulated specs ----------------------------------------------------------


def test_two_cuda_gpus() -> None:
    devices = parse_gpu_specs("cuda:24GiB,cuda:8GiB")
    assert [d.id for d in devices] == [DeviceID("CUDA", "0"), DeviceID("CUDA", "1")]
    assert [d.total_memory for d in devices] == [24 * GiB, 8 * GiB]
    assert [d.free_memory for d in devices] == [24 * GiB, 8 * GiB]
    assert all(d.simulated and not d.integrated for d in devices)
    assert all((d.compute_major, d.compute_minor) == (8, 9) for d in devices)


@pytest.mark.parametrize(
    ("spec", "total"), [("cuda:1GiB", GiB), ("cuda:64MiB", 64 * MiB), ("CUDA:8GB", 8 * 10**9)]
)
def test_single_gpu_sizes(spec: str, total: int) -> None:
    (device,) = parse_gpu_specs(spec)
    assert device.id == DeviceID("CUDA", "0")
    assert device.total_memory == device.free_memory == total


def test_rocm_with_free_memory() -> None:
    (device,) = parse_gpu_specs("rocm:16GiB:free=12GiB")
    assert device.id == DeviceID("ROCm", "0")
    assert device.library == "ROCm"
    assert (device.total_memory, device.free_memory) == (16 * GiB, 12 * GiB)
    assert (device.compute_major, device.compute_minor) == (0, 0)


def test_integrated_named_gpu() -> None:
    (device,) = parse_gpu_specs("cuda:8GiB:integrated:name=iGPU")
    assert device.integrated
    assert device.name == "iGPU"
    assert device.total_memory == 8 * GiB


def test_compute_capability_option() -> None:
    turing = parse_gpu_specs("cuda:8GiB:cc=7.5")[0]
    assert (turing.compute_major, turing.compute_minor) == (7, 5)
    blackwell = parse_gpu_specs("cuda:8GiB:cc=12")[0]
    assert (blackwell.compute_major, blackwell.compute_minor) == (12, 0)
    assert not parse_gpu_specs("cuda:8GiB:cc=6.1")[0].supports_flash_attention


def test_ids_are_per_library_and_lists_may_hold_commas() -> None:
    devices = parse_gpu_specs(
        ["cuda:24GiB, rocm:16GiB", "Metal:32GiB", " cuda:8GiB ", "vulkan:4GiB"]
    )
    assert [str(d.id) for d in devices] == ["CUDA:0", "ROCm:0", "Metal:0", "CUDA:1", "Vulkan:0"]


@pytest.mark.parametrize(
    ("spec", "bad_entry", "problem"),
    [
        ("tpu:8GiB", "tpu:8GiB", "unknown library"),
        ("cuda:24GiB,gpu:8GiB", "gpu:8GiB", "unknown library"),
        ("cuda", "cuda", "missing total"),
        ("cuda:lots", "cuda:lots", "bad total memory"),
        ("cuda:0", "cuda:0", "positive"),
        ("cuda:8GiB,rocm:16GiB:free=20GiB", "rocm:16GiB:free=20GiB", "more than total"),
        ("cuda:8GiB:free=some", "cuda:8GiB:free=some", "bad free memory"),
        ("cuda:8GiB:colour=red", "cuda:8GiB:colour=red", "unknown option"),
        ("cuda:8GiB:cc=eight", "cuda:8GiB:cc=eight", "compute capability"),
        ("cuda:8GiB:integrated=yes", "cuda:8GiB:integrated=yes", "takes no value"),
        ("cuda:8GiB:name=a:name=b", "cuda:8GiB:name=a:name=b", "twice"),
        ("cuda:8GiB:name=", "cuda:8GiB:name=", "needs a value"),
    ],
)
def test_malformed_entries(spec: str, bad_entry: str, problem: str) -> None:
    with pytest.raises(InvalidDeviceSpec) as caught:
        parse_gpu_specs(spec)
    assert repr(bad_entry) in str(caught.value)
    assert problem in str(caught.value)


@pytest.mark.parametrize("spec", ["", " , ", []])
def test_empty_spec(spec: str | list[str]) -> None:
    with pytest.raises(InvalidDeviceSpec, match="empty GPU spec"):
        parse_gpu_specs(spec)


def test_blank_entry_between_commas() -> None:
    with pytest.raises(InvalidDeviceSpec, match="empty entry"):
        parse_gpu_specs("cuda:8GiB,,cuda:4GiB")


@dataclass(frozen=True)
class _Gpu:
    library: str
    total_mib: int
    free_mib: int | None
    name: str | None
    integrated: bool


@st.composite
def _gpus(draw: st.DrawFn) -> _Gpu:
    total = draw(st.integers(1, 2**20))
    return _Gpu(
        library=draw(st.sampled_from(["cuda", "CUDA", "rocm", "ROCm", "metal", "Vulkan"])),
        total_mib=total,
        free_mib=draw(st.none() | st.integers(0, total)),
        name=draw(
            st.none() | st.from_regex(r"[A-Za-z0-9]([\w .-]{0,20}[A-Za-z0-9])?", fullmatch=True)
        ),
        integrated=draw(st.booleans()),
    )


def _render(gpu: _Gpu) -> str:
    fields = [gpu.library, f"{gpu.total_mib}MiB"]
    if gpu.free_mib is not None:
        fields.append(f"free={gpu.free_mib}MiB")
    if gpu.name is not None:
        fields.append(f"name={gpu.name}")
    if gpu.integrated:
        fields.append("integrated")
    return ":".join(fields)


@given(gpus=st.lists(_gpus(), min_size=1, max_size=8), as_list=st.booleans())
def test_rendered_specs_parse_back(gpus: list[_Gpu], as_list: bool) -> None:
    entries = [_render(g) for g in gpus]
    devices = parse_gpu_specs(entries if as_list else ",".join(entries))
    counts: dict[str, int] = {}
    assert len(devices) == len(gpus)
    for gpu, device in zip(gpus, devices, strict=True):
        library = {"cuda": "CUDA", "rocm": "ROCm", "metal": "Metal", "vulkan": "Vulkan"}[
            gpu.library.lower()
        ]
        assert device.id == DeviceID(library, str(counts.get(library, 0)))
        counts[library] = counts.get(library, 0) + 1
        assert device.total_memory == gpu.total_mib * MiB
        expected_free = gpu.total_mib if gpu.free_mib is None else gpu.free_mib
        assert device.free_memory == expected_free * MiB
        if gpu.name is not None:
            assert device.name == gpu.name
        assert device.integrated == gpu.integrated
        assert device.simulated


# --- discover_gpus --------------------------------------------------------------


def test_discover_gpus_uses_simulated_inventory(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    probed: list[str] = []

    def probe(name: str) -> list[DeviceInfo]:
        probed.append(name)
        return []

    monkeypatch.setattr(discover, "nvidia_gpus", lambda: probe("nvidia"))
    monkeypatch.setattr(discover, "amd_gpus", lambda: probe("amd"))
    with caplog.at_level(logging.INFO, logger="pollama.devices"):
        devices = discover_gpus(Settings(simulated_gpus="cuda:24GiB,cuda:8GiB"))
    assert probed == []
    assert [(str(d.id), d.total_memory) for d in devices] == [
        ("CUDA:0", 24 * GiB),
        ("CUDA:1", 8 * GiB),
    ]
    assert all(d.simulated for d in devices)
    assert "inference compute id=0 library=CUDA" in caplog.text
    assert "total='24.0 GiB'" in caplog.text


def test_discover_gpus_rejects_a_bad_simulated_spec() -> None:
    with pytest.raises(InvalidDeviceSpec, match="tpu"):
        discover_gpus(Settings(simulated_gpus="tpu:8GiB"))


def test_discover_gpus_survives_a_failing_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    amd = DeviceInfo(DeviceID("ROCm", "0"), "AMD GPU", 16 * GiB, 16 * GiB)

    def broken() -> list[DeviceInfo]:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(discover, "nvidia_gpus", broken)
    monkeypatch.setattr(discover, "amd_gpus", lambda: [amd])
    assert discover_gpus(Settings()) == [amd]


# --- NVIDIA through a fake NVML -------------------------------------------------


class FakeNVMLError(Exception):
    pass


@dataclass
class FakeCard:
    name: str | bytes
    uuid: str
    total: int
    free: int
    cc: tuple[int, int] = (8, 6)
    lost: bool = False


class FakeNVML:
    """The pynvml functions nvidia_gpus calls, over a list of cards."""

    NVMLError = FakeNVMLError

    def __init__(self, cards: list[FakeCard], fail_init: bool = False) -> None:
        self.cards = cards
        self.fail_init = fail_init
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise FakeNVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeCard:
        return self.cards[index]

    def nvmlDeviceGetName(self, card: FakeCard) -> str | bytes:
        return card.name

    def nvmlDeviceGetUUID(self, card: FakeCard) -> str:
        return card.uuid

    def nvmlDeviceGetMemoryInfo(self, card: FakeCard) -> Any:
        if card.lost:
            raise FakeNVMLError("GPU is lost")
        return SimpleNamespace(total=card.total, free=card.free, used=card.total - card.free)

    def nvmlDeviceGetCudaComputeCapability(self, card: FakeCard) -> tuple[int, int]:
        return card.cc


def _three_cards() -> list[FakeCard]:
    return [
        FakeCard("NVIDIA GeForce RTX 4090", "GPU-aaaa1111", 24 * GiB, 20 * GiB, (8, 9)),
        FakeCard("NVIDIA A100", "GPU-bbbb2222", 80 * GiB, 80 * GiB, (8, 0), lost=True),
        FakeCard(b"Tesla T4", "GPU-cccc3333", 16 * GiB, 15 * GiB, (7, 5)),
    ]


def test_nvidia_devices_and_a_lost_one_skipped(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNVML(_three_cards())
    devices = nvidia_gpus(nvml, environ={})
    assert devices == [
        DeviceInfo(DeviceID("CUDA", "0"), "NVIDIA GeForce RTX 4090", 24 * GiB, 20 * GiB, 8, 9,
                   driver_major=12, driver_minor=4),
        # The lost card keeps CUDA number 1, so this one is still 2.
        DeviceInfo(DeviceID("CUDA", "2"), "Tesla T4", 16 * GiB, 15 * GiB, 7, 5,
                   driver_major=12, driver_minor=4),
    ]  # fmt: skip
    assert nvml.shutdowns == 1
    assert "GPU is lost" in caplog.text


def test_nvidia_integrated_query_when_the_binding_has_it() -> None:
    class WithIntegrated(FakeNVML):
        def nvmlDeviceGetIsIntegrated(self, card: FakeCard) -> int:
            return 1 if card.name == "GB10" else 0

    nvml = WithIntegrated([FakeCard("GB10", "GPU-1", 120 * GiB, 100 * GiB, (12, 1))])
    assert nvidia_gpus(nvml, environ={})[0].integrated
    assert not nvidia_gpus(FakeNVML(nvml.cards), environ={})[0].integrated


def test_nvidia_init_failure_means_no_gpus() -> None:
    nvml = FakeNVML(_three_cards(), fail_init=True)
    assert nvidia_gpus(nvml, environ={}) == []
    assert nvml.shutdowns == 0


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        ("2,0", [("0", "Tesla T4"), ("1", "NVIDIA GeForce RTX 4090")]),
        ("GPU-cccc", [("0", "Tesla T4")]),
        ("GPU-cccc3333,0", [("0", "Tesla T4"), ("1", "NVIDIA GeForce RTX 4090")]),
        ("2,7,0", [("0", "Tesla T4")]),  # CUDA stops at the first invalid entry
        ("GPU-,0", []),  # a prefix that matches every card is ambiguous
        ("0,0,2", [("0", "NVIDIA GeForce RTX 4090")]),
        ("", []),
        ("-1", []),
    ],
)
def test_cuda_visible_devices(visible: str, expected: list[tuple[str, str]]) -> None:
    devices = nvidia_gpus(FakeNVML(_three_cards()), environ={"CUDA_VISIBLE_DEVICES": visible})
    assert [(d.id.id, d.name) for d in devices] == expected


def test_real_pynvml_without_a_driver_does_not_raise() -> None:
    devices = nvidia_gpus()
    assert all(d.library == "CUDA" and d.total_memory > 0 for d in devices)
    if ctypes.util.find_library("nvidia-ml") is None:
        assert devices == []


# --- AMD through a fake sysfs -----------------------------------------------------


def _card(sysfs: Path, name: str, vendor: str, **files: str | int) -> Path:
    device = sysfs / "class" / "drm" / name / "device"
    device.mkdir(parents=True)
    (device / "vendor").write_text(f"{vendor}\n")
    for key, value in files.items():
        if key == "render":
            (device / "drm" / f"renderD{value}").mkdir(parents=True)
        else:
            (device / key).write_text(f"{value}\n")
    return device


def _kfd_node(sysfs: Path, node: int, render_minor: int, gfx: int) -> None:
    path = sysfs / "class" / "kfd" / "kfd" / "topology" / "nodes" / str(node)
    path.mkdir(parents=True)
    (path / "properties").write_text(
        f"cpu_cores_count 0\ngfx_target_version {gfx}\ndrm_render_minor {render_minor}\n"
    )


def test_amd_card_found_and_others_ignored(tmp_path: Path) -> None:
    _card(tmp_path, "card0", "0x8086", mem_info_vram_total=GiB, mem_info_vram_used=0)
    _card(
        tmp_path,
        "card1",
        "0x1002",
        mem_info_vram_total=24 * GiB,
        mem_info_vram_used=4 * GiB,
        product_name="Radeon RX 7900 XTX",
        render=129,
    )
    (tmp_path / "class" / "drm" / "card1-DP-1").mkdir()  # a connector, not a card
    _kfd_node(tmp_path, 0, 0, 0)
    _kfd_node(tmp_path, 1, 129, 110000)
    assert amd_gpus(tmp_path, environ={}) == [
        DeviceInfo(DeviceID("ROCm", "0"), "Radeon RX 7900 XTX", 24 * GiB, 20 * GiB, 11, 0)
    ]


def test_amd_apu_and_defaults(tmp_path: Path) -> None:
    _card(tmp_path, "card0", "0x1002", mem_info_vram_total=512 * MiB, mem_info_vram_used=100 * MiB)
    _card(tmp_path, "card1", "0x1002")  # radeon driver: no VRAM files, unusable by ROCm
    (device,) = amd_gpus(tmp_path, environ={})
    assert device.name == "AMD GPU"
    assert device.integrated
    assert device.free_memory == 412 * MiB
    assert (device.compute_major, device.compute_minor) == (0, 0)


def test_amd_visible_devices_and_numeric_card_order(tmp_path: Path) -> None:
    _card(tmp_path, "card10", "0x1002", mem_info_vram_total=16 * GiB, unique_id="feed")
    _card(tmp_path, "card2", "0x1002", mem_info_vram_total=8 * GiB, unique_id="beef")
    totals = [d.total_memory for d in amd_gpus(tmp_path, environ={})]
    assert totals == [8 * GiB, 16 * GiB]
    only_second = amd_gpus(tmp_path, environ={"HIP_VISIBLE_DEVICES": "1"})
    assert [(d.id.id, d.total_memory) for d in only_second] == [("0", 16 * GiB)]
    # ROCR filters first, then HIP indexes what is left.
    both = amd_gpus(
        tmp_path, environ={"ROCR_VISIBLE_DEVICES": "GPU-feed,0", "HIP_VISIBLE_DEVICES": "1"}
    )
    assert [(d.id.id, d.total_memory) for d in both] == [("0", 8 * GiB)]


def test_amd_without_drm(tmp_path: Path) -> None:
    assert amd_gpus(tmp_path, environ={}) == []
    assert isinstance(amd_gpus(), list)


# --- system memory ------------------------------------------------------------------


def test_system_info_on_this_machine() -> None:
    info = system_info()
    assert info.total_memory > 0
    assert 0 < info.free_memory <= info.total_memory
    assert info.free_swap >= 0
    assert info.thread_count >= 1


def test_cgroup_v2_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "swap_memory", lambda: SimpleNamespace(free=4 * GiB))
    (tmp_path / "memory.max").write_text(f"{2 * GiB}\n")
    (tmp_path / "memory.current").write_text(f"{1536 * MiB}\n")
    (tmp_path / "memory.stat").write_text(f"anon 1\ninactive_file {512 * MiB}\nactive_file 3\n")
    (tmp_path / "memory.swap.max").write_text(f"{GiB}\n")
    (tmp_path / "memory.swap.current").write_text(f"{256 * MiB}\n")
    info = system_info(tmp_path)
    assert info.total_memory == 2 * GiB
    # Inactive page cache is reclaimable, so it does not count as used.
    assert info.free_memory == GiB
    assert info.free_swap == 768 * MiB


def test_cgroup_v2_without_limit(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("12345\n")
    (tmp_path / "memory.swap.max").write_text("max\n")
    info = system_info(tmp_path)
    assert info.total_memory == psutil.virtual_memory().total
    assert info.free_swap == psutil.swap_memory().free


def test_cgroup_limit_above_ram_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text(f"{psutil.virtual_memory().total * 4}\n")
    (tmp_path / "memory.current").write_text(f"{psutil.virtual_memory().total * 3}\n")
    info = system_info(tmp_path)
    assert info.total_memory == psutil.virtual_memory().total
    assert info.free_memory > 0


def test_cgroup_v1_limit(tmp_path: Path) -> None:
    v1 = tmp_path / "memory"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text(f"{GiB}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{768 * MiB}\n")
    info = system_info(tmp_path)
    assert (info.total_memory, info.free_memory) == (GiB, 256 * MiB)
