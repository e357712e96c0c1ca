"""The camera model against OpenCV (the reference ROS's image_geometry uses): every distortion model,
rectified images with their own P, ROI and binning, and the calibrations it refuses."""

from __future__ import annotations

import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from msseg_core.ground.camera import CameraError, CameraPose, PinholeCamera

POSE = CameraPose(x=0.4, y=-0.2, height=1.4, roll=0.03, pitch=0.12, yaw=-0.05)
K = np.array([[610.0, 0.0, 652.5], [0.0, 605.0, 481.0], [0.0, 0.0, 1.0]])
WIDTH, HEIGHT = 1280, 960
DISTORTIONS = {
    "plumb_bob": [-0.28, 0.09, 0.0012, -0.0008, -0.012],
    "rational_polynomial": [0.35, -0.05, 0.0006, 0.0009, 0.002, 0.7, -0.02, 0.01],
    "equidistant": [0.08, -0.03, 0.006, -0.001],
}


def camera_info(model: str = "plumb_bob", d=(), k=K, p=None, r=None, roi=(0, 0, 0, 0), binning=(0, 0),
                width: int = WIDTH, height: int = HEIGHT) -> SimpleNamespace:
    """The fields of a sensor_msgs/CameraInfo (the model reads any message with these names)."""
    k = np.asarray(k, dtype=np.float64)
    p = np.c_[k, np.zeros(3)] if p is None else np.asarray(p, dtype=np.float64)
    x, y, w, h = roi
    return SimpleNamespace(width=width, height=height, distortion_model=model, d=list(d), k=k.reshape(-1),
                           r=np.eye(3).reshape(-1) if r is None else np.asarray(r).reshape(-1), p=p.reshape(-1),
                           binning_x=binning[0], binning_y=binning[1],
                           roi=SimpleNamespace(x_offset=x, y_offset=y, width=w, height=h, do_rectify=False))


def base_to_optical(pose: CameraPose) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's rvec, tvec of the base frame in the optical frame: x_opt = R (x - t)."""
    r = pose.optical_rotation().T
    return cv2.Rodrigues(r)[0], -r @ pose.translation


def points_in_view(n: int = 400, max_angle_deg: float = 40.0, seed: int = 0) -> np.ndarray:
    """Base-frame points in front of POSE's camera, up to `max_angle_deg` off its optical axis."""
    rng = np.random.default_rng(seed)
    angle = np.radians(rng.uniform(0.0, max_angle_deg, n))
    azimuth = rng.uniform(0.0, 2 * np.pi, n)
    depth = rng.uniform(2.0, 40.0, n)
    radius = depth * np.tan(angle)
    p_opt = np.c_[radius * np.cos(azimuth), radius * np.sin(azimuth), depth]
    return p_opt @ POSE.optical_rotation().T + POSE.translation


@pytest.mark.parametrize("model", ["plumb_bob", "rational_polynomial"])
def test_plumb_bob_and_rational_polynomial_project_like_opencv(model: str) -> None:
    camera = PinholeCamera.from_camera_info(camera_info(model, DISTORTIONS[model]), pose=POSE)
    points = points_in_view()
    u, v, depth = camera.project(points)
    expected, _ = cv2.projectPoints(points, *base_to_optical(POSE), K, np.array(DISTORTIONS[model]))
    np.testing.assert_allclose(np.c_[u, v], expected.reshape(-1, 2), atol=1e-6)
    assert (depth > 0).all()


def test_equidistant_projects_like_opencv_fisheye() -> None:
    d = DISTORTIONS["equidistant"]
    camera = PinholeCamera.from_camera_info(camera_info("equidistant", d), pose=POSE)
    points = points_in_view(max_angle_deg=75.0)  # a fisheye sees far off its axis
    u, v, _ = camera.project(points)
    expected, _ = cv2.fisheye.projectPoints(points.reshape(-1, 1, 3), *base_to_optical(POSE), K, np.array(d))
    np.testing.assert_allclose(np.c_[u, v], expected.reshape(-1, 2), atol=1e-6)
    # The model itself, closed form: theta_d = theta (1 + k1 theta^2 + ... + k4 theta^8), r_d = theta_d.
    p_opt = (points - POSE.translation) @ POSE.optical_rotation()
    a, b = p_opt[:, 0] / p_opt[:, 2], p_opt[:, 1] / p_opt[:, 2]
    theta = np.arctan(np.hypot(a, b))
    theta_d = theta * (1 + sum(k * theta ** (2 * i + 2) for i, k in enumerate(d)))
    scale = theta_d / np.hypot(a, b)
    np.testing.assert_allclose(u, K[0, 0] * a * scale + K[0, 2], atol=1e-6)


def test_rectified_images_project_with_p_and_r_without_distortion() -> None:
    p = np.array([[540.0, 0.0, 640.0, 0.0], [0.0, 540.0, 470.0, 0.0], [0.0, 0.0, 1.0, 0.0]])  # P != K
    r = cv2.Rodrigues(np.array([0.01, -0.02, 0.005]))[0]  # a stereo rectification rotation
    info = camera_info("plumb_bob", DISTORTIONS["plumb_bob"], p=p, r=r)
    rectified = PinholeCamera.from_camera_info(info, rectified=True, pose=POSE)
    raw = PinholeCamera.from_camera_info(info, pose=POSE)
    points = points_in_view()
    u, v, _ = rectified.project(points)
    x_rect = ((points - POSE.translation) @ POSE.optical_rotation()) @ r.T
    uvw = np.c_[x_rect, np.ones(len(points))] @ p.T
    np.testing.assert_allclose(np.c_[u, v], uvw[:, :2] / uvw[:, 2:], atol=1e-9)
    u_raw, v_raw, _ = raw.project(points)
    assert np.abs(u_raw - u).max() > 20  # K and the distortion would put them elsewhere
    # An unknown distortion model does not matter to rectified images; P must be calibrated.
    assert PinholeCamera.from_camera_info(camera_info("kannala_brandt", [0.1] * 4, p=p), rectified=True)
    with pytest.raises(CameraError, match="P needs fx > 0"):
        PinholeCamera.from_camera_info(camera_info(p=np.zeros((3, 4))), rectified=True)
    # Rays are the inverse: every point lies on the ray through its pixel.
    assert_on_rays(rectified, points)


