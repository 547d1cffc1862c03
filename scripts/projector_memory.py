"""A vision projector's memory: pollama's estimate against what llama.cpp measures.

Writes LLaVA-style (``mlp``) projectors of several geometries for the demo model
(``tests/assets/projector.py``, random weights), loads each with mtmd as the
runner does (CPU, warm-up on), reads the sizes mtmd logs and prints them beside
``pollama.memory.projector``'s estimate. The log gives two decimals of MiB, so
buffers under ~0.5 MiB are measured no better than a few percent.

    PYTHONPATH=. python scripts/projector_memory.py [--flash auto|disabled]
"""

from __future__ import annotations

import argparse
import ctypes
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import llama_cpp as L
import llama_cpp.mtmd_cpp as M

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from assets import projector as asset  # noqa: E402

from pollama.demo import demo_model_path  # noqa: E402
from pollama.ggufmeta import read_model  # noqa: E402
from pollama.memory.projector import projector_memory  # noqa: E402

MIB = 1024 * 1024
# image size, patch size, embedding width, FFN width, heads (two blocks each)
GEOMETRIES = [
    (asset.IMAGE_SIZE, asset.PATCH_SIZE, asset.VISION_EMBD, asset.VISION_FF, asset.VISION_HEADS),
    (64, 16, 64, 256, 4),
    (128, 32, 64, 256, 4),
    (224, 14, 128, 512, 4),
    (224, 14, 256, 1024, 4),
    (224, 14, 256, 4096, 4),
    (224, 14, 384, 1536, 6),
    (224, 16, 384, 3072, 6),
    (224, 16, 768, 3072, 12),
    (336, 14, 256, 1024, 4),
    (336, 14, 512, 2048, 8),
]
_LINES: list[str] = []


def _on_log(_level: int, text: bytes, _user: Any) -> None:
    _LINES.append(text.decode(errors="replace"))


def measure(model: Any, path: Path, flash: int) -> tuple[float, float, bool]:
    """mtmd's logged model size and compute buffer (MiB), and whether it used flash."""
    params = M.mtmd_context_params_default()
    params.use_gpu = False
    params.warmup = True
    params.print_timings = False
    params.flash_attn_type = flash
    _LINES.clear()
    ctx = M.mtmd_init_from_file(str(path).encode(), model, params)
    if not ctx:
        raise SystemExit(f"mtmd could not load {path}:\n{''.join(_LINES)}")
    M.mtmd_free(ctx)
    log = "".join(_LINES)
    weights = re.search(r"model size:\s+([0-9.]+) MiB", log)
    graphs = re.findall(r"compute buffer size =\s+([0-9.]+) MiB", log)
    assert weights and graphs, log
    return float(weights[1]), float(graphs[-1]), "flash attention is enabled" in log


def write(directory: Path, geometry: tuple[int, int, int, int, int]) -> Path:
    image, patch, embd, ff, heads = geometry
    asset.IMAGE_SIZE, asset.PATCH_SIZE, asset.IMAGE_TOKENS = image, patch, (image // patch) ** 2
    asset.VISION_EMBD, asset.VISION_FF, asset.VISION_HEADS = embd, ff, heads
    return asset.write_projector(directory / f"mmproj-{image}-{patch}-{embd}-{ff}.gguf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flash", choices=["auto", "disabled"], default="auto")
    flash = {"auto": -1, "disabled": 0}[parser.parse_args().flash]
    callback = L.llama_log_callback(_on_log)
    L.llama_log_set(callback, ctypes.c_void_p(0))
    M.mtmd_helper_log_set(callback, ctypes.c_void_p(0))
    L.llama_backend_init()
    model = L.llama_model_load_from_file(
        str(demo_model_path()).encode(), L.llama_model_default_params()
    )
    print("geometry (image/patch embd ff heads)  flash  weights MiB (log/est)  graph MiB (log/est)")
    with tempfile.TemporaryDirectory() as tmp:
        for geometry in GEOMETRIES:
            path = write(Path(tmp), geometry)
            weights, graph, on = measure(model, path, flash)
            est = projector_memory(read_model(path), flash_attention=on)
            image, patch, embd, ff, heads = geometry
            print(
                f"{image:>3}/{patch:<2} {embd:>4} {ff:>5} {heads:>2}  {'on ' if on else 'off'}  "
                f"{weights:8.2f} / {est.weights / MIB:8.3f}  "
                f"{graph:6.2f} / {est.graph / MIB:6.3f} ({est.graph / MIB / graph - 1:+.1%})"
            )
    L.llama_model_free(model)


if __name__ == "__main__":
    main()
