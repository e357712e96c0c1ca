"""launch/camvid.launch.py without `launch` (not installable here): its declared executable, params
file, profile and remaps exist and match the node, and the equivalent plain command runs for real."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from helpers_ros import (
    FAST_PARAMS,
    REPO,
    NodeProcess,
    SegmentationClient,
)

from msseg_ros.road_grid import ROAD_GRID_DEFAULTS

LAUNCH_FILE = REPO / "launch" / "camvid.launch.py"
NODE_SOURCE = REPO / "msseg_ros" / "segmentation_node.py"


@pytest.fixture(scope="module")
def launch_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("camvid_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # must not need `launch`
    return module


def console_scripts() -> dict[str, str]:
    """setup.py's console_scripts entries, read with ast (running setup.py would build)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    entries = ast.literal_eval(value)
                    return dict(e.replace(" ", "").split("=", 1) for e in entries)
    raise AssertionError("no console_scripts in setup.py")


def subscribed_topic_names() -> set[str]:
    """Topic names SegmentationNode passes to create_subscription (the names remaps can target)."""
    names = set()
    for node in ast.walk(ast.parse(NODE_SOURCE.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "create_subscription":
            topic = node.args[1]
            assert isinstance(topic, ast.Constant), ast.dump(topic)
            names.add(topic.value)
    return names


def test_launch_file_imports_launch_only_when_generating() -> None:
    tree = ast.parse(LAUNCH_FILE.read_text())
    top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                 for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert not top_level & {"launch", "launch_ros"}, top_level
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)


def test_declared_executable_params_and_profile_exist(launch_module: ModuleType) -> None:
    m = launch_module
    package_xml = (REPO / "package.xml").read_text()
    assert f"<name>{m.PACKAGE}</name>" in package_xml
    target = console_scripts()[m.NODE_EXECUTABLE]
    module_name, func = target.split(":")
    assert callable(getattr(importlib.import_module(module_name), func))
    assert module_name == "msseg_ros.segmentation_node"
    # Installed to share/<package>/ by setup.py's data_files globs.
    setup_py = (REPO / "setup.py").read_text()
    for path, pattern in [(m.PARAMS_FILE, "config/*.yaml"), (m.FASTDDS_PROFILE, "config/*.xml"),
                          ("launch/camvid.launch.py", "launch/*.launch.py")]:
        assert (REPO / path).is_file(), path
        assert Path(path).match(pattern) and f'"{pattern}"' in setup_py, (path, pattern)


def test_params_file_names_only_declared_parameters(launch_module: ModuleType) -> None:
    data = yaml.safe_load((REPO / launch_module.PARAMS_FILE).read_text())
    assert list(data) == ["/**"], "the file applies to the node under any name and namespace"
    declared = {node.args[0].value for node in ast.walk(ast.parse(NODE_SOURCE.read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("_declare", "declare_parameter")
                and node.args and isinstance(node.args[0], ast.Constant)}
    declared |= set(ROAD_GRID_DEFAULTS)  # declared by road_grid.declare_road_grid_parameters(node)
    assert set(data["/**"]["ros__parameters"]) <= declared, set(data["/**"]["ros__parameters"]) - declared


def test_remaps_target_topics_the_node_subscribes(launch_module: ModuleType) -> None:
    m = launch_module
    assert {src for src, _, _ in m.REMAPS} == subscribed_topic_names() == {"image", "image/compressed", "camera_info"}
    assert all(arg in m.ARGUMENTS for _, arg, _ in m.REMAPS)
    assert set(m.PARAMETER_ARGUMENTS) <= set(m.ARGUMENTS)
    assert {"image_topic", "camera_info_topic", "namespace", "params_file", "checkpoint", "device",
            "precision"} <= set(m.ARGUMENTS)
    assert m.ARGUMENTS["image_topic"][0] == "/camera/image_raw" and m.ARGUMENTS["namespace"][0] == "msseg"


def test_plain_command_equivalent_to_the_launch_file(launch_module: ModuleType, tiny_checkpoint) -> None:  # noqa: F811
    """`segmentation_node --ros-args --params-file config/camvid.yaml -r image:=/cam/image -r __ns:=/msseg`
    (what the launch file does, built from its own data) runs: it subscribes the remapped topics,
    answers frames published on /cam/image under /msseg, and has the YAML's parameter values."""
    values = {"image_topic": "/cam/image", "camera_info_topic": "/cam/camera_info", "namespace": "msseg",
              "checkpoint": str(tiny_checkpoint), "device": "cpu"}
    args = launch_module.node_arguments(values, share_dir=str(REPO))
    text = " ".join(args)
    for piece in ("--ros-args --params-file", "config/camvid.yaml", "-r image:=/cam/image", "-r __ns:=/msseg",
                  "-r image/compressed:=/cam/image/compressed", "-r camera_info:=/cam/camera_info"):
        assert piece in text, (piece, text)
    extra = ["-p", f"backend:={FAST_PARAMS['backend']}", "-p", f"threads:={FAST_PARAMS['threads']}"]
    with NodeProcess(args + extra) as proc, SegmentationClient("/msseg", image_topic="/cam/image") as client:
        proc.wait_for_output("subscribed to /cam/image", timeout=90)
        client.wait_until_served()
        topics = {name for name, _ in client.node.get_subscriber_names_and_types_by_node("msseg_node", "/msseg")}
        assert {"/cam/image", "/cam/camera_info"} <= topics, topics
        yaml_params = yaml.safe_load((REPO / launch_module.PARAMS_FILE).read_text())["/**"]["ros__parameters"]
        expected = {**yaml_params, "checkpoint": str(tiny_checkpoint), "device": "cpu", **FAST_PARAMS}
        assert client.get_parameters("/msseg/msseg_node", expected) == expected
        assert proc.alive, proc.output()


class _Recorded:
    """Stands in for a launch / launch_ros class: records what it was constructed with."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _fake_launch_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    import ament_index_python.packages

    classes = {name: type(name, (_Recorded,), {}) for name in
               ("LaunchDescription", "DeclareLaunchArgument", "OpaqueFunction", "SetEnvironmentVariable", "Node")}
    modules = {"launch": ["LaunchDescription"], "launch.actions": ["DeclareLaunchArgument", "OpaqueFunction",
                                                                   "SetEnvironmentVariable"],
               "launch_ros": [], "launch_ros.actions": ["Node"]}
    for module_name, names in modules.items():
        module = ModuleType(module_name)
        for name in names:
            setattr(module, name, classes[name])
        monkeypatch.setitem(sys.modules, module_name, module)
    monkeypatch.setattr(ament_index_python.packages, "get_package_share_directory", lambda package: str(REPO))


@pytest.mark.parametrize("user_profile", [False, True])
def test_generate_launch_description_with_stand_ins(launch_module: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                                    user_profile: bool) -> None:
    """Run generate_launch_description() against recording stand-ins for `launch` / `launch_ros`: the
    arguments, the profile variables (only when the user set none) and the Node it builds."""
    m = launch_module
    _fake_launch_modules(monkeypatch)
    for var in m.PROFILE_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    if user_profile:
        monkeypatch.setenv("FASTRTPS_DEFAULT_PROFILES_FILE", "/my/profile.xml")
    actions = m.generate_launch_description().args[0]
    declared = [a.args[0] for a in actions if type(a).__name__ == "DeclareLaunchArgument"]
    assert declared == list(m.ARGUMENTS)
    env = {a.args[0]: a.args[1] for a in actions if type(a).__name__ == "SetEnvironmentVariable"}
    if user_profile:
        assert env == {}
    else:
        assert set(env) == set(m.PROFILE_ENV_VARS) and all(Path(p).is_file() for p in env.values()), env

    opaque = next(a for a in actions if type(a).__name__ == "OpaqueFunction")
    context = type("Context", (), {"launch_configurations": {
        **{k: v[0] for k, v in m.ARGUMENTS.items()}, "image_topic": "/front/image", "device": "cuda:0"}})()
    (node,) = opaque.kwargs["function"](context)
    kw = node.kwargs
    assert (kw["package"], kw["executable"], kw["name"], kw["namespace"]) == (
        m.PACKAGE, m.NODE_EXECUTABLE, m.NODE_NAME, "msseg")
    params_file, overrides = kw["parameters"]
    assert Path(params_file) == REPO / m.PARAMS_FILE and Path(params_file).is_file()
    assert overrides == {"device": "cuda:0"}  # empty arguments leave the YAML's values alone
    assert kw["remappings"] == [("image", "/front/image"), ("image/compressed", "/front/image/compressed"),
                                ("camera_info", "/camera/camera_info")]
