"""Topic (and frame) names of the package, defined once; no ROS import, so launch files can use it.

Node topics are relative: a node puts them under its namespace, and remaps point them elsewhere
(`-r image:=/front/image_raw`). The absolute names are the defaults of the camera side and the
tools: where `msseg-bag make` writes a camera, where the launch files and the demo put the node.
"""

from __future__ import annotations

# -- the segmentation node (relative) ---------------------------------------------------------
IMAGE = "image"  # sensor_msgs/Image in
COMPRESSED_IMAGE = "image/compressed"  # sensor_msgs/CompressedImage in (image_transport's name)
CAMERA_INFO = "camera_info"  # sensor_msgs/CameraInfo in
OUTPUTS = ("labels", "color_mask", "overlay", "confidence", "road_mask")
"""Image outputs, one topic each, named like the Segmenter outputs they carry."""
OUTPUT_ENCODINGS: dict[str, str] = {
    "labels": "mono8",  # class ids, see the class_names parameter
    "color_mask": "rgb8",  # palette colours, see class_colors
    "overlay": "rgb8",  # colours blended over the frame (overlay_alpha)
    "confidence": "mono8",  # max class probability x 255
    "road_mask": "mono8",  # 255 = road: road_classes, thresholded, cleaned, ego region (road_* parameters)
}
LABELS = "labels"
ROAD_GRID = "road_grid"  # nav_msgs/OccupancyGrid out: a camera's; with `cameras`, the node's own is the vehicle's
OBSTACLE_POINTS = "obstacle_points"  # sensor_msgs/PointCloud2: where obstacles stand on the ground (marking)
ROAD_POINTS = "road_points"  # PointCloud2: drivable ground in front of them (clearing)
SEMANTIC_POINTS = "semantic/points"  # organized PointCloud2, pixel-aligned with the two below
SEMANTIC_LABELS = "semantic/labels"  # mono8 class ids, sampled every points_step pixels
SEMANTIC_CONFIDENCE = "semantic/confidence"  # mono8, same pixels
POINT_OUTPUTS = (OBSTACLE_POINTS, ROAD_POINTS, SEMANTIC_POINTS)
SEMANTIC_IMAGES = (SEMANTIC_LABELS, SEMANTIC_CONFIDENCE)
LABEL_INFO = "label_info"  # vision_msgs/LabelInfo (where vision_msgs is installed), transient local
DIAGNOSTICS = "/diagnostics"  # diagnostic_msgs/DiagnosticArray, absolute by ROS convention
GROUND_TRUTH = "ground_truth/labels"  # mono8 ground truth: the camera node publishes it, the evaluator reads it

# -- defaults of the camera side and the tools (absolute): CAMERA_<the node's name> ------------------
NAMESPACE = "/msseg"
CAMERA_IMAGE = "/camera/image_raw"
CAMERA_COMPRESSED_IMAGE = f"{CAMERA_IMAGE}/compressed"
CAMERA_CAMERA_INFO = "/camera/camera_info"
GROUND_TRUTH_LABELS = f"/{GROUND_TRUTH}"
CAMERA_FRAME = "camera_optical_frame"  # REP-103 optical frame (z forward, x right, y down) of the camera


def in_namespace(namespace: str, name: str) -> str:
    """The absolute name of a relative topic in a namespace: ('/msseg', 'labels') -> '/msseg/labels'."""
    if name.startswith("/"):
        return name
    namespace = namespace.strip("/")
    return f"/{namespace}/{name}" if namespace else f"/{name}"
