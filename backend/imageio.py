"""Image files (numpy + PIL only, no torch): photos in, PNG and EXR renders out.

Colour convention (backend.colour): 8-bit images are sRGB read as value / 255, 16-bit PNGs as
value / 65535. Pixels are returned in stored order (no EXIF rotation), matching
backend.scene.image_size, which the camera files refer to.
EXR files are written with float32 channels, uncompressed scanlines; the OpenEXR package writes
them when it imports, otherwise a small built-in writer does (same bytes layout as far as
readers are concerned).
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .colour import to_u8
from .errors import InputError

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_EXR_MAGIC = 0x01312F76


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- reading ------------------------------------------------------------------

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
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            m = np.asarray(im.convert("L")) >= 128
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable mask ({e}); delete the masks folder or prepare the scene "
                         "again.") from None
    if m.shape != (height, width):
        raise InputError(f"{path}: the mask is {m.shape[1]}x{m.shape[0]} but its photo is {width}x{height}; "
                         "delete the masks folder or prepare the scene again.")
    return m


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im, dtype=np.float32) / 65535.0
            if im.mode not in ("RGB", "RGBA", "L", "LA"):
                im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
            return np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: not a readable image ({e}); convert the photo to PNG or JPEG.") from None


def _read_png16(path: Path) -> np.ndarray:
    """16-bit PNG decoder (PIL keeps only the high byte of 16-bit colour PNGs)."""
    data = path.read_bytes()
    pos, idat, hdr = 8, [], None
    try:
        while pos < len(data):
            n, kind = struct.unpack(">I4s", data[pos:pos + 8])
            body = data[pos + 8:pos + 8 + n]
            if kind == b"IHDR":
                hdr = struct.unpack(">IIBBBBB", body)
            elif kind == b"IDAT":
                idat.append(body)
            elif kind == b"IEND":
                break
            pos += 12 + n
        if hdr is None:
            raise ValueError("no IHDR chunk")
        w, h, depth, ctype, _comp, _filt, interlace = hdr
        channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(ctype)
        if depth != 16 or channels is None:
            raise ValueError(f"unsupported 16-bit colour type {ctype}")
        if interlace:
            raise ValueError("interlaced 16-bit PNGs are not supported; save it non-interlaced")
        raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
        bpp = 2 * channels
        raw = raw[: h * (1 + w * bpp)].reshape(h, 1 + w * bpp)
    except (ValueError, struct.error, zlib.error) as e:
        raise InputError(f"{path}: not a readable PNG ({e}); re-save the image.") from None
    rows = _unfilter(raw[:, 0], raw[:, 1:].reshape(h, w, bpp))
    vals = rows.reshape(h, w, channels, 2).astype(np.uint16)
    return ((vals[..., 0] << 8) | vals[..., 1]).astype(np.float32) / 65535.0


def _unfilter(ftype: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Undo PNG row filters. Each pixel depends on its left, upper and upper-left neighbours, so
    pixels on one anti-diagonal are independent: H + W vectorised steps instead of H * W."""
    h, w, bpp = x.shape
    if np.any(ftype > 4):
        raise InputError("PNG with an invalid row filter type; re-save the image.")
    out = np.zeros((h + 1, w + 1, bpp), np.int32)             # zero row/column = PNG's "outside"
    xi = x.astype(np.int32)
    for d in range(h + w - 1):
        r = np.arange(max(0, d - w + 1), min(h, d + 1))
        c = d - r
        a, b, cc = out[r + 1, c], out[r, c + 1], out[r, c]
        f = ftype[r][:, None]
        p = a + b - cc
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - cc)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, cc))
        pred = np.select([f == 1, f == 2, f == 3, f == 4], [a, b, (a + b) >> 1, paeth], 0)
        out[r + 1, c + 1] = (xi[r, c] + pred) & 255
    return out[1:, 1:].astype(np.uint8)


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

def _check_channels(channels: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int, int]:
    if not channels:
        raise ValueError("write_exr needs at least one channel")
    out = {name: np.ascontiguousarray(v, dtype=np.float32) for name, v in channels.items()}
    shapes = {v.shape for v in out.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"EXR channels must share one (H, W) shape, got {sorted(shapes)}")
    h, w = next(iter(shapes))
    return out, h, w


def write_exr(path: str | Path, channels: dict[str, np.ndarray], use_openexr: bool | None = None) -> None:
    """float32 EXR (e.g. R, G, B linear, A coverage, Z depth), uncompressed scanlines. Atomic.
    use_openexr: None = the OpenEXR package when importable, False = the built-in writer."""
    path = Path(path)
    chans, h, w = _check_channels(channels)
    mod = _openexr() if use_openexr is not False else None
    if use_openexr and mod is None:
        raise RuntimeError("the OpenEXR package is not importable")
    tmp = _tmp_path(path)
    try:
        if mod is not None:
            header = {"compression": mod.NO_COMPRESSION, "type": mod.scanlineimage}
            mod.File(header, chans).write(str(tmp))
        else:
            tmp.write_bytes(_encode_exr(chans, h, w))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, path)


