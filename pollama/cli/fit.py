"""``pollama fit``: will this model fit, and where do its layers go?"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pollama import devices
from pollama.demo import resolve_model_path
from pollama.devices.types import DeviceInfo, SystemInfo
from pollama.engine.cpu_path import CpuPath
from pollama.errors import ModelNotFound, PollamaError
from pollama.ggufmeta import GGUFModel, read_model
from pollama.memory.adapters import adapter_bytes
from pollama.memory.layout import LayoutPolicy, format_layers
from pollama.memory.placement import Placement, plan_placement
from pollama.memory.types import DeviceMemory, DraftMemory, ProjectorMemory
from pollama.options.load import LoadOptions, resolve_load_options
from pollama.scheduler.keepalive import load_options
from pollama.settings import Settings
from pollama.store.disk import Store
from pollama.units import format_bytes, parse_size


class Switch(StrEnum):
    auto = "auto"
    on = "on"
    off = "off"


def fit(
    model: Annotated[str, typer.Argument(help="A model name (smollm2) or a GGUF file path.")],
    gpu: Annotated[
        list[str] | None,
        typer.Option(
            "--gpu",
            help="A simulated GPU, e.g. cuda:24GiB or rocm:16GiB:free=12GiB (repeatable). "
            "Default: this machine's GPUs.",
        ),
    ] = None,
    num_ctx: Annotated[int | None, typer.Option(help="Context length per sequence.")] = None,
    parallel: Annotated[int | None, typer.Option(help="Parallel sequences (slots).")] = None,
    num_gpu: Annotated[int, typer.Option(help="Layers to offload; -1 = as many as fit.")] = -1,
    num_batch: Annotated[int, typer.Option(help="Batch size.")] = 512,
    kv_cache_type: Annotated[
        str | None, typer.Option(help="KV cache type: f16, q8_0 or q4_0.")
    ] = None,
    flash_attention: Annotated[Switch | None, typer.Option(help="auto, on or off.")] = None,
    ram: Annotated[
        str | None, typer.Option(help="Free system memory to plan for, e.g. 16GiB.")
    ] = None,
    require_full: Annotated[
        bool, typer.Option(help="Fail unless the whole model fits on the GPUs.")
    ] = False,
    use_mmap: Annotated[
        bool | None,
        typer.Option(
            "--mmap/--no-mmap", help="Map the file instead of reading it (default: as the server)."
        ),
    ] = None,
    projector: Annotated[
        str | None,
        typer.Option(help="A vision projector GGUF (default: a stored model's own, if any)."),
    ] = None,
    adapter: Annotated[
        list[Path] | None, typer.Option(help="A LoRA adapter GGUF to count (repeatable).")
    ] = None,
    draft: Annotated[str | None, typer.Option(help="A draft model GGUF to count.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    settings = Settings.from_env()
    try:
        files = _model_files(model, projector, adapter or [], settings, draft)
        gpus = devices.parse_gpu_specs(gpu) if gpu else devices.discover_gpus(settings)
        system = _system(ram)
        asked = LoadOptions(
            num_ctx=num_ctx or settings.context_length,
            num_batch=num_batch,
            num_gpu=num_gpu,
            parallel=parallel or settings.num_parallel,
            flash_attention=_switch(flash_attention, settings.flash_attention),
            kv_cache_type=kv_cache_type if kv_cache_type is not None else settings.kv_cache_type,
            use_mmap=use_mmap,
            draft_max=settings.draft_max,
        )
        placement = _place(files, asked, system, gpus, settings, require_full)
    except (PollamaError, ValueError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    _show(model, _report(files, placement, gpus, system), placement, as_json=as_json)


def model_needs(model: str, settings: Settings, *, parallel: int) -> tuple[int, bool]:
    """What one server with ``model`` loaded needs, as ``pollama fit`` plans it here:
    bytes of system memory, and whether any layer goes on a GPU (``pollama ray``)."""
    files = _model_files(model, None, [], settings)
    gpus = devices.discover_gpus(settings)
    # The options a request that sets none loads with, on a server of ``parallel`` slots.
    asked = replace(load_options({}, settings), parallel=parallel)
    placement = _place(files, asked, _system(None), gpus, settings, False)
    return placement.memory.cpu_total, bool(placement.layout.devices())


def _report(
    files: ModelFiles, placement: Placement, gpus: list[DeviceInfo], system: SystemInfo
) -> dict[str, Any]:
    gguf = files.model
    report = fit_report(str(gguf.path), gguf.architecture, placement, gpus, system)
    report["parameters"] = gguf.parameter_size
    report["quantization"] = gguf.file_type
    report["adapters"] = [str(a.path) for a in files.adapters]
    report["adapter_bytes"] = adapter_bytes(files.adapters, gguf.block_count).total
    return report


def _show(model: str, report: dict[str, Any], placement: Placement, *, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_table(model, report, placement)


def _system(ram: str | None) -> SystemInfo:
    """This machine's memory, or ``--ram`` as its free memory."""
    system = devices.system_info()
    if ram is None:
        return system
    free = parse_size(ram)
    return SystemInfo(max(free, system.total_memory), free, 0, system.thread_count)


