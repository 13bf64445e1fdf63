"""OpenCV pinhole camera <-> Blender camera settings (numpy only, no bpy).

This is the one place on the Blender side that knows the camera convention.
OpenCV / MVSNet (see backend/cameras.py): x right, y down, z forward; K = [[fx, 0, cx],
[0, fy, cy], [0, 0, 1]] in continuous pixels (the image spans [0, W] x [0, H]).
Blender: the camera looks down its local -Z with +Y up. Its view plane follows
BKE_camera_params_compute_viewplane: with the fitted axis spanning `viewfac` pixels,
    x / z = ((u - W/2) + shift_x * viewfac) * S / (lens * viewfac)
    y / z = (ycor * (H/2 - v) + shift_y * viewfac) * S / (lens * viewfac)     (y up)
where ycor = pixel_aspect_y / pixel_aspect_x, viewfac = W (horizontal fit) or ycor * H
(vertical fit), and S is sensor_height for VERTICAL fit, else sensor_width (AUTO too).
Matching those to u = fx * x / z + cx, v = fy * y_down / z + cy gives the formulas below.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Blender camera axes expressed in OpenCV camera axes (and back: it is its own inverse).
FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])

DEFAULT_SENSOR_WIDTH = 36.0   # mm; Blender's default, any positive value works


@dataclass
class BlenderCamera:
    """The Blender settings that fix a perspective camera's projection."""
    lens: float                       # mm
    shift_x: float
    shift_y: float
    resolution_x: int                 # rendered pixels (resolution already scaled by the percentage)
    resolution_y: int
    pixel_aspect_x: float = 1.0
    pixel_aspect_y: float = 1.0
    sensor_width: float = DEFAULT_SENSOR_WIDTH
    sensor_height: float = 24.0
    sensor_fit: str = "HORIZONTAL"    # 'AUTO' | 'HORIZONTAL' | 'VERTICAL'
    matrix_world: np.ndarray = field(default_factory=lambda: np.eye(4))


def matrix_world_from_world_to_camera(world_to_camera: np.ndarray) -> np.ndarray:
    """Blender object matrix of a camera whose OpenCV extrinsic is `world_to_camera`."""
    E = np.asarray(world_to_camera, dtype=np.float64).reshape(4, 4)
    return np.linalg.inv(E) @ FLIP_YZ


def world_to_camera_from_matrix_world(matrix_world: np.ndarray) -> np.ndarray:
    """OpenCV extrinsic of a Blender camera object.

    Blender drops object scale from camera matrices (the view uses the normalised matrix),
    so the axes are normalised here too; the inverse of a rigid transform is taken exactly.
    """
    M = np.asarray(matrix_world, dtype=np.float64).reshape(4, 4)
    R = M[:3, :3] / np.linalg.norm(M[:3, :3], axis=0)
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = R, M[:3, 3]
    c2w = c2w @ FLIP_YZ
    E = np.eye(4)
    E[:3, :3] = c2w[:3, :3].T
    E[:3, 3] = -c2w[:3, :3].T @ c2w[:3, 3]
    return E


def pixel_aspect_from_focals(fx: float, fy: float) -> tuple[float, float]:
    """Blender pixel aspect (x, y) for fx != fy; Blender wants both >= 1."""
    ycor = fx / fy
    return (1.0, ycor) if ycor >= 1.0 else (1.0 / ycor, 1.0)


def fitted_axis(sensor_fit: str, width: float, height: float,
                pixel_aspect_x: float = 1.0, pixel_aspect_y: float = 1.0) -> str:
    """'HORIZONTAL' or 'VERTICAL': which image axis the sensor spans (AUTO picks the longer)."""
    if sensor_fit == "AUTO":
        return "HORIZONTAL" if pixel_aspect_x * width >= pixel_aspect_y * height else "VERTICAL"
    if sensor_fit not in ("HORIZONTAL", "VERTICAL"):
        raise ValueError(f"unknown sensor fit {sensor_fit!r}")
    return sensor_fit


