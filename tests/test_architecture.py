"""The shape of the code: every import points down the layers of ``scripts/architecture.py``,
no module imports itself round a circle, and no module or function grows past its limit."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "architecture.py"


def architecture() -> ModuleType:
    spec = importlib.util.spec_from_file_location("architecture", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("architecture", module)
    spec.loader.exec_module(module)
    return module


def test_imports_point_down_the_layers() -> None:
    assert architecture().import_violations() == []


def test_no_import_circles() -> None:
    assert architecture().module_cycles() == []


def test_no_module_or_function_too_long() -> None:
    assert architecture().size_violations() == []


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    # A tree that breaks every rule, so the checks above cannot pass by finding nothing.
    root = tmp_path / "pollama"
    for package in ("store", "api"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "store" / "a.py").write_text("from pollama.api import b\n")
    (root / "store" / "c.py").write_text("import pollama.store.d\n")
    (root / "store" / "d.py").write_text("from pollama.store import c\n")
    body = "\n".join(["def long():"] + ["    x = 1"] * 70)
    (root / "api" / "b.py").write_text(body + "\n" + "\n" * 600)
    checks = architecture()
    assert checks.import_violations(root) == [
        "pollama/store/a.py:1: store imports api (same layer or above)"
    ]
    assert checks.module_cycles(root) == ["import circle: pollama.store.c -> pollama.store.d"]
    assert len(checks.size_violations(root)) == 2