@pytest.mark.parametrize("model", ["plumb_bob", "equidistant"])
@pytest.mark.parametrize("rectified", [False, True])
def test_roi_and_binning_give_the_pixels_of_the_smaller_image(model: str, rectified: bool) -> None:
    """ROI offsets are in full-resolution pixels; binned pixel centres sit at (u + 0.5) / b - 0.5."""
    x0, y0, bx, by = 200, 100, 2, 4
    p = np.array([[560.0, 0.0, 660.0, 0.0], [0.0, 560.0, 490.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    full = PinholeCamera.from_camera_info(camera_info(model, DISTORTIONS[model], p=p), rectified, POSE)
    small = PinholeCamera.from_camera_info(camera_info(model, DISTORTIONS[model], p=p, roi=(x0, y0, 640, 480),
                                                       binning=(bx, by)), rectified, POSE)
    assert small.size == (480 // by, 640 // bx)
    points = points_in_view(max_angle_deg=30.0)
    u, v, _ = full.project(points)
    us, vs, _ = small.project(points)
    np.testing.assert_allclose(us, (u - x0 + 0.5) / bx - 0.5, atol=1e-9)
    np.testing.assert_allclose(vs, (v - y0 + 0.5) / by - 0.5, atol=1e-9)
    # Resizing (the node projects masks at the image's size) follows the same pixel-centre rule.
    half = full.scaled_to(HEIGHT // 2, WIDTH // 2)
    uh, vh, _ = half.project(points)
    np.testing.assert_allclose(np.c_[uh, vh], (np.c_[u, v] + 0.5) / 2 - 0.5, atol=1e-9)
    assert_on_rays(small, points)


def test_calibrations_the_model_refuses() -> None:
    with pytest.raises(CameraError, match="'kannala_brandt' is not supported"):
        PinholeCamera.from_camera_info(camera_info("kannala_brandt", [0.1, 0.01, 0.0, 0.0]))
    with pytest.raises(CameraError, match="fx > 0"):
        PinholeCamera.from_camera_info(camera_info(k=np.zeros((3, 3))))
    with pytest.raises(CameraError, match="no image size"):
        PinholeCamera.from_camera_info(camera_info(width=0, height=0))
    with pytest.raises(CameraError, match="4 coefficients"):
        PinholeCamera.from_camera_info(camera_info("equidistant", [0.1] * 5))
    # Nothing to distort: the model's name does not matter (drivers send '' with D all zero).
    for model in ("", "none", "kannala_brandt"):
        camera = PinholeCamera.from_camera_info(camera_info(model, [0.0] * 5))
        assert not camera.distorted


def test_distortion_is_not_extrapolated_beyond_where_it_folds_back() -> None:
    """Strong barrel distortion (k1 = -0.4) maps radius r to r (1 - 0.4 r^2), which turns back at
    r = 0.913: farther points would land inside the image again. They are not projected."""
    camera = PinholeCamera(WIDTH, HEIGHT, K.reshape(-1), D=[-0.4, 0.0, 0.0, 0.0, 0.0])
    z = 10.0
    u, v, _ = camera.project(np.array([[0.5 * z, 0.0, z], [0.9 * z, 0.0, z], [1.2 * z, 0.0, z]])
                             @ CameraPose(height=0.0).optical_rotation().T)
    assert np.isfinite(u[:2]).all() and np.isnan(u[2]) and np.isnan(v[2])


def test_ideal_camera_and_camera_info_round_trip() -> None:
    camera = PinholeCamera.from_hfov(480, 360, 60.0)
    f = 240 / math.tan(math.radians(30))
    np.testing.assert_allclose(camera.intrinsics, [[f, 0, 239.5], [0, f, 179.5], [0, 0, 1]])
    fields = camera.camera_info_fields()
    assert fields["distortion_model"] == "plumb_bob" and fields["d"] == [0.0] * 5
    assert fields["p"] == [f, 0.0, 239.5, 0.0, 0.0, f, 179.5, 0.0, 0.0, 0.0, 1.0, 0.0]
    again = PinholeCamera.from_camera_info(SimpleNamespace(
        **fields, binning_x=0, binning_y=0, roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0)))
    assert again == camera
    with pytest.raises(CameraError):
        PinholeCamera.from_hfov(0, 10, 60.0)


def assert_on_rays(camera: PinholeCamera, points: np.ndarray) -> None:
    u, v, _ = camera.project(points)
    rays = camera.rays(u, v)
    to_points = points - camera.pose.translation
    cos = (rays * to_points).sum(1) / np.linalg.norm(rays, axis=1) / np.linalg.norm(to_points, axis=1)
    np.testing.assert_allclose(cos, 1.0, atol=1e-9)


@pytest.mark.parametrize("model", sorted(DISTORTIONS))
def test_rays_through_pixels_meet_the_points_that_project_there(model: str) -> None:
    assert_on_rays(PinholeCamera.from_camera_info(camera_info(model, DISTORTIONS[model]), pose=POSE), points_in_view())
