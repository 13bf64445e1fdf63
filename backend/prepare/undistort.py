"""Undistort photos for `prepare`: OpenCV's remap on the maps of backend.prepare.lens, validity
masks, and the bookkeeping that lets an interrupted run skip the photos it already wrote.

Resampling is Lanczos (OpenCV INTER_LANCZOS4, 8 x 8 taps): sharper than bilinear and the most
position-accurate of remap's kernels (a fine dot moved by a fractional shift lands within 0.015 px
of its place with it, 0.023 px with bilinear, 0.056 px with bicubic). An output pixel is valid
when its ray is inside the lens model's valid region and lands within the source photo's pixel
centres; invalid pixels are black in the photo and 0 in the mask (valid 255), so no invented
colour reaches the ray cache or the metrics. With --downsample k the canvas is padded to a
multiple of k, the undistorted photo is shrunk with the area filter and the mask keeps a shrunk
pixel valid only when all k x k of its source pixels were.

OpenCV and Pillow are imported only here, inside functions: the Blender import runs the rest of
backend.prepare in Blender's own Python and passes undistort=False, which raises NeedsBackend.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from ..errors import InputError
from .downsample import block_all, block_mean, load_rgb, save_image
from .lens import Canvas, Lens, undistort_maps

MANIFEST = ".undistort.json"      # in masks_k/: which photos were written from which inputs
_VERSION = 1


class NeedsBackend(InputError):
    """The conversion needs libraries that only the backend environment has (OpenCV, Pillow)."""


def require_libraries() -> None:
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise NeedsBackend("undistorting photos needs OpenCV, which this Python does not have; run "
                           "'python -m backend prepare' from the backend environment (pip install -e . installs "
                           "opencv-python-headless).") from None
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise NeedsBackend("undistorting photos needs Pillow, which this Python does not have; run "
                           "'python -m backend prepare' from the backend environment.") from None


def masks_dir_for(images_dir: Path) -> Path:
    """masks_k/ beside images_k/ (masks/ beside images/)."""
    return images_dir.parent / ("masks" + images_dir.name[len("images"):])


class MapCache:
    """Undistortion maps built once per lens (in whichever worker needs one first) and dropped
    when the last photo of that lens is done, so memory holds only the lenses in flight."""

    def __init__(self, uses: dict[Lens, int], canvases: dict[Lens, Canvas]):
        self._uses = dict(uses)
        self._canvases = canvases
        self._maps: dict[Lens, Future] = {}
        self._lock = threading.Lock()

    def get(self, lens: Lens):
        with self._lock:
            fut = self._maps.get(lens)
            owner = fut is None
            if owner:
                fut = self._maps[lens] = Future()
        if owner:
            try:
                fut.set_result(undistort_maps(lens, self._canvases[lens]))
            except BaseException as e:
                fut.set_exception(e)
                raise
        return fut.result()

    def release(self, lens: Lens) -> None:
        with self._lock:
            self._uses[lens] -= 1
            if self._uses[lens] <= 0:
                self._maps.pop(lens, None)


def view_key(src: Path, lens: Lens, canvas: Canvas, k: int, out_name: str) -> str:
    """Fingerprint of everything an undistorted photo depends on: a rerun skips the photo only
    when the source file, the lens, the canvas, the factor and the output name are the same."""
    st = src.stat()
    lens_fields = {f: getattr(lens, f) for f in ("model", "width", "height", "fx", "fy", "cx", "cy", "skew",
                                                 "k", "d", "p1", "p2", "p3", "p4")}
    blob = json.dumps({"v": _VERSION, "src": str(src.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                       "lens": lens_fields, "K": canvas.K.tolist(), "canvas": [canvas.width, canvas.height],
                       "k": k, "out": out_name}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_manifest(masks_dir: Path) -> dict[str, dict]:
    try:
        data = json.loads((masks_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    views = data.get("views") if isinstance(data, dict) and data.get("version") == _VERSION else None
    return views if isinstance(views, dict) else {}


def write_manifest(masks_dir: Path, views: dict[str, dict]) -> None:
    path = masks_dir / MANIFEST
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"version": _VERSION, "views": views}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def undistort_photo(src: Path, lens: Lens, maps, k: int, out_img: Path, out_mask: Path) -> None:
    """Undistort `src` with the maps of its lens, shrink by k, write the photo and its mask
    (each atomically)."""
    import cv2
    map_x, map_y, valid, _shift = maps
    arr, info = load_rgb(src)
    if arr.shape[:2] != (lens.height, lens.width):
        raise InputError(f"{src}: the photo is {arr.shape[1]}x{arr.shape[0]} but its camera says "
                         f"{lens.width}x{lens.height}; use the photos the model was made from.")
    if max(arr.shape[:2]) > 32766:
        raise InputError(f"{src}: photos larger than 32766 pixels on a side cannot be undistorted (OpenCV's "
                         "limit); undistort them with the reconstruction software.")
    out = cv2.remap(np.ascontiguousarray(arr), map_x, map_y, interpolation=cv2.INTER_LANCZOS4,
                    borderMode=cv2.BORDER_REPLICATE)
    out[~valid] = 0
    mask = valid
    if k > 1:
        out, mask = block_mean(out, k), block_all(mask, k)
    save_image(out, out_img, info.get("icc_profile"))
    save_mask(mask, out_mask)


def save_mask(valid: np.ndarray, path: Path) -> None:
    """8-bit PNG, 255 = valid, 0 = invalid."""
    save_image(np.where(valid, 255, 0).astype(np.uint8), path)
