"""The package's layout rules: msseg_core never imports ROS (not even lazily), no module grows past
700 lines, and the README's layout section lists every module, one line each, as the tree has them."""

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
MAX_LINES = 700


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


def test_no_module_over_700_lines() -> None:
    long = {str(p.relative_to(REPO)): n for pkg in PACKAGES for p in sources(pkg)
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by concern: {long}"


def readme_layout() -> dict[str, str]:
    """The README's layout block: 'msseg_core/camera.py' -> its one line."""
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
