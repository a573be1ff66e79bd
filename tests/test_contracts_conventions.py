"""backend/contracts/conventions.py: axes, pose → Blender, camera ↔ intrinsics, frame mapping."""

import numpy as np
import pytest

from backend.contracts import conventions as cv


def _rot(yaw, pitch, roll):
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def _blender_pixels(world_points, cam_world, bc: cv.BlenderCamera, width, height):
    """Project with Blender's camera model (sensor fit AUTO → the larger image side)."""
    largest = max(width, height)
    local = (np.linalg.inv(cam_world) @ np.c_[world_points, np.ones(len(world_points))].T).T[:, :3]
    f = bc.lens_mm / bc.sensor_width_mm * largest
    depth = -local[:, 2]
    assert bc.pixel_aspect_x == bc.pixel_aspect_y == 1.0  # square pixels in these tests
    u = width / 2 - bc.shift_x * largest + f * local[:, 0] / depth  # positive shift moves the view right
    v = height / 2 + bc.shift_y * largest - f * local[:, 1] / depth  # image y points down
    return np.stack([u, v], 1)


def test_model_to_blender_axes():
    assert np.allclose(cv.model_to_blender_points([0, 1, 0]), [0, 0, 1])  # model up → Blender +Z
    assert np.allclose(cv.model_to_blender_points([0, 0, 1]), [0, -1, 0])  # face forward → −Y
    assert np.allclose(cv.MODEL_TO_BLENDER @ cv.MODEL_TO_BLENDER.T, np.eye(3))
    assert np.isclose(np.linalg.det(cv.MODEL_TO_BLENDER), 1)
    pts = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(cv.blender_to_model_points(cv.model_to_blender_points(pts)), pts, atol=1e-12)
    np.testing.assert_allclose(cv.linear_to_srgb(cv.srgb_to_linear(np.linspace(0, 1, 11))), np.linspace(0, 1, 11),
                               atol=1e-12)


def test_units():
    assert np.allclose(cv.nphm_to_metres([4.0, 0, 0]), [1.0, 0, 0])
    assert np.allclose(cv.metres_to_nphm(cv.nphm_to_metres([1.0, 2.0, 3.0])), [1.0, 2.0, 3.0])


@pytest.mark.parametrize("size", [(640, 480), (480, 640)])
def test_head_and_camera_project_like_opencv(size):
    width, height = size
    intr = cv.Intrinsics(500.0, 500.0, width / 2 + 12.0, height / 2 - 7.0, width, height)
    rng = np.random.default_rng(0)
    pts_model = rng.normal(scale=0.08, size=(50, 3))
    s, rot, t = np.array([1.1]), _rot(0.3, -0.2, 0.1)[None], np.array([[0.02, -0.01, 0.7]])
    cam_pts = (s[0] * rot[0] @ pts_model.T).T + t[0]
    expected = cv.project_points(cam_pts, intr)
    world = cv.head_world_matrices(s, rot, t)[0]
    mesh_data = cv.model_to_blender_points(pts_model)  # head mesh data are in Blender axes
    world_pts = (world @ np.c_[mesh_data, np.ones(len(mesh_data))].T).T[:, :3]
    bc = cv.blender_camera_from_intrinsics(intr)
    got = _blender_pixels(world_pts, cv.camera_world_matrix(), bc, width, height)
    assert np.allclose(got, expected, atol=1e-6)


def test_camera_world_matrix_looks_along_plus_y():
    m = cv.camera_world_matrix()
    assert np.allclose(m[:3, :3] @ [0, 0, -1], [0, 1, 0])  # camera −Z → world +Y
    assert np.allclose(m[:3, :3] @ [0, 1, 0], [0, 0, 1])  # camera up → world +Z
    assert np.allclose(m[:3, 3], 0)


def test_intrinsics_blender_round_trip():
    intr = cv.intrinsics_from_blender(35.0, 36.0, 1920, 1080, principal_point_px=(950.0, 550.0))
    assert np.isclose(intr.fx, 35.0 / 36.0 * 1920) and intr.cy == 1080 - 550.0
    bc = cv.blender_camera_from_intrinsics(intr)
    assert np.isclose(bc.lens_mm, 35.0) and np.isclose(bc.sensor_width_mm, 36.0)
    assert np.isclose(bc.shift_x, (960 - 950) / 1920) and np.isclose(bc.shift_y, (530 - 540) / 1920)
    centred = cv.intrinsics_from_blender(50.0, 36.0, 100, 50)
    assert (centred.cx, centred.cy) == (50.0, 25.0)
    with pytest.raises(ValueError):
        cv.intrinsics_from_blender(0.0, 36.0, 100, 50)


def test_intrinsics_validation_and_resize():
    with pytest.raises(ValueError):
        cv.Intrinsics(0, 1, 0, 0, 10, 10)
    with pytest.raises(ValueError):
        cv.Intrinsics(1, 1, 0, 0, 0, 10)
    intr = cv.Intrinsics.from_fov(640, 480, 90.0)
    assert np.isclose(intr.fx, 320.0)
    half = intr.resized(320, 240)
    assert np.isclose(half.fx, 160.0) and half.cx == 160.0
    assert cv.Intrinsics.from_dict(intr.to_dict()) == intr


def test_frame_mapping_and_slices():
    assert cv.scene_frame(1, 0) == 1 and cv.scene_frame(101, 24) == 125
    assert cv.parse_frame_slice(None) == slice(None)
    assert cv.parse_frame_slice("0:125:2") == slice(0, 125, 2)
    assert cv.parse_frame_slice("10:") == slice(10, None, None)
    assert cv.parse_frame_slice("7") == slice(7, 8)
    for bad in ("a:b", "1:2:0", "1:2:3:4"):
        with pytest.raises(ValueError):
            cv.parse_frame_slice(bad)
