"""launch/camvid.launch.py and multi_camera.launch.py without `launch` (not installable here): their
declared executable, params files, profile and remaps exist and match the node, the equivalent plain
commands run for real (one camera, and three cameras in one node), and generate_launch_description()
builds a composable description (a scoped group; the Fast DDS profile on the node process only)."""

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
    SegmentationClient,
    make_header,
    namespace,
    random_rgb,
    rgb_image,
)

from msseg_ros.node.road_grid import ROAD_GRID_DEFAULTS
from msseg_ros.tools import launching
from msseg_ros.transport import topics
from msseg_ros.transport.graph import NodeProcess
from msseg_ros.transport.qos import PROFILE_ENV_VARS

pytestmark = pytest.mark.ros

LAUNCH_FILE = REPO / "launch" / "camvid.launch.py"
MULTI_LAUNCH_FILE = REPO / "launch" / "multi_camera.launch.py"
NODE_SOURCE = REPO / "msseg_ros" / "node" / "segmentation_node.py"
PARAMETER_SOURCE = REPO / "msseg_ros" / "node" / "parameters.py"


def load_launch(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.name.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # must not need `launch`
    return module


@pytest.fixture(scope="module")
def launch_module() -> ModuleType:
    return load_launch(LAUNCH_FILE)


@pytest.fixture(scope="module")
def multi_launch() -> ModuleType:
    return load_launch(MULTI_LAUNCH_FILE)


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
    """Topic names SegmentationNode passes to create_subscription (the names remaps can target): names
    from msseg_ros.transport.topics, never computed, in a camera's namespace (`camera.topic(topics.IMAGE)`: 'image'
    for a single camera, 'front/image' for camera front)."""
    names = set()
    for node in ast.walk(ast.parse(NODE_SOURCE.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "create_subscription":
            call = node.args[1]
            assert isinstance(call, ast.Call) and ast.unparse(call.func) == "camera.topic", ast.dump(call)
            topic = call.args[0]
            assert isinstance(topic, ast.Attribute) and ast.unparse(topic.value) == "topics", ast.dump(topic)
            names.add(getattr(topics, topic.attr))
    return names


def declared_parameter_names() -> set[str]:
    """Names the node declares with a constant (node_parameters.declare_node_parameters and configure)."""
    names = set()
    for source in (NODE_SOURCE, PARAMETER_SOURCE):
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            if func in ("declare", "self._declare_for_configure", "self.declare_parameter"):
                name = node.args[1] if func == "declare" else node.args[0]
                if isinstance(name, ast.Constant):
                    names.add(name.value)
    return names | set(ROAD_GRID_DEFAULTS)  # declared by parameters.declare_road_grid_parameters(node)


@pytest.mark.parametrize("path", [LAUNCH_FILE, MULTI_LAUNCH_FILE], ids=lambda p: p.name)
def test_launch_file_imports_launch_only_when_generating(path: Path) -> None:
    tree = ast.parse(path.read_text())
    top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                 for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert not top_level & {"launch", "launch_ros"}, top_level
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)


@pytest.mark.parametrize("path", [LAUNCH_FILE, MULTI_LAUNCH_FILE], ids=lambda p: p.name)
def test_declared_executable_params_and_profile_exist(path: Path) -> None:
    m, launch_file = load_launch(path), f"launch/{path.name}"
    package_xml = (REPO / "package.xml").read_text()
    assert f"<name>{m.PACKAGE}</name>" in package_xml
    target = console_scripts()[m.NODE_EXECUTABLE]
    module_name, func = target.split(":")
    assert callable(getattr(importlib.import_module(module_name), func))
    assert module_name == "msseg_ros.node.segmentation_node"
    # Installed to share/<package>/ by setup.py's data_files globs.
    setup_py = (REPO / "setup.py").read_text()
    for file, pattern in [(m.PARAMS_FILE, "config/*.yaml"), (launching.FASTDDS_PROFILE, "config/*.xml"),
                          (launch_file, "launch/*.launch.py")]:
        assert (REPO / file).is_file(), file
        assert Path(file).match(pattern) and f'"{pattern}"' in setup_py, (file, pattern)


@pytest.mark.parametrize("path", [LAUNCH_FILE, MULTI_LAUNCH_FILE], ids=lambda p: p.name)
def test_params_file_names_only_declared_parameters(path: Path) -> None:
    """Every name in the YAML is a parameter the node declares; a camera's section holds only
    per-camera parameters, and only for cameras the file lists."""
    data = yaml.safe_load((REPO / load_launch(path).PARAMS_FILE).read_text())
    assert list(data) == ["/**"], "the file applies to the node under any name and namespace"
    params = data["/**"]["ros__parameters"]
    cameras = params.get("cameras", [])
    top = {k for k in params if k not in cameras}
    declared = declared_parameter_names()
    assert top <= declared, top - declared
    for camera in cameras:
        assert set(params.get(camera, {})) <= set(ROAD_GRID_DEFAULTS), (camera, params.get(camera))


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
    ns, cam = namespace("msseg"), namespace("cam")
    values = {"image_topic": f"{cam}/image", "camera_info_topic": f"{cam}/camera_info", "namespace": ns,
              "checkpoint": str(tiny_checkpoint), "device": "cpu"}
    args = launch_module.node_arguments(values, share_dir=str(REPO))
    text = " ".join(args)
    for piece in ("--ros-args --params-file", "config/camvid.yaml", f"-r image:={cam}/image", f"-r __ns:={ns}",
                  f"-r image/compressed:={cam}/image/compressed", f"-r camera_info:={cam}/camera_info"):
        assert piece in text, (piece, text)
    extra = ["-p", f"backend:={FAST_PARAMS['backend']}", "-p", f"threads:={FAST_PARAMS['threads']}"]
    with NodeProcess("segmentation_node", args + extra) as proc, \
            SegmentationClient(ns, image_topic=f"{cam}/image") as client:
        proc.wait_for_output(f"subscribed to {cam}/image", timeout=90)
        client.wait_until_served()
        subscribed = client.subscribed_topics("msseg_node", ns)
        assert {f"{cam}/image", f"{cam}/camera_info"} <= subscribed, subscribed
        yaml_params = yaml.safe_load((REPO / launch_module.PARAMS_FILE).read_text())["/**"]["ros__parameters"]
        expected = {**yaml_params, "checkpoint": str(tiny_checkpoint), "device": "cpu", **FAST_PARAMS}
        assert client.get_parameters(f"{ns}/msseg_node", expected) == expected
        assert proc.alive, proc.output()


def test_multi_camera_plain_command_serves_every_camera(multi_launch: ModuleType, tiny_checkpoint) -> None:  # noqa: F811
    """multi_camera.launch.py's plain command: one node process subscribes each camera's remapped
    topics, answers each camera's frames under <namespace>/<camera>/ with that camera's header, and
    has config/multi_camera.yaml's per-camera mounting."""
    ns, cam = namespace("msseg_multi"), namespace("cams")
    values = {"cameras": "[front, left, right]", "image_topic": f"{cam}/{{camera}}/image_raw",
              "camera_info_topic": f"{cam}/{{camera}}/camera_info", "namespace": ns,
              "checkpoint": str(tiny_checkpoint), "device": "cpu"}
    args = multi_launch.node_arguments(values, share_dir=str(REPO))
    text = " ".join(args)
    for piece in ("config/multi_camera.yaml", f"-r front/image:={cam}/front/image_raw", f"-r __ns:={ns}",
                  "-p cameras:=[front,left,right]", f"-r right/camera_info:={cam}/right/camera_info"):
        assert piece in text, (piece, text)
    extra = ["-p", f"backend:={FAST_PARAMS['backend']}", "-p", f"threads:={FAST_PARAMS['threads']}"]
    clients = {}
    with NodeProcess("segmentation_node", args + extra) as proc:
        try:
            proc.wait_for_output("subscribed to", timeout=120)
            for camera in ("front", "left", "right"):
                clients[camera] = SegmentationClient(f"{ns}/{camera}", image_topic=f"{cam}/{camera}/image_raw",
                                                     outputs=("labels",), name=f"multi_{camera}")
            for camera, client in clients.items():
                client.wait_until_served()
                sent = rgb_image(random_rgb(24, 32, seed=len(camera)), make_header(f"{camera}_optical_frame"))
                labels = client.request(sent)["labels"]
                assert labels.header == sent.header, camera
            subscribed = clients["front"].subscribed_topics("msseg_node", ns)
            assert {f"{cam}/{c}/image_raw" for c in clients} <= subscribed, subscribed
            got = clients["front"].get_parameters(f"{ns}/msseg_node", ["cameras", "front.camera_height",
                                                                       "left.camera_yaw", "right.grid_resolution"])
            assert got == {"cameras": ["front", "left", "right"], "front.camera_height": 1.4,
                           "left.camera_yaw": 1.5708, "right.grid_resolution": 0.2}, got
        finally:
            for client in clients.values():
                client.close()
        assert proc.alive, proc.output()


@pytest.mark.parametrize(("values", "expected"), [
    ({"cameras": "[front,front]"}, "listed twice"),
    ({"cameras": "[front,2nd]"}, "must start with a letter"),
    ({"cameras": "[]"}, "at least one camera"),
    ({"log_level": "loud"}, "log_level"),
    ({"respawn": "maybe"}, "respawn"),
    ({"sigterm_timeout": "-3"}, "sigterm_timeout"),
    ({"use_sim_time": "yes please"}, "use_sim_time"),
])
def test_bad_launch_arguments_are_one_clear_error(multi_launch: ModuleType, values: dict, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        multi_launch.resolve(values, str(REPO))


class _Recorded:
    """Stands in for a launch / launch_ros class: records what it was constructed with."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _fake_launch_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    import ament_index_python.packages

    classes = {name: type(name, (_Recorded,), {}) for name in
               ("LaunchDescription", "DeclareLaunchArgument", "OpaqueFunction", "GroupAction", "Node")}
    modules = {"launch": ["LaunchDescription"], "launch.actions": ["DeclareLaunchArgument", "OpaqueFunction",
                                                                   "GroupAction"],
               "launch_ros": [], "launch_ros.actions": ["Node"]}
    for module_name, names in modules.items():
        module = ModuleType(module_name)
        for name in names:
            setattr(module, name, classes[name])
        monkeypatch.setitem(sys.modules, module_name, module)
    monkeypatch.setattr(ament_index_python.packages, "get_package_share_directory", lambda package: str(REPO))


def _generated(m: ModuleType, monkeypatch: pytest.MonkeyPatch, **arguments: str):
    """generate_launch_description() with stand-ins: (the scoped group, the Node its function builds)."""
    _fake_launch_modules(monkeypatch)
    (group,) = m.generate_launch_description().args[0]  # one action: everything is in one scoped group
    assert type(group).__name__ == "GroupAction" and group.kwargs.get("scoped") is True
    actions = group.args[0]
    declared = [a.args[0] for a in actions if type(a).__name__ == "DeclareLaunchArgument"]
    assert declared == list(m.ARGUMENTS)
    assert {type(a).__name__ for a in actions} == {"DeclareLaunchArgument", "OpaqueFunction"}  # no env actions
    opaque = next(a for a in actions if type(a).__name__ == "OpaqueFunction")
    context = type("Context", (), {"launch_configurations": {**{k: v[0] for k, v in m.ARGUMENTS.items()},
                                                             **arguments}})()
    (node,) = opaque.kwargs["function"](context)
    return group, node


@pytest.mark.parametrize("user_profile", [False, True])
def test_generate_launch_description_with_stand_ins(launch_module: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                                    user_profile: bool) -> None:
    """generate_launch_description() against recording stand-ins for `launch` / `launch_ros`: one scoped
    group (nothing it declares or sets outlives it in a parent launch), the arguments, and the Node: the
    profile on the node process only (none when the user or a parent set one), log level, respawn,
    sigterm_timeout, and overrides only for the arguments given."""
    m = launch_module
    for var in PROFILE_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    if user_profile:
        monkeypatch.setenv("FASTRTPS_DEFAULT_PROFILES_FILE", "/my/profile.xml")
    _, node = _generated(m, monkeypatch, image_topic="/front/image", device="cuda:0", log_level="debug",
                         respawn="true", sigterm_timeout="20")
    kw = node.kwargs
    assert (kw["package"], kw["executable"], kw["name"], kw["namespace"]) == (
        m.PACKAGE, m.NODE_EXECUTABLE, m.NODE_NAME, "msseg")
    params_file, overrides = kw["parameters"]
    assert Path(params_file) == REPO / m.PARAMS_FILE and Path(params_file).is_file()
    assert overrides == {"device": "cuda:0"}  # empty arguments leave the YAML's values alone
    assert kw["remappings"] == [("image", "/front/image"), ("image/compressed", "/front/image/compressed"),
                                ("camera_info", "/camera/camera_info")]
    assert kw["ros_arguments"] == ["--log-level", "debug"]
    assert kw["respawn"] is True and kw["sigterm_timeout"] == "20" and float(kw["sigterm_timeout"]) > 5
    if user_profile:
        assert kw["additional_env"] == {}
    else:
        env = kw["additional_env"]
        assert set(env) == set(PROFILE_ENV_VARS) and all(Path(p).is_file() for p in env.values()), env


def test_multi_camera_launch_description_with_stand_ins(multi_launch: ModuleType,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _, node = _generated(multi_launch, monkeypatch, cameras="[front,rear]", use_sim_time="true", autostart="false")
    kw = node.kwargs
    params_file, overrides = kw["parameters"]
    assert Path(params_file) == REPO / multi_launch.PARAMS_FILE
    assert overrides == {"use_sim_time": True, "autostart": False, "cameras": ["front", "rear"]}
    assert ("rear/image", "/rear/image_raw") in kw["remappings"]
    assert ("front/camera_info", "/front/camera_info") in kw["remappings"]
    assert float(kw["sigterm_timeout"]) == 15.0
