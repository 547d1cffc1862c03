"""``pollama info``: what the engine is, what this CPU allows, and which CPU path loads take.

Works without a server: it reads the kept verdict, or runs the engine probe
(about a second) when there is none for this build and CPU.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from pollama import __version__, devices
from pollama.engine.cpu_path import CpuPath
from pollama.errors import EngineUnusable
from pollama.settings import Settings


def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    recheck: Annotated[
        bool, typer.Option(help="Run the engine probe again, replacing the kept verdict.")
    ] = False,
) -> None:
    settings = Settings.from_env()
    path = CpuPath.for_settings(settings)
    report = engine_report(path, settings, recheck=recheck)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for label, value in _lines(report):
        typer.echo(f"{label:<22}{value}")


def engine_report(path: CpuPath, settings: Settings, *, recheck: bool = False) -> dict[str, Any]:
    """Everything ``pollama info`` shows, as plain data."""
    verdict = path.verdict(recheck=recheck)
    try:
        decision = path.decide()
        cpu_path: dict[str, Any] = {
            "extra_buffers": decision.extra.on,
            "why": decision.why,
        }
    except EngineUnusable as exc:
        cpu_path = {"extra_buffers": None, "why": str(exc)}
    cpu_path["setting"] = settings.cpu_extra_buffers
    cpu_path["verdict"] = verdict.to_json() if verdict else None
    cpu_path["verdict_file"] = str(path.store.path) if path.store else None
    engine_info = verdict.info if verdict else None
    gpus = devices.discover_gpus(settings)
    return {
        "pollama": __version__,
        "engine": {
            "package": "llama-cpp-python",
            "version": path.build.version,
            "libraries": str(path.build.lib_dir) if path.build.lib_dir else None,
            "build_key": path.build.key,
            "system_info": engine_info.system_info if engine_info else None,
            "compiled_cpu_features": list(engine_info.cpu_features) if engine_info else None,
            "extra_buffer_types": list(engine_info.extra_buffers) if engine_info else None,
            "backends": list(engine_info.backends) if engine_info else None,
            "gpu_libraries": path.build.gpu_libraries(),
        },
        "cpu": {
            "model": path.cpu.model,
            "machine": path.cpu.machine,
            "allows": path.cpu.simd(),
            "amx_permitted_by_os": path.cpu.amx_permitted,
            "identity": path.cpu.identity,
        },
        "gpus": [
            {"library": g.library, "id": g.id.id, "name": g.name, "total": g.total_memory}
            for g in gpus
        ],
        "cpu_path": cpu_path,
        "rebuild_for_this_cpu": path.fix,
    }


def _lines(report: dict[str, Any]) -> list[tuple[str, str]]:
    engine, cpu, path = report["engine"], report["cpu"], report["cpu_path"]
    unknown = "unknown (the engine probe did not finish)"

    def listed(values: list[str] | None) -> str:
        return unknown if values is None else (" ".join(values) or "none")

    if path["extra_buffers"] is None:
        state = "none: the engine cannot run on this CPU"
    else:
        state = "on" if path["extra_buffers"] else "off"
    amx = cpu["amx_permitted_by_os"]
    return [
        ("pollama", report["pollama"]),
        ("engine", f"llama-cpp-python {engine['version'] or 'not installed'}"),
        ("libraries", engine["libraries"] or "not found"),
        ("compiled for", listed(engine["compiled_cpu_features"])),
        ("extra buffer types", listed(engine["extra_buffer_types"])),
        ("GPU libraries", " ".join(engine["gpu_libraries"]) or "none in this build"),
        ("cpu", f"{cpu['model']} ({cpu['machine']})"),
        ("cpu allows", " ".join(cpu["allows"]) or "none found"),
        ("AMX (OS)", "no AMX here" if amx is None else ("permitted" if amx else "not permitted")),
        (
            "GPUs",
            ", ".join(f"{g['library']}:{g['id']} {g['name']}" for g in report["gpus"]) or "none",
        ),
        ("extra CPU buffers", f"{state} (POLLAMA_CPU_EXTRA_BUFFERS={path['setting']})"),
        ("why", path["why"]),
        ("verdict kept in", path["verdict_file"] or "memory"),
        ("rebuild for this CPU", report["rebuild_for_this_cpu"]),
    ]
