"""Camera pose error: the written cameras of a capture are the true ones moved so that their
reprojection error has a requested size in pixels."""
from __future__ import annotations

import math

import numpy as np

from ..cameras import Camera


def _rotation(w: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation matrix of the rotation vector w (radians)."""
    a = float(np.linalg.norm(w))
    if a < 1e-300:
        return np.eye(3)
    k = w / a
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(a) * Kx + (1 - math.cos(a)) * Kx @ Kx


def moved_camera(cam: Camera, rot: np.ndarray, shift: np.ndarray) -> Camera:
    """cam rotated by the rotation vector `rot` (world frame, about its centre) and its centre
    moved by `shift`."""
    R = cam.R @ _rotation(rot).T
    c = cam.center + shift
    E = np.eye(4)
    E[:3, :3], E[:3, 3] = R, -R @ c
    return Camera(cam.width, cam.height, cam.K.copy(), E, cam.name, cam.depth_range)


def reprojection_errors(true_cam: Camera, cam: Camera, points: np.ndarray) -> np.ndarray:
    """Pixel distance (N,) between the projections of world points through the two cameras."""
    a, _ = true_cam.project(points)
    b, _ = cam.project(points)
    return np.linalg.norm(a - b, axis=1)


def perturb_pose(cam: Camera, points: np.ndarray, depth: float, target_px: float,
                 rng: np.random.Generator) -> Camera:
    """cam with a random pose error scaled so that the RMS reprojection error of `points` is
    target_px (the error is linear in the perturbation's size at this scale; one correction)."""
    v = rng.standard_normal(6)
    rot, shift = v[:3], v[3:] * depth                           # equal weight in pixels, roughly
    s = 1e-4
    for _ in range(3):
        rms = float(np.sqrt(np.mean(reprojection_errors(cam, moved_camera(cam, s * rot, s * shift), points) ** 2)))
        if rms <= 0:
            break
        s *= target_px / rms
    return moved_camera(cam, s * rot, s * shift)
