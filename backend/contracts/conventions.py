"""Coordinate, unit, camera and frame conventions shared by the backend and the Blender add-on.

Contract: docs/conventions.md. numpy only.

- Model space is NPHM space: +x towards the subject's left (image right in a frontal view), +y up,
  +z forward (out of the face); 1 NPHM unit = 0.25 m. The result package stores geometry in **metres in model
  axes**, before the rigid pose.
- Camera space is OpenCV: +x right, +y down, +z forward (viewing direction). Pixel centres sit at i + 0.5
  (the top-left corner of the image is (0, 0)).
- Pose: a model→camera similarity per frame, ``x_cam = scale · R · x_model + t`` (metres).
- Blender: Z up. The camera sits at the origin looking along +Y; the head mesh data are in Blender axes
  (face towards −Y, the usual front view) and the head object carries the pose.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

NPHM_UNIT_M = 0.25
"""Metres per NPHM unit (NPHM space = FLAME metres × 4)."""

MODEL_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
"""Model axes (y up, z forward) → Blender axes (z up, face looking down −y): (x, y, z) → (x, −z, y)."""

OPENCV_TO_BLENDER_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
"""OpenCV camera axes → Blender world for the camera at the origin looking along +Y: (x, y, z) → (x, z, −y)."""

BLENDER_CAMERA_ROTATION = OPENCV_TO_BLENDER_WORLD @ np.diag([1.0, -1.0, -1.0])
"""World rotation of the Blender camera object (its local −Z looks along +Y, local +Y points up, +Z world)."""

DEFAULT_HORIZONTAL_FOV_DEG = 50.0
"""Field of view assumed when the user gives no intrinsics (a typical phone/webcam lens)."""

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif", ".mpg", ".mpeg", ".wmv",
                              ".flv"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".exr"})
"""Files a clip may be (lower-case suffixes): the backend tracks them, the add-on loads them as the background."""


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded colours in [0, 1] → linear RGB (IEC 61966-2-1)."""
    c = np.asarray(c)
    return np.where(c <= 0.04045, c / 12.92, ((np.maximum(c, 0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear RGB in [0, 1] → sRGB-encoded colours (IEC 61966-2-1)."""
    c = np.asarray(c)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.maximum(c, 0.0031308) ** (1 / 2.4) - 0.055)


def nphm_to_metres(points: np.ndarray) -> np.ndarray:
    """(…, 3) NPHM units → metres, model axes."""
    return np.asarray(points) * NPHM_UNIT_M


def metres_to_nphm(points: np.ndarray) -> np.ndarray:
    """(…, 3) metres, model axes → NPHM units."""
    return np.asarray(points) / NPHM_UNIT_M


def model_to_blender_points(points: np.ndarray) -> np.ndarray:
    """(…, 3) model-axis points → Blender axes (same units)."""
    return np.asarray(points) @ MODEL_TO_BLENDER.T


def blender_to_model_points(points: np.ndarray) -> np.ndarray:
    """(…, 3) Blender-axis points → model axes (same units; the inverse of ``model_to_blender_points``)."""
    return np.asarray(points) @ MODEL_TO_BLENDER


def similarity_matrices(scale: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Model→camera 4×4 matrices (T, 4, 4) from scale (T,), rotation (T, 3, 3), translation (T, 3)."""
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    rotation = np.asarray(rotation, dtype=np.float64).reshape(-1, 3, 3)
    translation = np.asarray(translation, dtype=np.float64).reshape(-1, 3)
    out = np.zeros((len(scale), 4, 4))
    out[:, :3, :3] = scale[:, None, None] * rotation
    out[:, :3, 3] = translation
    out[:, 3, 3] = 1.0
    return out


def head_world_matrices(scale: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Blender world matrices (T, 4, 4) of the head object whose mesh data are in Blender axes.

    world = OPENCV_TO_BLENDER_WORLD · [sR | t] · MODEL_TO_BLENDER⁻¹, so a mesh vertex v_b (Blender axes)
    lands where the camera sees the model point MODEL_TO_BLENDER⁻¹ v_b.
    """
    left = np.eye(4)
    left[:3, :3] = OPENCV_TO_BLENDER_WORLD
    right = np.eye(4)
    right[:3, :3] = MODEL_TO_BLENDER.T  # orthonormal: inverse = transpose
    return left @ similarity_matrices(scale, rotation, translation) @ right


def camera_world_matrix() -> np.ndarray:
    """4×4 world matrix of the Blender camera object (at the origin)."""
    out = np.eye(4)
    out[:3, :3] = BLENDER_CAMERA_ROTATION
    return out


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels for an image of ``width`` × ``height`` (OpenCV, pixel centres at i + 0.5)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        if not (self.width > 0 and self.height > 0):
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")

    @classmethod
    def from_fov(cls, width: int, height: int, horizontal_fov_deg: float = DEFAULT_HORIZONTAL_FOV_DEG) -> "Intrinsics":
        """Square pixels, centred principal point, the given horizontal field of view."""
        f = 0.5 * width / np.tan(np.radians(horizontal_fov_deg) / 2.0)
        return cls(float(f), float(f), width / 2.0, height / 2.0, int(width), int(height))

    def resized(self, width: int, height: int) -> "Intrinsics":
        """The same camera for the image resampled to ``width`` × ``height``."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, int(width), int(height))

    def matrix(self) -> np.ndarray:
        """3×3 K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Intrinsics":
        return cls(float(data["fx"]), float(data["fy"]), float(data["cx"]), float(data["cy"]),
                   int(data["width"]), int(data["height"]))


def project_points(points_cam: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """(…, 3) OpenCV camera points → (…, 2) pixel coordinates."""
    p = np.asarray(points_cam, dtype=np.float64)
    z = p[..., 2]
    return np.stack([intrinsics.fx * p[..., 0] / z + intrinsics.cx,
                     intrinsics.fy * p[..., 1] / z + intrinsics.cy], axis=-1)


@dataclass(frozen=True)
class BlenderCamera:
    """Blender camera data settings equivalent to some intrinsics (sensor_fit 'AUTO')."""

    lens_mm: float
    sensor_width_mm: float
    shift_x: float
    shift_y: float
    pixel_aspect_x: float
    pixel_aspect_y: float


def blender_camera_from_intrinsics(intr: Intrinsics, sensor_width_mm: float = 36.0) -> BlenderCamera:
    """Lens, shift and pixel aspect reproducing ``intr`` in Blender (sensor fitted to the larger side).

    Blender shifts are in units of the larger image side; a positive shift moves the view window right/up, so
    the principal point lands left/below the centre.
    """
    largest = max(intr.width, intr.height)
    # Blender applies the focal length to x; non-square pixels go into the render pixel aspect.
    lens = intr.fx * sensor_width_mm / largest
    aspect = intr.fx / intr.fy
    return BlenderCamera(
        lens_mm=float(lens),
        sensor_width_mm=float(sensor_width_mm),
        shift_x=float((intr.width / 2.0 - intr.cx) / largest),
        shift_y=float((intr.cy - intr.height / 2.0) / largest),
        pixel_aspect_x=float(max(1.0, 1.0 / aspect)),
        pixel_aspect_y=float(max(1.0, aspect)),
    )


def intrinsics_from_blender(lens_mm: float, sensor_width_mm: float, width: int, height: int,
                            principal_point_px: tuple[float, float] | None = None,
                            pixel_aspect: float = 1.0) -> Intrinsics:
    """Intrinsics of a Blender Movie Clip camera (focal length, sensor width, principal point in pixels).

    ``principal_point_px`` uses Blender's clip convention (origin bottom-left, +y up); None means centred.
    ``pixel_aspect`` is the clip's pixel aspect ratio (width/height of one pixel).
    """
    if lens_mm <= 0 or sensor_width_mm <= 0:
        raise ValueError("focal length and sensor width must be positive")
    # Movie clips fit the sensor width to the image width (Blender motion tracking convention).
    fx = lens_mm / sensor_width_mm * width
    fy = fx * pixel_aspect
    if principal_point_px is None:
        cx, cy = width / 2.0, height / 2.0
    else:
        cx, cy = float(principal_point_px[0]), float(height - principal_point_px[1])
    return Intrinsics(fx, fy, cx, cy, int(width), int(height))


# --- frames ---------------------------------------------------------------------------------------------------

def parse_frame_slice(text: str | None) -> slice:
    """``"A:B:STEP"`` (a Python slice over 0-based source frame indices, any part optional) → slice.

    Raises ValueError with a readable message for malformed text or a non-positive step.
    """
    if text is None or text.strip() in ("", ":", "::"):
        return slice(None)
    parts = text.strip().split(":")
    if len(parts) > 3:
        raise ValueError(f"--frames {text!r}: expected START:STOP:STEP (e.g. 0:125:1)")
    try:
        values = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise ValueError(f"--frames {text!r}: START, STOP and STEP must be whole numbers") from None
    if len(values) == 1:  # a single index selects one frame
        index = values[0]
        return slice(index, None if index == -1 else index + 1)
    while len(values) < 3:
        values.append(None)
    if values[2] is not None and values[2] <= 0:
        raise ValueError(f"--frames {text!r}: STEP must be positive")
    return slice(*values)


def scene_frame(clip_start: int, source_index: int) -> int:
    """Blender scene frame showing source frame ``source_index`` of a clip that starts at ``clip_start``."""
    return int(clip_start) + int(source_index)