def opencv_to_blender(K: np.ndarray, world_to_camera: np.ndarray, width: int, height: int,
                      sensor_width: float = DEFAULT_SENSOR_WIDTH) -> BlenderCamera:
    """Blender settings (horizontal sensor fit) reproducing an OpenCV camera exactly."""
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if fx <= 0 or fy <= 0:
        raise ValueError("focal lengths must be positive")
    if abs(K[0, 1]) > 1e-9 * fx:
        raise ValueError("Blender cameras cannot represent a skewed K (K[0, 1] != 0)")
    W, H = float(width), float(height)
    ycor = fx / fy
    pax, pay = pixel_aspect_from_focals(fx, fy)
    return BlenderCamera(
        lens=fx * sensor_width / W,
        shift_x=(W / 2.0 - cx) / W,
        shift_y=(cy - H / 2.0) * ycor / W,
        resolution_x=int(width), resolution_y=int(height),
        pixel_aspect_x=pax, pixel_aspect_y=pay,
        sensor_width=sensor_width, sensor_height=sensor_width * H / W,
        sensor_fit="HORIZONTAL",
        matrix_world=matrix_world_from_world_to_camera(world_to_camera))


def intrinsics_from_blender(cam: BlenderCamera) -> np.ndarray:
    """K of a Blender camera for its rendered resolution (any sensor fit)."""
    W, H = float(cam.resolution_x), float(cam.resolution_y)
    ycor = cam.pixel_aspect_y / cam.pixel_aspect_x
    axis = fitted_axis(cam.sensor_fit, W, H, cam.pixel_aspect_x, cam.pixel_aspect_y)
    # Blender uses sensor_height only for an explicit VERTICAL fit; AUTO always uses the width.
    sensor = cam.sensor_height if cam.sensor_fit == "VERTICAL" else cam.sensor_width
    viewfac = W if axis == "HORIZONTAL" else ycor * H
    fx = cam.lens * viewfac / sensor
    fy = fx / ycor
    cx = W / 2.0 - cam.shift_x * viewfac
    cy = H / 2.0 + cam.shift_y * viewfac / ycor
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def blender_to_opencv(cam: BlenderCamera) -> tuple[np.ndarray, np.ndarray]:
    """(K, world_to_camera) of a Blender camera."""
    return intrinsics_from_blender(cam), world_to_camera_from_matrix_world(cam.matrix_world)


def render_size(resolution_x: int, resolution_y: int, percentage: int) -> tuple[int, int]:
    """Pixels Blender actually renders (it truncates the scaled size)."""
    return resolution_x * percentage // 100, resolution_y * percentage // 100


def view_to_opencv(view_matrix: np.ndarray, window_matrix: np.ndarray, width: int,
                   height: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, world_to_camera) of a 3D viewport region of `width` x `height` pixels, from its
    RegionView3D.view_matrix (world to view: Blender camera axes) and window_matrix (OpenGL
    projection). In camera view the window matrix already maps the camera's frame (lens, shift,
    sensor fit, zoom and offset of the frame in the region) onto the region.

    A perspective projection maps view-space (x, y, z) to NDC x = -(P00 x + P02 z) / z and
    y = -(P11 y + P12 z) / z; the region spans NDC [-1, 1] with image row 0 at NDC y = +1, so
    u = W/2 (1 + ndc_x) and v = H/2 (1 - ndc_y) give fx = P00 W/2, cx = W/2 (1 - P02),
    fy = P11 H/2, cy = H/2 (1 + P12) in OpenCV axes (y down, z forward)."""
    P = np.asarray(window_matrix, dtype=np.float64).reshape(4, 4)
    if abs(P[3, 3]) > 1e-9 or abs(P[3, 2] + 1.0) > 1e-6:
        raise ValueError("orthographic views cannot be rendered: switch the view to perspective "
                         "(Numpad 5) or use a perspective camera")
    W, H = float(width), float(height)
    K = np.array([[P[0, 0] * W / 2.0, 0.0, W / 2.0 * (1.0 - P[0, 2])],
                  [0.0, P[1, 1] * H / 2.0, H / 2.0 * (1.0 + P[1, 2])],
                  [0.0, 0.0, 1.0]])
    V = np.asarray(view_matrix, dtype=np.float64).reshape(4, 4)
    return K, world_to_camera_from_matrix_world(np.linalg.inv(V))
