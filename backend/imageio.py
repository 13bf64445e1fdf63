"""Image files (numpy, Pillow, OpenCV and OpenEXR; no torch): photos in, PNG and EXR renders out.

Colour convention (backend.colour): 8-bit images are sRGB read as value / 255, 16-bit PNGs as
value / 65535. Pixels are returned in stored order (no EXIF rotation), matching
backend.scene.image_size, which the camera files refer to.
Decoding: Pillow for 8-bit images; OpenCV for 16-bit PNGs (Pillow keeps only the high byte of
16-bit colour). EXR: the OpenEXR bindings, float32 channels, uncompressed scanlines. PNG renders
are written by our own small encoder (see `_save_png` for why).
"""
from __future__ import annotations

import errno
import logging
import os
import struct
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .colour import to_u8
from .errors import InputError

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- reading ------------------------------------------------------------------

# Pillow also warns and logs (on stderr) about damaged metadata and large images it decodes all
# the same: a file is decoded or it is an error naming it, and extra lines would break that line.
warnings.filterwarnings("ignore", module=r"PIL\.")
logging.getLogger("PIL").addHandler(logging.NullHandler())

# How Pillow reports a file it cannot decode (unknown format, truncated or corrupt data).
_PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError)


@contextmanager
def pillow_errors(path: str | Path, what: str = "image", fix: str = "re-export it as PNG or JPEG"):
    """Pillow's decoding errors in the block become one InputError naming the file, decompression
    bombs included (a small file that declares more pixels than Pillow decodes, ~179 million:
    damaged, or built to exhaust memory). InputErrors raised in the block pass unchanged."""
    from PIL import Image
    try:
        yield
    except Image.DecompressionBombError as e:
        raise InputError(f"{path}: the {what} declares too many pixels ({e}); a damaged file, or a photo "
                         "too large to decode: shrink it with an image editor first.") from None
    except _PILLOW_ERRORS as e:
        raise InputError(f"{path}: cannot decode the {what} ({e}); {fix}.") from None


