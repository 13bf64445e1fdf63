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
        data = json.loads(path.read_text())
    except OSError as e:
        raise InputError(f"{path}: cannot read camera path ({e.strerror}).") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: camera path is not valid JSON ({e.msg} at line {e.lineno}).") from None
    frames = data.get("frames") if isinstance(data, dict) else None
    if not frames:
        raise InputError(f"{path}: camera path has no 'frames'; export it again from Blender.")
    numbers, cams = [], []
    for k, f in enumerate(frames):
        try:
            cam = Camera(f["width"], f["height"], np.array(f["K"], float), np.array(f["world_to_camera"], float),
                         name=f"frame_{int(f.get('frame', k)):06d}")
        except (KeyError, ValueError, TypeError) as e:
            raise InputError(f"{path}: frame {k} is malformed ({e}); each frame needs width, height, "
                             "K (3x3) and world_to_camera (4x4).") from None
        if cam.width <= 0 or cam.height <= 0 or cam.fx <= 0 or cam.fy <= 0:
            raise InputError(f"{path}: frame {k} has a non-positive size or focal length.")
        numbers.append(int(f.get("frame", k)))
        cams.append(cam)
    return numbers, cams, float(data.get("fps", 24.0))


def write_camera_path(path: str | Path, numbers: list[int], cams: list[Camera], fps: float = 24.0) -> None:
    data = {"version": 1, "fps": fps, "frames": [
        {"frame": n, "width": c.width, "height": c.height, "K": c.K.tolist(),
         "world_to_camera": c.world_to_camera.tolist()} for n, c in zip(numbers, cams)]}
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def frame_filename(number: int, fmt: str) -> str:
    """File name of frame `number` in output format `fmt` (a key of config.FORMATS)."""
    return f"frame_{number:06d}.{FORMATS[fmt].extension}"
