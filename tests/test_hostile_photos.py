"""Photo files from outside: truncated headers, decompression bombs (a small file declaring more
pixels than can be decoded) and undecodable data are one-line errors naming the file, found
before the pixels are decoded where the size is known."""
from __future__ import annotations

import io
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from backend.cameras import read_mvsnet_cam, write_mvsnet_cam, Camera
from backend.errors import InputError
from conftest import expect_error
from fuzzing import run_main


def bomb_png(width: int, height: int, bits: int = 8) -> bytes:
    """A valid PNG header of width x height RGB pixels followed by a few rows of data: a few
    hundred bytes that declare gigabytes."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = zlib.compress(b"\x00" * (1 + width * 3 * bits // 8) * 2)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bits, 2, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def photo_bytes(fmt: str) -> bytes:
    a = (np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_every_truncated_header_is_an_input_error(tmp_path, fmt):
    """image_size on a JPEG or PNG cut anywhere in its first 700 bytes: the size, or an
    InputError naming the file (struct.error escaped for 36 of them)."""
    from backend.scene import image_size
    data = photo_bytes(fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    for n in range(1, min(len(data), 700)):
        path.write_bytes(data[:n])
        try:
            assert image_size(path) == (48, 32)
        except InputError as e:
            assert str(e).startswith(f"{path}: ")


def readers():
    from backend.imageio import read_image, read_mask
    from backend.photos import load_rgb8
    from backend.prepare.downsample import load_rgb
    return {"read_image": read_image, "read_mask": lambda p: read_mask(p, 40000, 40000),
            "load_rgb8": lambda p: load_rgb8(p, Camera(40000, 40000, np.eye(3), np.eye(4))),
            "load_rgb": load_rgb}


@pytest.mark.parametrize("reader", sorted(readers()))
@pytest.mark.parametrize("bits", [8, 16])
def test_decompression_bombs_are_refused(tmp_path, reader, bits):
    """A 40000 x 40000 PNG header of a few hundred bytes: DecompressionBombError escaped every
    reader (a 16-bit one reached OpenCV, whose message spans two lines)."""
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(40000, 40000, bits))
    with pytest.raises(InputError) as e:
        readers()[reader](path)
    text = str(e.value)
    assert text.startswith(f"{path}: ") and "\n" not in text and "too many pixels" in text, text


def test_sizes_of_other_formats_refuse_bombs(tmp_path):
    """prepare reads the size of a TIFF or BMP photo through Pillow: a bomb is refused there too."""
    from backend.prepare.writer import image_size_any
    data = bytearray(photo_bytes("BMP"))
    data[18:26] = struct.pack("<ii", 40000, 40000)          # BITMAPINFOHEADER width, height
    path = tmp_path / "bomb.bmp"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="too many pixels"):
        image_size_any(path)


def _scene_with(scene, tmp_path, photo: bytes, size: tuple[int, int] | None = None):
    """A copy of the scene whose first photo is `photo` (its camera scaled to `size`)."""
    s = shutil.copytree(scene, tmp_path / "s")
    first = sorted((s / "images").iterdir())[0]
    first.write_bytes(photo)
    if size is not None:
        cam_file = s / "cams" / f"{first.stem}_cam.txt"
        E, K, _ = read_mvsnet_cam(cam_file)
        K = K * [[size[0] / 48], [size[1] / 32], [1]]
        write_mvsnet_cam(cam_file, Camera(size[0], size[1], K, E))
    return s, first


def test_check_and_cache_refuse_hostile_photos_in_one_line(scene, tmp_path):
    """A truncated JPEG header, and a bomb whose camera file agrees with its size (so that nothing
    but the pixel count can refuse it before decoding)."""
    jpeg = photo_bytes("JPEG")
    sof = jpeg.index(b"\xff\xc0")                         # the frame header holding the size
    s, first = _scene_with(scene, tmp_path, jpeg[:sof + 7])    # cut inside it (struct.error escaped)
    expect_error(run_main("check", str(s)), first.name)
    shutil.rmtree(s)
    s, first = _scene_with(scene, tmp_path, bomb_png(20000, 20000), (20000, 20000))
    expect_error(run_main("check", str(s)), first.name, "20000x20000")
    expect_error(run_main("cache", "--scene", str(s), "--run", str(tmp_path / "run"), "--device", "cpu"),
                 first.name, "20000x20000")
    assert not (tmp_path / "run").exists()


def test_messages_quoting_library_text_stay_one_line():
    """An error quoting a library's message (OpenCV's end in a newline) is still one line."""
    from backend.errors import DeviceError
    for cls in (InputError, DeviceError):
        assert str(cls("x.png: cannot decode (OpenCV: error:\n  (-215) pixels <= MAX\n)")) == \
            "x.png: cannot decode (OpenCV: error: (-215) pixels <= MAX )"


def test_pillow_warnings_and_logs_stay_off_stderr(tmp_path):
    """A TIFF photo (prepare converts those) claiming 20000 samples per pixel: Pillow logged a line
    to stderr above the error; the error is the one line there."""
    from conftest import cli
    from test_prepare_colmap import IMAGES_TXT, workspace
    ws = workspace(tmp_path / "ws")
    data = bytearray(photo_bytes("TIFF"))
    ifd = struct.unpack("<I", data[4:8])[0]
    for k in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack("<H", data[entry:entry + 2])[0] == 277:          # SamplesPerPixel
            data[entry + 8:entry + 10] = struct.pack("<H", 20000)
    (ws / "images" / "a.png").unlink()
    (ws / "images" / "a.tif").write_bytes(bytes(data))
    (ws / "sparse" / "images.txt").write_text(IMAGES_TXT.replace(" a.png", " a.tif"))
    expect_error(cli("prepare", str(ws), "--out", str(tmp_path / "out"), "--json"), "a.tif", "cannot decode")
