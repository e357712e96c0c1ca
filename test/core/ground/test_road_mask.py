"""Road-mask clean-up, ego component, probability threshold, and the OccupancyGrid builder (ROS glue)."""

from __future__ import annotations

import numpy as np
import pytest

from msseg_core.ground.projection import FREE, OCCUPIED, UNKNOWN
from msseg_core.ground.road_mask import (
    clean_road_mask,
    ego_region,
    refine_road_mask,
    road_mask_from_confidence,
    road_mask_from_probs,
)


def road_with_defects() -> np.ndarray:
    m = np.zeros((60, 90), np.uint8)
    m[30:, 20:70] = 255          # the road ahead, touching the bottom
    m[40:42, 40:42] = 0          # a 2x2 hole (lane paint, shadow)
    m[10, 5] = 255               # a one-pixel speck
    m[5:7, 80:82] = 255          # a 2x2 speck
    return m


def test_clean_fills_holes_and_drops_specks() -> None:
    m = road_with_defects()
    out = clean_road_mask(m, 5)
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 255}
    assert (out[40:42, 40:42] == 255).all()
    assert out[10, 5] == 0 and (out[5:7, 80:82] == 0).all()
    # The body of the road and its contact with the image border survive.
    assert (out[35:, 25:65] == 255).all() and (out[-1, 20:70] == 255).all()
    # Off: only normalised to 0/255.
    assert np.array_equal(clean_road_mask(m > 0, 0), m)
    with pytest.raises(ValueError):
        clean_road_mask(m, -1)


def test_ego_region_keeps_the_component_at_the_bottom_centre() -> None:
    m = np.zeros((60, 90), np.uint8)
    m[30:, 30:60] = 255          # ego road, reaches the bottom middle third
    m[30:, 0:20] = 255           # road across a median: touches the bottom, but on the left third
    m[5:15, 40:50] = 255         # road far ahead, not connected
    out = ego_region(m)
    assert (out[30:, 30:60] == 255).all()
    assert out[:, :20].sum() == 0 and out[5:15].sum() == 0
    # Connected through a diagonal (8-neighbourhood) counts as one region.
    m2 = m.copy()
    m2[29, 29] = 255
    m2[28, 28] = 255
    assert ego_region(m2)[28, 28] == 255


def test_ego_region_tolerates_a_bonnet_and_is_empty_without_road() -> None:
    m = np.zeros((100, 90), np.uint8)
    m[50:95, 30:60] = 255        # road ends 5 rows above the bottom (bonnet)
    assert (ego_region(m, band=0.1) == m).all()
    assert ego_region(m, band=0.01).sum() == 0
    assert ego_region(np.zeros((10, 10), np.uint8)).sum() == 0
    side = np.zeros((60, 90), np.uint8)
    side[40:, :25] = 255         # road only at the bottom-left
    assert ego_region(side).sum() == 0


def test_road_mask_from_probs_union_and_threshold() -> None:
    # 4 classes, 1 x 4 image; classes 1 and 2 are road.
    probs = np.array([
        [0.1, 0.50, 0.40, 0.05],
        [0.8, 0.30, 0.35, 0.45],
        [0.1, 0.10, 0.20, 0.45],
        [0.0, 0.10, 0.05, 0.05],
    ], np.float32)[:, None, :]
    out = road_mask_from_probs(probs, [1, 2])
    assert out.shape == (1, 4) and out.tolist() == [[255, 0, 0, 255]]
    # Summed road probability: 0.9, 0.4, 0.55, 0.9.
    assert road_mask_from_probs(probs, [1, 2], 0.85).tolist() == [[255, 0, 0, 255]]
    assert road_mask_from_probs(probs, [1], 0.85).tolist() == [[0, 0, 0, 0]]
    logits = np.log(probs + 1e-9) + 3.0  # any shift: softmax is invariant
    assert road_mask_from_probs(logits, [1, 2], 0.85, logits=True).tolist() == [[255, 0, 0, 255]]
    assert road_mask_from_probs(probs, []).sum() == 0
    with pytest.raises(ValueError):
        road_mask_from_probs(probs, [7])
    with pytest.raises(ValueError):
        road_mask_from_probs(probs, [1], 1.5)