@dataclass(frozen=True)
class ModelFiles:
    """The GGUF headers a load of the model reads: the model, its vision projector, its
    LoRA adapters and its draft model."""

    model: GGUFModel
    projector: GGUFModel | None
    adapters: tuple[GGUFModel, ...]
    draft: GGUFModel | None = None


def _model_files(
    model: str,
    projector: str | None,
    adapters: list[Path],
    settings: Settings,
    draft: str | None = None,
) -> ModelFiles:
    """A file path or the demo model, else a model in the store, which brings its own
    projector and draft model (unless ``projector`` or ``draft`` is given) and its ADAPTER
    layers (then each ``--adapter`` file): the runner would load them too."""
    stored_adapters: tuple[Path, ...] = ()
    stored_draft: Path | None = None
    try:
        path = resolve_model_path(model)
        stored: Path | None = None
    except ModelNotFound:
        resolved = Store(settings.models_dir).resolve(model)
        path = resolved.model_path
        stored = resolved.projector_paths[0] if resolved.projector_paths else None
        stored_adapters = resolved.adapter_paths
        stored_draft = resolved.draft_path
    vision = Path(projector).expanduser() if projector else stored
    drafter = Path(draft).expanduser() if draft else stored_draft
    return ModelFiles(
        read_model(path),
        read_model(vision) if vision else None,
        tuple(read_model(p) for p in (*stored_adapters, *adapters)),
        read_model(drafter) if drafter else None,
    )


def _place(
    files: ModelFiles,
    asked: LoadOptions,
    system: SystemInfo,
    gpus: list[DeviceInfo],
    settings: Settings,
    require_full: bool,
) -> Placement:
    gguf = files.model
    # The CPU path the server's runners would take: it decides whether llama.cpp keeps
    # repacked copies of the CPU's weights.
    extra = CpuPath.for_settings(settings).decide().extra
    config = resolve_load_options(gguf, asked, system, gpus, extra)
    policy = LayoutPolicy(
        num_gpu=asked.num_gpu,
        require_full=require_full,
        spread=settings.sched_spread,
        gpu_overhead=settings.gpu_overhead,
    )
    return plan_placement(
        gguf,
        config,
        system,
        gpus,
        policy,
        files.projector,
        adapters=files.adapters,
        draft=files.draft,
    )


def _switch(value: Switch | None, default: bool | None) -> bool | None:
    """The flag asked for (None: auto); ``default`` when nothing was asked."""
    if value is None:
        return default
    return None if value is Switch.auto else value is Switch.on


