"""The package's layout rules: layers whose imports run one way, no import cycles, msseg_core never
imports ROS (not even lazily), and the README's layout section lists every module, one line each, as the
tree has them."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("msseg_core", "msseg_ros")
ROS_MODULES = ("msseg_ros", "rclpy", "rcl_interfaces", "rosidl_runtime_py", "rpyutils", "ament_index_python",
               "launch", "launch_ros", "builtin_interfaces", "std_msgs", "sensor_msgs", "nav_msgs", "geometry_msgs",
               "diagnostic_msgs", "lifecycle_msgs")
"""Top-level modules of ROS 2 (and msseg_ros itself) that msseg_core must not import."""
LAYERS = {
    "msseg_core": [("io", "classes", "zoo", "splits"), ("models",), ("checkpoint",),
                   ("data", "synthetic", "ground"),
                   ("runtime",), ("evaluation",), ("training", "deploy"), ("bench",), ("cli",)],
    "msseg_ros": [("transport",), ("node",), ("tools", "bag"), ("bench",)],
}
"""Each package's rooms, bottom to top: a module may import its own layer and the layers below it, never
one above (msseg_ros sits on top of all of msseg_core). The package's own __init__ (the front door)
may name anything."""


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, at any depth (inside functions too), and of
    importlib.import_module / __import__ called with a constant name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("importlib.import_module", "__import__") \
                and node.args and isinstance(node.args[0], ast.Constant):
            found.append((node.lineno, node.args[0].value))
    return found


def test_msseg_core_source_never_imports_ros() -> None:
    offending = [f"{path.relative_to(REPO)}:{line}: {module}" for path in sources("msseg_core")
                 for line, module in imported_modules(path) if module.split(".")[0] in ROS_MODULES]
    assert not offending, offending


@pytest.mark.slow
def test_importing_every_msseg_core_module_loads_no_ros() -> None:
    """In a fresh interpreter (this one has rclpy loaded by other tests): every module of msseg_core
    imported, then no ROS module in sys.modules."""
    modules = [".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
               for p in sources("msseg_core")]
    code = (f"import importlib, json, sys\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {ROS_MODULES!r})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert len(modules) > 30


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def layer(module: str) -> tuple[str, int] | None:
    """(package, rank) of a module of ours, None for anything else or for a package's front door."""
    parts = module.split(".")
    if parts[0] not in LAYERS or len(parts) < 2:
        return None
    for rank, rooms in enumerate(LAYERS[parts[0]]):
        if parts[1] in rooms:
            return parts[0], rank
    raise AssertionError(f"{module}: {parts[0]}.{parts[1]} is in no layer of test_layout.LAYERS")


def our_imports() -> dict[str, set[str]]:
    """module -> the modules of ours it imports (at any depth, TYPE_CHECKING included), resolved to
    modules that exist (`from a.b import c` names a.b.c when that is a module, else a.b)."""
    modules = {module_name(p): p for pkg in PACKAGES for p in sources(pkg)}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                         for alias in node.names]
            found |= {n for n in names if n.split(".")[0] in PACKAGES and n != module}
        graph[module] = found
    return graph


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower_ones() -> None:
    upward = []
    for module, imported in our_imports().items():
        mine = layer(module)
        if mine is None:
            continue
        for target in imported:
            theirs = layer(target)
            if theirs is None:
                continue
            if theirs[0] == mine[0] and theirs[1] > mine[1]:
                upward.append(f"{module} -> {target}")
            if mine[0] == "msseg_core" and theirs[0] == "msseg_ros":
                upward.append(f"{module} -> {target}")
    assert not upward, "imports against the layers (see test_layout.LAYERS):\n" + "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    """Not even through a function-level or type-only import: a cycle means two modules are one concern,
    or one of them belongs in another layer."""
    graph = our_imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_front_door_names_what_users_need() -> None:
    import msseg_core

    for name in ("Segmenter", "build_model", "load_checkpoint", "resolve_checkpoint", "zoo_names"):
        assert callable(getattr(msseg_core, name)), name
    assert msseg_core.Segmenter.__module__ == "msseg_core.runtime.segmenter"


def readme_layout() -> dict[str, str]:
    """The README's layout block: 'msseg_core/ground/camera.py' -> its one line."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Layout\n.*?```\n(.*?)```", text, re.S).group(1)
    entries, package = {}, None
    for line in block.splitlines():
        if re.match(r"^\S+/\s", line) or re.match(r"^\S+/$", line):
            package = line.split()[0].rstrip("/")
            continue
        m = re.match(r"^  (\S+\.py)\s+(\S.*)$", line)
        if m and package in PACKAGES:
            entries[f"{package}/{m.group(1)}"] = m.group(2)
    return entries


def test_readme_layout_lists_every_module_once() -> None:
    """Every module, and every package __init__ with code in it (not only a docstring or re-exports)."""
    listed = readme_layout()
    files = {str(p.relative_to(REPO)): p for pkg in PACKAGES for p in sources(pkg)}
    required = {name for name, p in files.items()
                if p.name not in ("__init__.py", "__main__.py") or len(p.read_text().splitlines()) > 30}
    assert not sorted(required - set(listed)), "modules missing from the README's layout section"
    assert not sorted(set(listed) - set(files)), "the README's layout section lists modules that do not exist"