def _openexr():
    try:
        import OpenEXR
    except ImportError:
        return None
    return OpenEXR if hasattr(OpenEXR, "File") else None      # File API: OpenEXR >= 3.2


def _attr(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def _encode_exr(chans: dict[str, np.ndarray], h: int, w: int) -> bytes:
    """Single-part scanline EXR, FLOAT channels, NO_COMPRESSION (one scanline per chunk)."""
    names = sorted(chans)                                      # the format requires sorted channels
    chlist = b"".join(n.encode() + b"\0" + struct.pack("<iB3xii", 2, 0, 1, 1) for n in names) + b"\0"
    box = struct.pack("<iiii", 0, 0, w - 1, h - 1)
    header = b"".join([
        struct.pack("<ii", _EXR_MAGIC, 2),
        _attr("channels", "chlist", chlist),
        _attr("compression", "compression", b"\0"),
        _attr("dataWindow", "box2i", box),
        _attr("displayWindow", "box2i", box),
        _attr("lineOrder", "lineOrder", b"\0"),
        _attr("pixelAspectRatio", "float", struct.pack("<f", 1.0)),
        _attr("screenWindowCenter", "v2f", struct.pack("<ff", 0.0, 0.0)),
        _attr("screenWindowWidth", "float", struct.pack("<f", 1.0)),
        b"\0",
    ])
    line_bytes = 4 * w * len(names)
    chunk = 8 + line_bytes
    first = len(header) + 8 * h
    offsets = (first + chunk * np.arange(h, dtype=np.uint64)).astype("<u8")
    # Each chunk: int32 y, int32 byte count, then the row of every channel in turn.
    body = np.empty((h, chunk), np.uint8)
    body[:, 0:4] = np.arange(h, dtype="<i4").view(np.uint8).reshape(h, 4)
    body[:, 4:8] = np.frombuffer(struct.pack("<i", line_bytes), np.uint8)
    px = np.stack([chans[n] for n in names], axis=1).astype("<f4")   # (H, C, W)
    body[:, 8:] = px.view(np.uint8).reshape(h, line_bytes)
    return header + offsets.tobytes() + body.tobytes()


def read_exr(path: str | Path) -> dict[str, np.ndarray]:
    """EXR -> {channel name: (H, W) float32}. Uses OpenEXR when importable; otherwise reads
    uncompressed scanline files like the ones write_exr makes."""
    path = Path(path)
    mod = _openexr()
    if mod is not None:
        try:
            with mod.File(str(path), separate_channels=True) as f:
                return {k: np.asarray(c.pixels, dtype=np.float32) for k, c in f.channels().items()}
        except TypeError:                                          # older File without the keyword
            f = mod.File(str(path))
            return {k: np.asarray(c.pixels, dtype=np.float32) for k, c in f.channels().items()}
    return _decode_exr(path.read_bytes(), path)


def _decode_exr(data: bytes, path: Path) -> dict[str, np.ndarray]:
    magic, _version = struct.unpack_from("<ii", data, 0)
    if magic != _EXR_MAGIC:
        raise InputError(f"{path}: not an EXR file.")
    pos, attrs = 8, {}
    while data[pos] != 0:
        end = data.index(b"\0", pos)
        name = data[pos:end].decode()
        tend = data.index(b"\0", end + 1)
        size = struct.unpack_from("<i", data, tend + 1)[0]
        attrs[name] = data[tend + 5:tend + 5 + size]
        pos = tend + 5 + size
    pos += 1
    if attrs.get("compression", b"\0") != b"\0":
        raise InputError(f"{path}: compressed EXR; install the OpenEXR package to read it.")
    names, types, cl = [], [], attrs["channels"]
    p = 0
    while cl[p] != 0:
        end = cl.index(b"\0", p)
        names.append(cl[p:end].decode())
        types.append(struct.unpack_from("<i", cl, end + 1)[0])
        p = end + 1 + 16
    x0, y0, x1, y1 = struct.unpack("<iiii", attrs["dataWindow"])
    w, h = x1 - x0 + 1, y1 - y0 + 1
    dts = {0: "<u4", 1: "<f2", 2: "<f4"}
    offsets = np.frombuffer(data, "<u8", h, pos)
    out = {n: np.empty((h, w), np.float32) for n in names}
    for off in offsets:
        y = struct.unpack_from("<i", data, int(off))[0] - y0
        q = int(off) + 8
        for n, t in zip(names, types):
            dt = np.dtype(dts[t])
            out[n][y] = np.frombuffer(data, dt, w, q)
            q += dt.itemsize * w
    return out
