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

from . import boundedjson
from .cameras import Camera, camera_from_json, whole_number
from .config import FORMATS
from .errors import InputError


MAX_BYTES = 64 << 20     # a camera path file: ~100,000 frames (a longer shot: one path per frame range)
MAX_NESTING = 8          # a valid path nests 4 deep (path, frames, frame, rows of K)
MAX_FRAME = 999_999_999  # frame numbers name files: frame_NNNNNN.png


def read_camera_path(path: str | Path) -> tuple[list[int], list[Camera], float]:
    """Frame numbers, cameras and fps of a camera path file; InputError naming the file (and the
    frame) for anything that is not a valid path: every frame is checked before one is rendered."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:      # in pieces: read(MAX_BYTES + 1) would allocate all of it at once
            pieces, size = [], 0
            while size <= MAX_BYTES and (piece := fh.read(1 << 20)):
                pieces.append(piece)
                size += len(piece)
        blob = b"".join(pieces)
    except OSError as e:
        raise InputError(f"{path}: cannot read camera path ({e.strerror}).") from None
    if len(blob) > MAX_BYTES:
        raise InputError(f"{path}: camera path is larger than {MAX_BYTES / 2 ** 20:g} MiB; export the shot as "
                         "several paths (a frame range each).")
    try:
        data = boundedjson.loads(blob, MAX_NESTING)
    except ValueError as e:
        raise InputError(f"{path}: camera path is not valid JSON ({e}); export it again from Blender.") from None
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames:
        raise InputError(f"{path}: camera path has no list of 'frames'; export it again from Blender.")
    fps = data.get("fps", 24.0)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < 1e6:
        raise InputError(f"{path}: fps {boundedjson.shown(fps)} is not a positive number; export the path again "
                         "from Blender.")
    numbers, cams, seen = [], [], {}
    for k, f in enumerate(frames):
        n = _frame_number(path, k, f)
        if n in seen:
            raise InputError(f"{path}: frame entries {seen[n]} and {k} both have frame number {n} (one "
                             "file each); give every frame its own number.")
        seen[n] = k
        numbers.append(n)
        cams.append(camera_from_json(f, f"{path}: frame {n}", name=f"frame_{n:06d}"))
    return numbers, cams, float(fps)


def _frame_number(path: Path, k: int, f) -> int:
    """The frame number of entry `k` (its index when it has none): a whole number, since it
    names the frame's file."""
    if not isinstance(f, dict):
        raise InputError(f"{path}: frame entry {k} is not an object with width, height, K and world_to_camera.")
    n = f.get("frame", k)
    if not (whole_number(n) and abs(n) <= MAX_FRAME):
        raise InputError(f"{path}: frame entry {k} has frame number {boundedjson.shown(n)}; frame numbers are "
                         f"whole numbers from {-MAX_FRAME} to {MAX_FRAME}.")
    return int(n)


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
