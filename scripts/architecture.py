"""The shape of ``pollama/``: every import points down the layers, and nothing grows too big.

    python scripts/architecture.py        # prints every violation; exit status 1 if any

A package (or top-level module) may import itself and anything in a lower layer,
never a sibling in its own layer nor anything above it; so there is no circle and
no upward arrow. Imports inside functions count too. ``tests/test_architecture.py``
runs the same checks.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "pollama"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("units", "logs"),
    ("errors",),
    ("settings",),
    ("ggufmeta", "devices", "demo"),
    ("engine",),  # the llama.cpp build: its CPU kernels, the probe, the CPU path
    ("options",),
    ("memory",),
    ("protocol",),
    ("runner", "llm", "chat", "store"),  # the runner process | its server side | chat | store
    ("scheduler",),
    ("api", "ray"),  # the HTTP server | its replicas on Ray Serve
    ("cli",),
    ("__main__",),
)
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60


def layer_of(unit: str) -> int:
    for index, units in enumerate(LAYERS):
        if unit in units:
            return index
    raise KeyError(f"pollama.{unit} is in no layer of scripts/architecture.py")


def unit_of(module: str) -> str | None:
    """``pollama.store.disk`` → ``store``; ``pollama`` itself (``__version__``) → None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "pollama" and len(parts) > 1 else None


def modules(root: Path = ROOT) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def imports(path: Path, module: str) -> Iterator[tuple[int, str]]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:  # ``from pollama import devices`` imports a package
                yield node.lineno, f"{base}.{alias.name}"


def import_violations(root: Path = ROOT) -> list[str]:
    found = []
    for module, path in modules(root):
        unit = unit_of(module)
        if unit is None:
            continue
        for line, target in imports(path, module):
            other = unit_of(target)
            if (
                other is None
                or other == unit
                or not (root / other).exists()
                and not (root / f"{other}.py").exists()
            ):
                continue
            if layer_of(other) >= layer_of(unit):
                where = path.relative_to(root.parent)
                problem = f"{where}:{line}: {unit} imports {other} (same layer or above)"
                if problem not in found:
                    found.append(problem)
    return found


def module_cycles(root: Path = ROOT) -> list[str]:
    """Circles between modules (a package's own modules included): each strongly
    connected group of more than one module, as one line."""
    known = {module for module, _ in modules(root)}
    graph: dict[str, set[str]] = {}
    for module, path in modules(root):
        targets = {target for _, target in imports(path, module)}
        graph[module] = {t for t in targets if t in known and t != module}
    found = []
    for group in _strongly_connected(graph):
        if len(group) > 1:
            found.append("import circle: " + " -> ".join(sorted(group)))
    return found


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively (the graph is small, but recursion is not needed)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                groups.append(group)
    return groups


def size_violations(root: Path = ROOT) -> list[str]:
    found = []
    for _, path in modules(root):
        text = path.read_text()
        where = path.relative_to(root.parent)
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{where}: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(
                        f"{where}:{node.lineno}: {node.name}() is {length} lines "
                        f"(at most {MAX_FUNCTION_LINES})"
                    )
    return found


def main() -> int:
    problems = import_violations() + module_cycles() + size_violations()
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