def test_confidence_threshold_and_refine_chain() -> None:
    road = np.array([[255, 255, 0, 255]], np.uint8)
    conf = np.array([[255, 128, 255, 153]], np.uint8)
    assert road_mask_from_confidence(road, conf, 0.6).tolist() == [[255, 0, 0, 255]]
    assert road_mask_from_confidence(road, conf, 0.0).tolist() == road.tolist()
    m = road_with_defects()
    assert np.array_equal(refine_road_mask(m), m)
    full = refine_road_mask(m, kernel_size=5, ego_only=True)
    assert full[10, 5] == 0 and full[40, 40] == 255
    with pytest.raises(ValueError, match="confidence"):
        refine_road_mask(m, min_confidence=0.5)


# -- the ROS glue ------------------------------------------------------------------------------

def camera_info(width: int = 320, height: int = 240, f: float = 250.0):
    from sensor_msgs.msg import CameraInfo

    from msseg_core.ground.camera import PinholeCamera

    return CameraInfo(**PinholeCamera.from_hfov(width, height, 60.0).camera_info_fields()
                      | {"k": [f, 0.0, (width - 1) / 2, 0.0, f, (height - 1) / 2, 0.0, 0.0, 1.0], "p": [0.0] * 12})


def build(builder, mask, header, **kwargs):
    """The node's two steps: the grid of a frame, then its OccupancyGrid with the image's stamp."""
    from msseg_ros.transport.messages import occupancy_grid

    grid = builder.compute(mask, **kwargs)
    return None if grid is None else occupancy_grid(grid, header.stamp)


@pytest.mark.ros
def test_road_grid_builder_message_and_rebuilds() -> None:
    from std_msgs.msg import Header

    from msseg_ros.node.road_grid import ROAD_GRID_DEFAULTS, RoadGridBuilder

    builder = RoadGridBuilder(camera_pitch=0.1, camera_height=1.5, grid_resolution=0.5, grid_length=20,
                              grid_width=10, grid_max_range=25, road_cleanup_kernel=0)
    mask = np.zeros((240, 320), np.uint8)
    mask[150:, 100:220] = 255
    header = Header(frame_id="camera_optical")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    assert build(builder, mask, header) is None  # no CameraInfo yet
    assert builder.update_camera_info(camera_info())
    msg = build(builder, mask, header)
    assert msg is not None
    assert msg.header.frame_id == "base_footprint"  # REP-105: the base frame on the ground
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 345)
    assert msg.info.resolution == pytest.approx(0.5) and (msg.info.width, msg.info.height) == (40, 20)
    assert (msg.info.origin.position.x, msg.info.origin.position.y) == (0.0, -5.0)
    assert msg.info.origin.orientation.w == 1.0
    data = np.asarray(msg.data, np.int8).reshape(20, 40)
    assert set(np.unique(data)) == {FREE, OCCUPIED, UNKNOWN}
    assert data[10, 10] == FREE and data[10, 30] == OCCUPIED  # 5 m ahead: road; 15 m: above the mask
    # The lookup is built once, not per frame, nor for an identical CameraInfo.
    for _ in range(5):
        build(builder, mask, header)
    assert not builder.update_camera_info(camera_info())
    build(builder, mask, header)
    assert builder.lookup_builds == 1
    # ... and rebuilt for a new camera, a new mask size, or a geometry parameter.
    assert builder.update_camera_info(camera_info(f=300.0))
    build(builder, mask, header)
    assert builder.lookup_builds == 2
    build(builder, np.zeros((120, 160), np.uint8), header)
    assert builder.lookup_builds == 3
    assert not builder.set_params(grid_frame="odom", road_ego_only=True)
    assert builder.set_params(camera_pitch=0)  # an int from YAML is fine
    assert build(builder, mask, header).header.frame_id == "odom"
    assert builder.lookup_builds == 4
    # Validation without applying, for the node's set-parameters callback.
    assert builder.check_params(grid_resolution=0.0) is not None
    assert builder.check_params(road_min_confidence=2.0) is not None
    assert builder.check_params(nonsense=1) is not None
    assert builder.check_params(camera_pitch="down") is not None
    assert builder.check_params(**ROAD_GRID_DEFAULTS) is None
    assert builder.params.camera_pitch == 0.0  # checking changes nothing
    with pytest.raises(ValueError):
        builder.set_params(road_cleanup_kernel=-3)
    # An uncalibrated camera disables the grid with a reason.
    bad = camera_info()
    bad.k = [0.0] * 9
    assert builder.update_camera_info(bad)
    assert build(builder, mask, header) is None and "fx > 0" in builder.camera_error


