"""The installed llama-cpp-python build, found without importing it.

Importing llama_cpp loads llama.cpp's shared libraries, and a build compiled
for another CPU may die doing so; the server must be able to say what it runs
on first. The build key changes whenever the libraries do (a rebuild, an
upgrade), so verdicts about one build never apply to another.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "llama-cpp-python"
_GPU_LIBRARIES = {
    "cuda": "CUDA",
    "hip": "ROCm",
    "vulkan": "Vulkan",
    "metal": "Metal",
    "sycl": "SYCL",
    "musa": "MUSA",
    "opencl": "OpenCL",
    "cann": "CANN",
}


@dataclass(frozen=True)
class EngineBuild:
    version: str
    """llama-cpp-python's version ("" when it is not installed)."""
    lib_dir: Path | None
    libraries: tuple[str, ...]
    """The shared libraries it ships (file names)."""
    key: str
    """Changes whenever any of its libraries does."""

    @property
    def installed(self) -> bool:
        return self.lib_dir is not None

    def gpu_libraries(self) -> list[str]:
        """GPU backends compiled into this build (``libggml-cuda.so`` → CUDA)."""
        found = []
        for name in self.libraries:
            stem = name.split(".", 1)[0].removeprefix("libggml-")
            if stem in _GPU_LIBRARIES and _GPU_LIBRARIES[stem] not in found:
                found.append(_GPU_LIBRARIES[stem])
        return found


def find_build() -> EngineBuild:
    """The llama-cpp-python this interpreter would import."""
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = ""
    spec = importlib.util.find_spec("llama_cpp")  # finds the package without running it
    locations = list(spec.submodule_search_locations or []) if spec else []
    lib_dir = next((Path(p) / "lib" for p in locations if (Path(p) / "lib").is_dir()), None)
    digest = hashlib.sha256(version.encode())
    libraries: list[str] = []
    if lib_dir is not None:
        for path in sorted(lib_dir.iterdir()):
            if ".so" not in path.name and path.suffix not in (".dylib", ".dll"):
                continue
            if path.is_symlink():
                continue  # the versioned file it points to is listed itself
            stat = path.stat()
            libraries.append(path.name)
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return EngineBuild(
        version=version,
        lib_dir=lib_dir,
        libraries=tuple(libraries),
        key=digest.hexdigest()[:16],
    )
