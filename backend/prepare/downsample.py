"""Downsampling by an integer factor k, exact under the continuous pixel convention.

The image spans [0, W] x [0, H]; shrinking it by k maps every coordinate x to x / k, so
K' = diag(1/k, 1/k, 1) @ K with no half-pixel term, and new pixel i (centre i + 0.5) is the area
mean of old pixels k*i .. k*i + k - 1 (whose centres average to k*i + k/2 = k * (i + 0.5)).
When W or H is not a multiple of k the right/bottom remainder is cropped first, which leaves K
unchanged because the origin is the top-left corner.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..cameras import Camera
from ..errors import InputError
from ..imageio import pillow_errors


def crop_size(width: int, height: int, k: int) -> tuple[int, int]:
    """Largest size <= (width, height) that divides by k."""
    if width < k or height < k:
        raise InputError(f"--downsample {k}: a {width}x{height} photo is smaller than the factor; "
                         "use a smaller --downsample.")
    return width - width % k, height - height % k


def downsample_camera(cam: Camera, k: int) -> Camera:
    """Camera of the photo cropped to a multiple of k and shrunk by k."""
    K = cam.K.copy()
    K[:2] /= k
    return Camera(cam.width // k, cam.height // k, K, cam.world_to_camera.copy(), cam.name, cam.depth_range)


def block_mean(img: np.ndarray, k: int) -> np.ndarray:
    """Area filter: mean of every k x k block of a uint8 (H, W[, C]) image whose H and W divide by
    k, rounded half up. Works in strips so an 8K photo never needs a float copy in memory."""
    if k == 1:
        return img
    h, w = img.shape[:2]
    assert h % k == 0 and w % k == 0
    out = np.empty((h // k, w // k) + img.shape[2:], np.uint8)
    rows = max(1, (1 << 22) // max(1, w * k))          # output rows per strip (~4 M input values)
    for r0 in range(0, h // k, rows):
        r1 = min(h // k, r0 + rows)
        block = img[r0 * k:r1 * k].reshape((r1 - r0, k, w // k, k) + img.shape[2:])
        s = block.sum(axis=(1, 3), dtype=np.uint32)
        out[r0:r1] = (s + (k * k) // 2) // (k * k)
    return out


def block_all(valid: np.ndarray, k: int) -> np.ndarray:
    """Validity mask shrunk by k: a shrunk pixel is valid only when all its k x k pixels are
    (H and W divide by k)."""
    if k == 1:
        return valid
    h, w = valid.shape
    return valid.reshape(h // k, k, w // k, k).all(axis=(1, 3))


def _need_pillow():
    try:
        from PIL import Image
    except ImportError:
        raise InputError("resizing or converting photos needs Pillow, which this Python does not have; "
                         "run 'python -m backend prepare ... --downsample K' from the backend environment.") from None
    return Image


def load_rgb(path: Path) -> tuple[np.ndarray, dict]:
    """Decode a photo to uint8 L/RGB/RGBA pixels (as stored: EXIF orientation is not applied,
    matching how the reconstruction software saw them). Returns pixels and save options."""
    Image = _need_pillow()
    with pillow_errors(path, "photo"), Image.open(path) as im:
        im.load()
        info = {"icc_profile": im.info.get("icc_profile")}
        if im.mode in ("L", "RGB", "RGBA"):
            arr = np.asarray(im)
        elif im.mode.startswith("I;16") or im.mode == "I":
            arr = np.clip(np.asarray(im, dtype=np.float64) / 257.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            has_alpha = "A" in im.mode or "transparency" in im.info
            arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    return arr, info


def save_image(arr: np.ndarray, path: Path, icc_profile: bytes | None = None) -> None:
    """Write PNG or JPEG (by suffix) atomically. JPEG: quality 95, no chroma subsampling."""
    Image = _need_pillow()
    im = Image.fromarray(arr)
    ext = path.suffix.lower()
    tmp = path.with_name(f".{path.name}.tmp")
    opts: dict = {"icc_profile": icc_profile} if icc_profile else {}
    if ext in (".jpg", ".jpeg"):
        if im.mode == "RGBA":
            im = im.convert("RGB")
        im.save(tmp, format="JPEG", quality=95, subsampling=0, **opts)
    else:
        im.save(tmp, format="PNG", **opts)
    os.replace(tmp, path)


def resize_image_file(src: Path, dst: Path, k: int, crop: tuple[int, int] | None = None) -> tuple[int, int]:
    """Crop `src` to `crop` (width, height) from the top-left, shrink by k, write `dst`.
    Returns the written size."""
    arr, info = load_rgb(src)
    if crop is not None:
        arr = arr[:crop[1], :crop[0]]
    out = block_mean(np.ascontiguousarray(arr), k)
    save_image(out, dst, info.get("icc_profile"))
    return out.shape[1], out.shape[0]