def fit_report(
    path: str,
    architecture: str,
    placement: Placement,
    gpus: list[DeviceInfo],
    system: SystemInfo,
) -> dict[str, Any]:
    """The plan as plain data: what ``--json`` prints and the table shows."""
    memory = placement.memory
    config = placement.config
    total, vram = memory.memory_size()
    devices = []
    for info in gpus:
        mem = memory.gpu(info.id) or DeviceMemory.empty(info.name, info.id, memory.n_layers)
        devices.append(
            {
                "id": info.id.id,
                "library": info.library,
                "name": info.name,
                "free": info.free_memory,
                **_device_figures(mem),
            }
        )
    cpu = {
        **_device_figures(memory.cpu),
        "input_weights": memory.input_weights,
        "total": memory.cpu_total,
        "free": system.free_memory,
    }
    return {
        "model": path,
        "architecture": architecture,
        "num_ctx": config.num_ctx,
        "parallel": config.parallel,
        "batch_size": config.batch_size,
        "kv_cache_type": config.kv_cache_type,
        "flash_attention": config.flash_attention.value,
        "use_mmap": config.use_mmap,
        "extra_buffers": config.extra_buffers.to_json(),
        "layers": {"total": memory.n_layers, "gpu": placement.layout.count},
        "layout": str(placement.layout),
        "processor": memory.processor(),
        "devices": devices,
        "cpu": cpu,
        "projector": _projector_figures(memory.projector),
        "draft": _draft_figures(memory.draft),
        "total": total,
        "vram": vram,
        "warnings": list(config.warnings),
    }


def _projector_figures(projector: ProjectorMemory | None) -> dict[str, Any] | None:
    if projector is None:
        return None
    where = str(projector.device) if projector.device is not None else "cpu"
    return {
        "device": where,
        "weights": projector.weights,
        "graph": projector.graph,
        "total": projector.size,
    }


def _draft_figures(draft: DraftMemory | None) -> dict[str, Any] | None:
    if draft is None:
        return None
    return {
        "device": "cpu",
        "weights": draft.weights,
        "cache": draft.cache,
        "graph": draft.graph,
        "total": draft.size,
    }


def _add_beside(table: Table, vision: dict[str, Any] | None, draft: dict[str, Any] | None) -> None:
    """The rows of what is loaded beside the model: its projector, its draft model."""
    if vision:
        table.add_row(
            f"projector ({vision['device']})",
            "",
            format_bytes(vision["weights"]),
            "",
            format_bytes(vision["graph"]),
            format_bytes(vision["total"]),
            "",
        )
    if draft:
        table.add_row(
            "draft (cpu)",
            "",
            format_bytes(draft["weights"]),
            format_bytes(draft["cache"]),
            format_bytes(draft["graph"]),
            format_bytes(draft["total"]),
            "",
        )


def _device_figures(mem: DeviceMemory) -> dict[str, Any]:
    return {
        "layers": list(mem.layers()),
        "weights": mem.layer_weights,
        "cache": mem.layer_cache,
        "graph": mem.graph,
        "total": mem.size,
    }


def _print_table(model: str, report: dict[str, Any], placement: Placement) -> None:
    console = Console()
    layers = report["layers"]
    title = (
        f"{model}: {layers['gpu']}/{layers['total']} layers on GPU · "
        f"num_ctx {report['num_ctx']} × {report['parallel']} · "
        f"KV {report['kv_cache_type']} · flash attention {report['flash_attention']} · "
        f"extra CPU buffers {placement.config.extra_buffers.describe()}"
    )
    table = Table(title=title, title_justify="left")
    for column in ("device", "layers", "weights", "KV cache", "graph", "total", "free"):
        left = column in ("device", "layers")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    for dev in report["devices"]:
        table.add_row(
            f"{dev['library']}:{dev['id']}",
            format_layers(dev["layers"]),
            format_bytes(dev["weights"]),
            format_bytes(dev["cache"]),
            format_bytes(dev["graph"]),
            format_bytes(dev["total"]),
            format_bytes(dev["free"]),
        )
    cpu = report["cpu"]
    vision, draft = report["projector"], report["draft"]
    beside = vision["total"] if vision and vision["device"] == "cpu" else 0
    beside += draft["total"] if draft else 0
    table.add_row(
        "CPU",
        format_layers(cpu["layers"]),
        format_bytes(cpu["weights"] + cpu["input_weights"]),
        format_bytes(cpu["cache"]),
        format_bytes(cpu["graph"]),
        format_bytes(cpu["total"] - beside),
        format_bytes(cpu["free"]),
    )
    _add_beside(table, vision, draft)
    console.print(table)
    console.print(
        f"total {format_bytes(report['total'])} · VRAM {format_bytes(report['vram'])} · "
        f"{placement.memory.processor()}"
    )
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