def read_image(path: str | Path) -> np.ndarray:
    """Photo -> float32 (H, W, 3) in [0, 1] (sRGB values, alpha dropped, grey expanded to RGB)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(29)
    except OSError as e:
        raise InputError(f"{path}: cannot read image ({e.strerror}).") from None
    if head.startswith(_PNG_MAGIC) and len(head) >= 25 and head[24] == 16:
        img = _read_png16(path)
    else:
        img = _read_pil(path)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] in (2, 4):          # grey+alpha or RGBA: drop alpha
        img = img[:, :, :-1]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img, dtype=np.float32)


def read_mask(path: str | Path | None, width: int, height: int) -> np.ndarray | None:
    """A photo's validity mask (backend.scene: 8-bit PNG, 0 invalid, 255 valid) -> bool (H, W),
    True = valid; None when the photo has no mask."""
    if path is None:
        return None
    from PIL import Image
    with pillow_errors(path, "mask", "delete the masks folder or prepare the scene again"), Image.open(path) as im:
        if im.size != (width, height):         # checked before the pixels are decoded
            raise InputError(f"{path}: the mask is {im.width}x{im.height} but its photo is {width}x{height}; "
                             "delete the masks folder or prepare the scene again.")
        return np.asarray(im.convert("L")) >= 128


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image
    with pillow_errors(path), Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L"):
            return np.asarray(im, dtype=np.float32) / 65535.0
        if im.mode not in ("RGB", "RGBA", "L", "LA"):
            im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
        return np.asarray(im, dtype=np.float32) / 255.0


def _read_png16(path: Path) -> np.ndarray:
    """16-bit PNG -> float32 (H, W[, C]) in [0, 1], channels in RGB(A) order."""
    import cv2
    from PIL import Image
    with pillow_errors(path), Image.open(path):    # the header, and Pillow's size limit (OpenCV's is 6x larger)
        pass
    try:
        a = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)   # any path, any OS
    except (OSError, cv2.error) as e:
        raise InputError(f"{path}: not a readable PNG ({e}); re-save the image.") from None
    if a is None or a.dtype != np.uint16:
        raise InputError(f"{path}: not a readable 16-bit PNG; re-save the image.")
    if a.ndim == 3:
        a = a[..., [2, 1, 0, 3][:a.shape[2]]] if a.shape[2] in (3, 4) else a    # OpenCV's BGR(A)
    return a.astype(np.float32) / 65535.0


# --- PNG writing --------------------------------------------------------------

def write_png(path: str | Path, rgb_srgb: np.ndarray, alpha: np.ndarray | None = None) -> None:
    """8-bit PNG from sRGB values in [0, 1] (H, W, 3); RGBA when alpha (H, W) is given. Atomic.
    Already quantized pixels (uint8 (H, W, 3) or (H, W, 4) RGBA) are written as they are."""
    path = Path(path)
    rgb = np.asarray(rgb_srgb)
    if rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] in (3, 4) and alpha is None:
        _save_png(path, rgb)
        return
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"write_png wants (H, W, 3) colours, got shape {rgb.shape}")
    px = to_u8(rgb)
    if alpha is not None:
        a = np.asarray(alpha)
        if a.shape != rgb.shape[:2]:
            raise ValueError(f"alpha shape {a.shape} does not match image {rgb.shape[:2]}")
        px = np.concatenate([px, to_u8(a)[:, :, None]], axis=2)
    _save_png(path, px)


def _save_png(path: Path, px: np.ndarray, level: int = 4) -> None:
    """uint8 (H, W, 3|4) -> PNG, every row with the "Up" filter. Written here rather than with
    PIL: zlib and numpy release the GIL, so writer threads encode frames in parallel while the
    render loop keeps launching GPU work (PIL's encoder held rendering back by ~10 %)."""
    h, w, c = px.shape
    rows = np.empty((h, 1 + w * c), np.uint8)
    flat = np.ascontiguousarray(px).reshape(h, w * c)
    rows[:, 0] = 2                                   # filter type Up: byte - byte above (mod 256)
    rows[0, 1:] = flat[0]
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])

    # No Python-level copies of the pixel data: zlib reads `rows` in place and the IDAT chunk is
    # written in pieces, so the GIL is free for the render loop while a frame is encoded.
    def chunk(fh, kind: bytes, body) -> None:
        fh.write(struct.pack(">I", len(body)) + kind)
        fh.write(body)
        fh.write(struct.pack(">I", zlib.crc32(body, zlib.crc32(kind))))

    idat = zlib.compress(rows, level)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(_PNG_MAGIC)
            chunk(fh, b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6 if c == 4 else 2, 0, 0, 0))
            chunk(fh, b"IDAT", idat)
            chunk(fh, b"IEND", b"")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, path)


# --- EXR ----------------------------------------------------------------------

def _check_channels(channels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not channels:
        raise ValueError("write_exr needs at least one channel")
    out = {name: np.ascontiguousarray(v, dtype=np.float32) for name, v in channels.items()}
    shapes = {v.shape for v in out.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"EXR channels must share one (H, W) shape, got {sorted(shapes)}")
    return out


def write_exr(path: str | Path, channels: dict[str, np.ndarray]) -> None:
    """float32 EXR (e.g. R, G, B linear, A coverage, Z depth), uncompressed scanlines. Atomic."""
    import OpenEXR
    path = Path(path)
    chans = _check_channels(channels)
    tmp = _tmp_path(path)
    try:
        OpenEXR.File({"compression": OpenEXR.NO_COMPRESSION, "type": OpenEXR.scanlineimage},
                     chans).write(str(tmp))
    except RuntimeError as e:       # how OpenEXR reports a failed write (a full disk)
        tmp.unlink(missing_ok=True)
        full = "No space left on device" in str(e)
        raise OSError(errno.ENOSPC if full else errno.EIO, os.strerror(errno.ENOSPC) if full else str(e),
                      str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, path)


def read_exr(path: str | Path) -> dict[str, np.ndarray]:
    """EXR -> {channel name: (H, W) float32}."""
    import OpenEXR
    try:
        with OpenEXR.File(str(path), separate_channels=True) as f:
            return {k: np.asarray(c.pixels, dtype=np.float32) for k, c in f.channels().items()}
    except (OSError, RuntimeError) as e:
        raise InputError(f"{path}: not a readable EXR file ({e}).") from None
