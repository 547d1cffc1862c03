"""llama.cpp's ctypes bindings, without llama-cpp-python's high-level package.

``import llama_cpp`` runs the package's ``__init__``, which imports the high-level
``Llama`` class and, through it, jinja2 and its chat formats: ~6 MiB and ~35 ms of every
runner, the idle spare included (measured beside numpy, which the runner's sampler
imports anyway), for code the runner never calls. The runner needs only the
bindings (``llama_cpp.llama_cpp``, ``llama_cpp.mtmd_cpp``), so it imports them under a
stand-in package module. The stand-in stays what ``llama_cpp`` is in this process, and
runs the real ``__init__`` into itself the first time anything asks it for a name it
lacks (``from llama_cpp import Llama``, ``llama_cpp.__version__``), so other code in the
process still sees the whole package.

Every runner module imports llama.cpp through here.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import re
import sys
import threading
import types
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

_PACKAGE = "llama_cpp"
_DISTRIBUTION = "llama-cpp-python"


def _install_stand_in() -> None:
    """Put the stand-in package in ``sys.modules``, unless ``llama_cpp`` is already there
    (the real package, imported by someone else, serves as well)."""
    if _PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(_PACKAGE)  # finds the package without running it
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ModuleNotFoundError(f"No module named {_PACKAGE!r}", name=_PACKAGE)
    module = types.ModuleType(_PACKAGE)
    module.__spec__ = spec
    module.__loader__ = spec.loader
    module.__file__ = spec.origin
    module.__path__ = list(spec.submodule_search_locations)
    module.__package__ = _PACKAGE
    module.__dict__["__getattr__"] = _OnDemand(module, spec.loader)
    sys.modules[_PACKAGE] = module


class _OnDemand:
    """The stand-in's ``__getattr__`` (PEP 562): the first name it lacks runs the real
    ``__init__`` into it, once; every thread but the one running it waits for the end."""

    def __init__(self, module: types.ModuleType, loader: importlib.abc.Loader) -> None:
        self._module = module
        self._loader = loader
        self._lock = threading.RLock()
        self._running = False

    def __call__(self, name: str) -> Any:
        namespace = self._module.__dict__
        with self._lock:
            # The __init__'s own imports may ask for a name it has not set yet: no rerun.
            if namespace.get("__getattr__") is self and not self._running:
                self._running = True
                try:
                    self._loader.exec_module(self._module)
                    del namespace["__getattr__"]  # the whole package now: no more stand-in
                finally:
                    self._running = False
        try:
            return namespace[name]
        except KeyError:
            raise AttributeError(f"module {_PACKAGE!r} has no attribute {name!r}") from None


def _version(bindings_file: str | None) -> str:
    """llama-cpp-python's ``__version__``, read from the ``__init__`` next to the bindings
    in use (not executed); the installed distribution's version if that fails."""
    if bindings_file:
        try:
            source = (Path(bindings_file).parent / "__init__.py").read_text(encoding="utf-8")
        except OSError:
            source = ""
        found = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", source, re.MULTILINE)
        if found:
            return found.group(1)
    try:
        return metadata.version(_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return ""


if TYPE_CHECKING:
    import llama_cpp.llama_cpp as L
    import llama_cpp.mtmd_cpp as M
else:
    _install_stand_in()
    L = importlib.import_module("llama_cpp.llama_cpp")
    M = importlib.import_module("llama_cpp.mtmd_cpp")

VERSION = _version(L.__file__)
"""llama-cpp-python's version, as ``llama_cpp.__version__`` would give it."""

__all__ = ["L", "M", "VERSION"]