@pytest.mark.ros
def test_road_grid_builder_camera_models_and_rectified_images() -> None:
    """The builder projects with msseg_core.ground.camera as the camera_rectified parameter says: K and the
    distortion of a raw image, or P of a rectified one; an unknown distortion model gives no grid and
    says why, until the images are declared rectified (then D is not used)."""
    from std_msgs.msg import Header

    from msseg_core.ground.camera import PinholeCamera
    from msseg_core.ground.projection import GroundGridLookup
    from msseg_ros.node.road_grid import RoadGridBuilder

    params = {"camera_pitch": 0.15, "camera_height": 1.5, "grid_resolution": 0.5, "grid_length": 20,
              "grid_width": 10, "grid_max_range": 25, "road_cleanup_kernel": 0}
    builder = RoadGridBuilder(**params)
    mask = np.zeros((240, 320), np.uint8)
    mask[120:, 60:260] = 255
    info = camera_info()
    info.distortion_model, info.d = "equidistant", [0.05, -0.01, 0.002, 0.0]
    info.p = [200.0, 0.0, 170.0, 0.0, 0.0, 200.0, 110.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # P != K

    def expected(rectified: bool) -> np.ndarray:
        camera = PinholeCamera.from_camera_info(info, rectified=rectified).with_pose(builder.params.pose)
        return GroundGridLookup(camera, resolution=0.5, length=20, width=10, max_range=25).apply(mask)

    assert builder.update_camera_info(info)
    raw = builder.grid(mask)
    np.testing.assert_array_equal(raw, expected(rectified=False))
    assert builder.set_params(camera_rectified=True)  # the same CameraInfo, read as rectified
    rectified = builder.grid(mask)
    np.testing.assert_array_equal(rectified, expected(rectified=True))
    assert (raw != rectified).any()

    info.distortion_model = "kannala_brandt"
    builder.update_camera_info(info)
    np.testing.assert_array_equal(builder.grid(mask), rectified)  # rectified: D and its model are not used
    assert builder.set_params(camera_rectified=False)
    assert builder.grid(mask) is None and build(builder, mask, Header()) is None
    assert "'kannala_brandt' is not supported" in builder.camera_error


@pytest.mark.ros
def test_declare_road_grid_parameters_on_a_node() -> None:
    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from msseg_ros.node.parameters import declare_road_grid_parameters
    from msseg_ros.node.road_grid import ROAD_GRID_DEFAULTS, RoadGridBuilder

    ctx = Context()
    rclpy.init(args=[], context=ctx)
    try:
        # `camera_pitch: 0` in a YAML arrives as an integer: accepted for a float parameter.
        node = rclpy.create_node("msseg_test_road_params", context=ctx, parameter_overrides=[
            Parameter("camera_pitch", value=0), Parameter("grid_frame", value="base_footprint")])
        values = declare_road_grid_parameters(node)
        assert set(values) == set(ROAD_GRID_DEFAULTS)
        assert values["grid_frame"] == "base_footprint" and values["grid_resolution"] == 0.2
        assert values["camera_rectified"] is False
        descriptor = node.describe_parameter("camera_rectified")
        assert "rectified" in descriptor.description and descriptor.type == Parameter.Type.BOOL.value
        builder = RoadGridBuilder(**values)
        assert builder.params.camera_pitch == 0.0 and isinstance(builder.params.camera_pitch, float)
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)
