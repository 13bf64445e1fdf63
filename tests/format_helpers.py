"""Shared pieces of the capture-format tests (test_prepare_nerfstudio.py, test_prepare_realityscan.py,
test_prepare_meshroom.py, test_prepare_openmvs.py):
cameras posed with the formats' own axis conventions, written independently of backend.cameras, known 3-D points, and
the check that the prepared scene's cameras put those points on the pixels the source's own
projection gives."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from backend.cameras import Camera, read_mvsnet_cam
from backend.meshio import write_ply
from helpers import grid_plane

# Points and cameras: a cloud around the origin, cameras a few units away looking at it.
EYES = [(0.4, -2.6, 1.8), (-2.2, 1.1, 1.3), (1.9, 1.7, -1.2)]


def gl_camera_to_world(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world of a camera at `eye` looking at `target`, with OpenGL/Blender camera axes
    (x right, y up, z back: the camera looks down its -z)."""
    eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
    z = eye - target
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    M = np.eye(4)
    M[:3, 0], M[:3, 1], M[:3, 2], M[:3, 3] = x, np.cross(z, x), z, eye
    return M


def cloud(n: int = 60, seed: int = 0, half: float = 0.6) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-half, half, (n, 3))


def noise_photo(path: Path, w: int, h: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def plane_mesh(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_ply(path, grid_plane(4, 1.0))
    return path


def prepared_camera(scene: Path, name: str, level: int = 1) -> Camera:
    E, K, _ = read_mvsnet_cam(scene / f"cams_{level}" / f"{name}_cam.txt")
    img = next((scene / f"images_{level}").glob(f"{name}.*"))
    with Image.open(img) as im:
        return Camera(im.width, im.height, K, E)


def projection_error(scene: Path, name: str, X: np.ndarray, uv: np.ndarray) -> float:
    """Largest distance (px) between where the prepared camera `name` projects X and `uv`, the
    source's own projection; every point must lie in front of the camera."""
    q, z = prepared_camera(scene, name).project(X)
    assert (z > 0).all()
    return float(np.hypot(*(q - uv).T).max())
