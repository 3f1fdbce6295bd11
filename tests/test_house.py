"""The house rules the code is held to: one exception tree, no import circle."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import observer
from observer.errors import ObserverError

PACKAGE = Path(observer.__file__).parent


def _modules() -> list[str]:
    return [
        module.name
        for module in pkgutil.walk_packages([str(PACKAGE)], prefix="observer.")
        if not module.name.endswith("__main__")
    ]


def test_every_exception_observer_defines_is_under_observer_error() -> None:
    outside = []
    for name in _modules():
        module = importlib.import_module(name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            ours = value.__module__ == name and issubclass(value, BaseException)
            if ours and not issubclass(value, ObserverError):
                outside.append(f"{name}.{value.__qualname__}")
    assert outside == []


def _imports(path: Path, package: str) -> set[str]:
    """The modules of `package` that a file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == package:  # `from observer.worker import protocol`
                found |= {f"{package}.{alias.name}" for alias in node.names}
            elif node.module.startswith(f"{package}."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(f"{package}.")}
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports in `graph`, or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(graph.get(module, ())):
            if found := visit(imported, [*path, module]):
                return found
        done.add(module)
        return None

    for module in sorted(graph):
        if found := visit(module, []):
            return found
    return None


def test_the_cycle_finder_finds_the_circle_the_worker_had() -> None:
    graph = {"boot": {"worker"}, "worker": {"client"}, "client": {"boot"}}
    assert _cycle(graph) == ["boot", "worker", "client", "boot"]


def test_no_package_of_observer_imports_itself_in_a_circle() -> None:
    for directory in [PACKAGE, *(p for p in PACKAGE.iterdir() if (p / "__init__.py").exists())]:
        package = "observer" if directory == PACKAGE else f"observer.{directory.name}"
        graph = {
            f"{package}.{path.stem}": _imports(path, package) - {f"{package}.{path.stem}"}
            for path in directory.glob("*.py")
            if path.stem != "__init__"
        }
        if package == "observer":  # the top level: only its modules, not its packages
            graph = {m: {i for i in imported if i in graph} for m, imported in graph.items()}
        assert _cycle(graph) is None, package
