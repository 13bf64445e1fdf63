import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend import imageio
from backend.errors import InputError


def _png16(path: Path, a: np.ndarray, filters: list[int]) -> None:
    """Independent 16-bit PNG encoder applying the given row filter per row (forward direction)."""
    h, w, ch = a.shape
    raw = a.astype(">u2").reshape(h, w * ch).view(np.uint8).reshape(h, w * ch * 2).astype(int)
    bpp = 2 * ch
    out = bytearray()
    for r in range(h):
        f = filters[r % len(filters)]
        out.append(f)
        for i in range(w * bpp):
            x = raw[r, i]
            left = raw[r, i - bpp] if i >= bpp else 0
            up = raw[r - 1, i] if r > 0 else 0
            ul = raw[r - 1, i - bpp] if r > 0 and i >= bpp else 0
            if f == 0:
                pred = 0
            elif f == 1:
                pred = left
            elif f == 2:
                pred = up
            elif f == 3:
                pred = (left + up) // 2
            else:
                p = left + up - ul
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else ul)
            out.append((x - pred) % 256)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[ch]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b""))


def test_read_8bit_rgb_rgba_grey(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    got = imageio.read_image(tmp_path / "a.png")
    assert got.dtype == np.float32 and got.shape == (9, 13, 3)
    np.testing.assert_array_equal(got, rgb.astype(np.float32) / 255)

    rgba = np.concatenate([rgb, rng.integers(0, 256, (9, 13, 1), dtype=np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "b.png")
    np.testing.assert_array_equal(imageio.read_image(tmp_path / "b.png"), rgb / np.float32(255))

    Image.fromarray(rgb[..., 0], "L").save(tmp_path / "c.png")
    g = imageio.read_image(tmp_path / "c.png")
    assert g.shape == (9, 13, 3)
    np.testing.assert_array_equal(g[..., 2], rgb[..., 0] / np.float32(255))

    smooth = np.broadcast_to(np.linspace(20, 230, 13)[None, :, None], (9, 13, 3)).astype(np.uint8)
    Image.fromarray(np.ascontiguousarray(smooth)).save(tmp_path / "d.jpg", quality=95)
    j = imageio.read_image(tmp_path / "d.jpg")
    assert j.shape == (9, 13, 3) and np.abs(j - smooth / 255).max() < 0.05


@pytest.mark.parametrize("channels", [3, 4, 1])
def test_read_16bit_png_all_filters(tmp_path, channels):
    rng = np.random.default_rng(channels)
    a = rng.integers(0, 65536, (7, 6, channels)).astype(np.uint16)
    a[2] = 65535 - a[1]                                       # some structure for the predictors
    _png16(tmp_path / "x.png", a, [0, 1, 2, 3, 4, 4, 3])
    got = imageio.read_image(tmp_path / "x.png")
    want = a.astype(np.float32) / 65535
    want = np.repeat(want, 3, 2) if channels == 1 else want[..., :3]
    np.testing.assert_array_equal(got, want)


def test_read_16bit_grey_written_by_pil(tmp_path):
    a = (np.arange(40 * 30).reshape(30, 40) * 50 % 65536).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g.png")
    got = imageio.read_image(tmp_path / "g.png")
    np.testing.assert_array_equal(got[..., 1], a.astype(np.float32) / 65535)


def test_unreadable_images_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="broken.png"):
        imageio.read_image(bad)
    with pytest.raises(InputError, match="missing.jpg"):
        imageio.read_image(tmp_path / "missing.jpg")


def test_write_png_rgb_and_rgba_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.random((10, 12, 3)).astype(np.float32)
    rgb[0, 0] = [-0.5, 1.5, np.nan]                           # clipped, NaN -> 0
    alpha = rng.random((10, 12))
    imageio.write_png(tmp_path / "o.png", rgb)
    imageio.write_png(tmp_path / "oa.png", rgb, alpha)
    with Image.open(tmp_path / "o.png") as im:
        assert im.mode == "RGB"
        px = np.asarray(im)
    with Image.open(tmp_path / "oa.png") as im:
        assert im.mode == "RGBA"
        pxa = np.asarray(im)
    want = np.round(np.clip(np.nan_to_num(rgb), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(px, want)
    np.testing.assert_array_equal(pxa[..., :3], want)
    np.testing.assert_array_equal(pxa[..., 3], np.round(alpha * 255).astype(np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png", "oa.png"]   # no temp files left
    with pytest.raises(ValueError):
        imageio.write_png(tmp_path / "x.png", rgb, alpha[:5])


def test_write_png_quantized_pixels_as_they_are(tmp_path):
    """Already 8-bit RGBA / RGB (the render path's GPU-packed frames): read back unchanged by PIL
    and by read_image, whatever the row-to-row differences (the Up filter wraps mod 256)."""
    rng = np.random.default_rng(2)
    for shape in [(37, 23, 4), (1, 9, 4), (16, 5, 3)]:
        px = rng.integers(0, 256, shape, dtype=np.uint8)
        px[len(px) // 2:] = 255 - px[len(px) // 2:]
        imageio.write_png(tmp_path / "q.png", px)
        with Image.open(tmp_path / "q.png") as im:
            assert im.mode == ("RGBA" if shape[2] == 4 else "RGB")
            np.testing.assert_array_equal(np.asarray(im), px)
        if shape[2] == 3:
            np.testing.assert_array_equal(np.round(imageio.read_image(tmp_path / "q.png") * 255), px)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.png"]


def _channels(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ch = {k: rng.normal(size=(17, 23)).astype(np.float32) for k in "RGBA"}
    z = rng.uniform(1, 50, (17, 23)).astype(np.float32)
    z[3:6, 4:9] = np.inf                                       # background depth
    ch["Z"] = z
    return ch


def test_exr_round_trip_through_openexr(tmp_path):
    import OpenEXR
    ch = _channels(1)
    imageio.write_exr(tmp_path / "r.exr", ch)
    with OpenEXR.File(str(tmp_path / "r.exr"), separate_channels=True) as f:
        assert f.header()["compression"] == OpenEXR.NO_COMPRESSION
        raw = {k: np.array(c.pixels) for k, c in f.channels().items()}
    back = imageio.read_exr(tmp_path / "r.exr")
    assert sorted(raw) == sorted(back) == ["A", "B", "G", "R", "Z"]
    for k in ch:
        assert raw[k].dtype == back[k].dtype == np.float32
        np.testing.assert_array_equal(raw[k], ch[k])
        np.testing.assert_array_equal(back[k], ch[k])
    assert [p.name for p in tmp_path.iterdir()] == ["r.exr"]        # atomic: no temporary left


def test_unreadable_exr_names_the_file(tmp_path):
    (tmp_path / "bad.exr").write_bytes(b"\x76\x2f\x31\x01 truncated")
    with pytest.raises(InputError, match="bad.exr"):
        imageio.read_exr(tmp_path / "bad.exr")


def test_exr_rejects_mismatched_channels(tmp_path):
    with pytest.raises(ValueError):
        imageio.write_exr(tmp_path / "x.exr", {"R": np.zeros((2, 3)), "G": np.zeros((3, 2))})
