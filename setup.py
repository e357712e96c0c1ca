"""ament_python build of msseg_ros: the ROS node package and the ROS-free msseg_core library."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "msseg_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["msseg_core", "msseg_core.*", "msseg_ros", "msseg_ros.*"]),
    package_data={"msseg_core": ["weights/*.safetensors", "weights/*.onnx", "weights/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/train", glob("config/train/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="msseg maintainers",
    maintainer_email="maintainers@msseg.dev",
    description="Semantic segmentation of driving scenes for ROS 2",
    license="MIT",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "segmentation_node = msseg_ros.node.segmentation_node:main",
            "synthetic_camera = msseg_ros.tools.camera:main",
            "evaluator_node = msseg_ros.tools.evaluator:main",
            "msseg-demo = msseg_ros.tools.demo:main",
            "msseg-bag = msseg_ros.bag.cli:main",
            "msseg-train = msseg_core.cli.train:main",
            "msseg-data = msseg_core.cli.data:main",
            "msseg-eval = msseg_core.cli.evaluate:main",
            "msseg-predict = msseg_core.cli.predict:main",
            "msseg-export = msseg_core.cli.export:main",
            "msseg-calibrate = msseg_core.cli.calibrate:main",
            "msseg-quantize = msseg_core.cli.quantize:main",
            "msseg-bench = msseg_ros.bench.cli:main",  # `node` there, the rest in msseg_core.cli.bench
        ],
    },
)
