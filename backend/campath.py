"""Camera path JSON (written by Blender, read by `backend render`).

{"version": 1, "fps": 24.0,
 "frames": [{"frame": 1, "width": 1920, "height": 1080,
             "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
             "world_to_camera": [[...4...], [...], [...], [0, 0, 0, 1]]}, ...]}
Cameras follow backend.cameras (OpenCV axes, pixel centres at +0.5).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .cameras import Camera
from .config import FORMATS
from .errors import InputError


def read_camera_path(path: str | Path) -> tuple[list[int], list[Camera], float]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"{path}: cannot read camera path ({e.strerror}).") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: camera path is not valid JSON ({e.msg} at line {e.lineno}).") from None
    frames = data.get("frames") if isinstance(data, dict) else None
    if not frames:
        raise InputError(f"{path}: camera path has no 'frames'; export it again from Blender.")
    numbers, cams = [], []
    for k, f in enumerate(frames):
        cam = _frame_camera(path, k, f)
        numbers.append(int(f.get("frame", k)))
        cams.append(cam)
    return numbers, cams, float(data.get("fps", 24.0))


RIGID_TOL = 1e-4      # rotation rows orthonormal and det +1 within this (float32 exports: ~1e-7)


def _frame_camera(path: Path, k: int, f) -> Camera:
    """The camera of frame entry `k`, after checking it (InputError naming the file and frame):
    positive integer size, finite K with positive focal lengths and no skew, finite rigid
    world_to_camera (rotation orthonormal with determinant +1, last row 0 0 0 1)."""
    label = f"frame {f['frame']}" if isinstance(f, dict) and "frame" in f else f"frame entry {k}"
    where = f"{path}: {label}"
    try:
        w, h = f["width"], f["height"]
        K = np.array(f["K"], float).reshape(3, 3)
        E = np.array(f["world_to_camera"], float).reshape(4, 4)
        number = int(f.get("frame", k))
    except (KeyError, ValueError, TypeError) as e:
        raise InputError(f"{where} is malformed ({e}); each frame needs width, height, "
                         "K (3x3) and world_to_camera (4x4).") from None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and float(x) == int(x) and x > 0
               for x in (w, h)):
        raise InputError(f"{where} has size {w}x{h}; width and height must be positive whole numbers of pixels.")
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"{where}: K must have finite entries and positive focal lengths fx, fy "
                         f"(got fx={K[0, 0]:g}, fy={K[1, 1]:g}).")
    if K[0, 1] != 0 or K[1, 0] != 0 or not np.allclose(K[2], [0, 0, 1]):
        raise InputError(f"{where}: K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (no skew).")
    if not np.isfinite(E).all():
        raise InputError(f"{where}: world_to_camera has NaN or infinite entries.")
    R = E[:3, :3]
    ortho = float(np.abs(R @ R.T - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if ortho > RIGID_TOL or abs(det - 1) > RIGID_TOL or np.abs(E[3] - [0, 0, 0, 1]).max() > RIGID_TOL:
        raise InputError(f"{where}: world_to_camera is not a rigid camera pose (rotation not orthonormal "
                         f"with determinant +1: off by {ortho:.2g}, determinant {det:.4g}); export the "
                         "camera without scale or shear.")
    return Camera(int(w), int(h), K, E, name=f"frame_{number:06d}")


def write_camera_path(path: str | Path, numbers: list[int], cams: list[Camera], fps: float = 24.0) -> None:
    data = {"version": 1, "fps": fps, "frames": [
        {"frame": n, "width": c.width, "height": c.height, "K": c.K.tolist(),
         "world_to_camera": c.world_to_camera.tolist()} for n, c in zip(numbers, cams)]}
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def frame_filename(number: int, fmt: str) -> str:
    """File name of frame `number` in output format `fmt` (a key of config.FORMATS)."""
    return f"frame_{number:06d}.{FORMATS[fmt].extension}"
