"""Fuzzing the parsers of files that come from outside (Hypothesis): camera paths, MVSNet cams
files, meshes (OBJ, PLY), photos and COLMAP image names. Whatever the bytes, a parser returns a
valid result or raises InputError with one line; it never raises anything else, never allocates
more than a bounded amount of memory, and never reads or writes outside the folders it is given.
Run in this process (no interpreter start per example); tests/test_fuzz_commands.py runs the
commands on such files."""
from __future__ import annotations

import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from backend.cameras import MAX_SIDE, RIGID_TOL, read_mvsnet_cam, write_mvsnet_cam
from backend.errors import InputError
from fuzzing import FUZZ, files_under, parsed, refused_or_read
from helpers import odd_camera

# --- generators --------------------------------------------------------------------------------

NUMBERS = st.one_of(st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, -1, 2 ** 31, 2 ** 32 + 1, 2 ** 63, 16384, 16385, 0.5, 1e-300]))
JSON = st.recursive(st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=6)),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=10)
MATRICES = st.one_of(st.lists(st.lists(NUMBERS, max_size=5), max_size=5), JSON)
BAD_SIDES = st.sampled_from([0, -1, 16385, 2 ** 40, 2.5, "12", None, True, float("nan")])


@st.composite
def damaged(draw, blob: bytes) -> bytes:
    """`blob`, or it cut short, with a few bytes changed, or with bytes inserted (any value)."""
    how = draw(st.sampled_from(["keep", "cut", "flip", "insert"]))
    if how == "cut" and blob:
        return blob[:draw(st.integers(0, len(blob) - 1))]
    if how == "flip" and blob:
        b = bytearray(blob)
        for _ in range(draw(st.integers(1, 4))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        return bytes(b)
    if how == "insert":
        at = draw(st.integers(0, len(blob)))
        return blob[:at] + draw(st.binary(min_size=1, max_size=8)) + blob[at:]
    return blob


@st.composite
def camera_paths(draw) -> bytes:
    """A camera path file of small frames with one kind of damage (or none): a frame number, an
    entry or the pose of a frame replaced or removed, the whole document or its fps replaced,
    deep nesting, or damaged bytes."""
    damage = draw(st.sampled_from(["none", "number", "entry", "pose", "document", "fps", "nesting", "bytes"]))
    frames = []
    for k in range(draw(st.integers(1, 3))):
        cam = odd_camera(draw(st.integers(4, 16)), draw(st.integers(4, 16)))
        frames.append({"frame": k + 1, "width": cam.width, "height": cam.height, "K": cam.K.tolist(),
                       "world_to_camera": cam.world_to_camera.tolist()})
    f = frames[draw(st.integers(0, len(frames) - 1))]
    if damage == "number":
        f["frame"] = draw(st.sampled_from([1, 2]) | NUMBERS | JSON)
    elif damage == "entry":
        key = draw(st.sampled_from(sorted(f)))
        if draw(st.booleans()):
            del f[key]
        else:
            f[key] = draw(MATRICES if key in ("K", "world_to_camera") else BAD_SIDES | NUMBERS | JSON)
    elif damage == "pose":
        f["world_to_camera"] = (np.diag([draw(st.sampled_from([1.3, -1.0, 1.00001, 1 + 1e-7]))] * 3 + [1.0])
                                @ np.array(f["world_to_camera"])).tolist()
    data = {"version": 1, "fps": 24.0, "frames": frames}
    if damage == "document":
        data = draw(st.just(frames) | JSON)
    elif damage == "fps":
        data["fps"] = draw(NUMBERS | JSON)
    text = json.dumps(data)
    if damage == "nesting":
        text = '{"frames": ' + "[" * draw(st.integers(5, 20_000)) + text
    return draw(damaged(text.encode())) if damage == "bytes" else text.encode()


@st.composite
def cam_files(draw) -> bytes:
    """An MVSNet cams file with tokens and lines replaced, removed or added."""
    cam = odd_camera(40, 30)
    cam.depth_range = (0.5, 9.0)
    lines = []
    for line in _cam_text(cam).splitlines():
        tokens = line.split(" ")
        for _ in range(draw(st.integers(0, 1))):
            if tokens:
                tokens[draw(st.integers(0, len(tokens) - 1))] = draw(st.sampled_from(
                    ["nan", "inf", "1e400", "-1", "x", "", "0", "2", "1e-400", "9" * 400]))
        lines.append(" ".join(tokens))
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(lines)))
        if draw(st.booleans()) and at < len(lines):
            del lines[at]
        else:
            lines.insert(at, draw(st.sampled_from(["extrinsic", "intrinsic", "1 0 0 0", ""]) | st.text(max_size=10)))
    return draw(damaged("\n".join(lines).encode()))


def _cam_text(cam) -> str:
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        write_mvsnet_cam(Path(d) / "c.txt", cam)
        return (Path(d) / "c.txt").read_text()


INDICES = st.one_of(st.integers(-6, 6), st.sampled_from([2 ** 31, 2 ** 32 + 1, 2 ** 64 + 2, -(2 ** 63) - 1]))


@st.composite
def obj_files(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["v", "v", "f", "f", "junk"]))
        if kind == "v":
            lines.append("v " + " ".join(str(draw(NUMBERS)) for _ in range(draw(st.integers(2, 4)))))
        elif kind == "f":
            toks = [str(draw(INDICES)) + draw(st.sampled_from(["", "/1", "//2", "/x"]))
                    for _ in range(draw(st.integers(0, 5)))]
            lines.append("f " + " ".join(toks))
        else:
            lines.append(draw(st.text(max_size=12)))
    return draw(damaged("\n".join(lines).encode()))


PLY_TYPES = ["float", "double", "int", "uint", "uchar", "short", "quad", "int64", ""]


@st.composite
def ply_files(draw) -> bytes:
    fmt = draw(st.sampled_from(["ascii", "binary_little_endian", "binary_big_endian", "weird"]))
    nv, nf = draw(st.sampled_from([0, 1, 3, 4, -1, 10 ** 9])), draw(st.sampled_from([0, 1, 2, -3, 10 ** 9]))
    head = ["ply", f"format {fmt} 1.0", f"element vertex {nv}"]
    head += [f"property {draw(st.sampled_from(PLY_TYPES))} {a}" for a in draw(st.sampled_from(["xyz", "xy", "xyzq"]))]
    head += [f"element face {nf}",
             f"property list {draw(st.sampled_from(PLY_TYPES))} {draw(st.sampled_from(PLY_TYPES))} vertex_indices",
             "end_header"]
    if fmt == "ascii":
        body = " ".join(str(draw(st.one_of(NUMBERS, INDICES))) for _ in range(draw(st.integers(0, 30)))).encode()
    else:
        body = draw(st.binary(max_size=120))
    return draw(damaged(("\n".join(head) + "\n").encode() + body))


def _image_bytes(fmt: str) -> bytes:
    import io
    from PIL import Image
    a = (np.random.default_rng(1).random((12, 16, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    if fmt == "PNG16":
        Image.fromarray((a[..., 0].astype(np.uint16) * 257)).save(buf, "PNG")
    else:
        Image.fromarray(a).save(buf, fmt)
    return buf.getvalue()


IMAGES = {fmt: _image_bytes(fmt) for fmt in ("PNG", "JPEG", "PNG16", "BMP", "TIFF", "GIF")}


def png_sized(blob: bytes, w: int, h: int) -> bytes:
    """A PNG whose header declares w x h pixels (its checksum right)."""
    ihdr = struct.pack(">II", w, h) + blob[24:29]
    return blob[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + blob[33:]


# Small sides or huge ones: a 13000 x 13000 photo decodes (to 2 GB of floats) as it should, slowly.
SIDES = st.sampled_from([40_000, 0, 1, 16, 2 ** 31 - 1, 2 ** 32 - 1]) | st.integers(0, 64)


@st.composite
def photos(draw) -> bytes:
    """A small photo, damaged or (PNG) declaring any size."""
    fmt = draw(st.sampled_from(sorted(IMAGES)))
    if fmt.startswith("PNG") and draw(st.booleans()):
        return png_sized(IMAGES[fmt], draw(SIDES), draw(SIDES))
    return draw(damaged(IMAGES[fmt]))


# --- properties --------------------------------------------------------------------------------

@FUZZ
@given(blob=camera_paths())
@example(blob=b'{"frames": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
@example(blob=b'{"frames": [{"frame": Infinity}]}')
@example(blob=b'{"frames": 5}')
def test_camera_paths(tmp_path, blob):
    from backend.campath import MAX_FRAME, read_camera_path
    got = parsed(read_camera_path, tmp_path / "path.json", blob)
    if got is None:
        return
    numbers, cams, fps = got
    assert len(set(numbers)) == len(numbers) == len(cams) and all(type(n) is int and abs(n) <= MAX_FRAME for n in numbers)
    assert 0 < fps < float("inf")
    for cam in cams:
        assert 1 <= cam.width <= MAX_SIDE and 1 <= cam.height <= MAX_SIDE and np.isfinite(cam.K).all()
        R = cam.world_to_camera[:3, :3]
        assert np.abs(R @ R.T - np.eye(3)).max() <= RIGID_TOL and abs(np.linalg.det(R) - 1) <= RIGID_TOL


@FUZZ
@given(blob=cam_files())
@example(blob=b"extrinsic\n\xe9\n")
def test_cams_files(tmp_path, blob):
    E, K, _depth = parsed(read_mvsnet_cam, tmp_path / "v_cam.txt", blob) or (np.eye(4), np.eye(3), None)
    assert np.isfinite(E).all() and np.isfinite(K).all() and np.allclose(E[3], [0, 0, 0, 1]) and K[0, 0] > 0


@FUZZ
@given(blob=obj_files() | ply_files(), ext=st.sampled_from([".obj", ".ply"]))
@example(blob=b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4294967299\n", ext=".obj")      # wrapped to 3
@example(blob=b"ply\nformat ascii 1.0\nelement vertex 1\nproperty quad x\nend_header\n1\n", ext=".ply")
def test_meshes(tmp_path, blob, ext):
    from backend.meshio import load_mesh
    got = parsed(load_mesh, tmp_path / f"mesh{ext}", blob)
    if got is None:
        return
    assert got.faces.dtype == np.int32 and got.faces.min() >= 0 and got.faces.max() < len(got.vertices)
    assert np.isfinite(got.vertices).all()


@FUZZ
@given(blob=photos())
@example(blob=png_sized(IMAGES["PNG"], 40_000, 40_000))       # a decompression bomb
@example(blob=png_sized(IMAGES["PNG16"], 40_000, 40_000))
@example(blob=IMAGES["JPEG"][:IMAGES["JPEG"].index(b"\xff\xc0") + 7])   # cut inside the size
def test_photos(tmp_path, blob):
    """Every reader of a photo: the pixels (or the size) it promises, or one line naming it."""
    from backend.cameras import Camera
    from backend.imageio import read_image, read_mask
    from backend.photos import load_rgb8
    from backend.scene import image_size
    path = tmp_path / "photo.png"
    size = parsed(image_size, path, blob)
    budget = (64 << 20) + 16 * declared_pixels(path)      # decoding takes memory in proportion
    img = parsed(read_image, path, blob, max_bytes=budget)
    if img is not None:
        assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3 and 0 <= img.min() <= img.max() <= 1
    w, h = size or (16, 12)
    rgb8 = parsed(load_rgb8, path, blob, Camera(max(w, 1), max(h, 1), np.eye(3), np.eye(4)), max_bytes=budget)
    if rgb8 is not None:
        assert rgb8.shape == (h, w, 3) and rgb8.dtype == np.uint8
    mask = parsed(read_mask, path, blob, 16, 12)
    if mask is not None:
        assert mask.shape == (12, 16) and mask.dtype == bool


def declared_pixels(path) -> int:
    """The pixels a photo file declares, within what Pillow agrees to decode (0: none)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.width * im.height
    except Exception:      # noqa: BLE001 (not an image, a decompression bomb: nothing is decoded)
        return 0


@pytest.fixture(scope="module")
def colmap_workspace(tmp_path_factory):
    """A COLMAP workspace (tests/test_prepare_colmap.py's) and, beside its images folder, a photo
    that must never be read: its bytes are unique."""
    from test_prepare_colmap import workspace
    ws = workspace(tmp_path_factory.mktemp("colmap") / "ws")
    secret = np.asarray(bytearray((ws / "images" / "a.png").read_bytes()))
    from PIL import Image
    Image.fromarray(np.full((30, 40, 3), 7, np.uint8)).save(ws / "secret.png")
    assert secret.size
    return ws


PARTS = st.sampled_from(["..", "secret.png", "a.png", "sub", "b.png", ".", "", "C:", "\\", "/", "~"])


@FUZZ
@given(parts=st.lists(PARTS, min_size=1, max_size=5), sep=st.sampled_from(["/", "\\"]), absolute=st.booleans())
@example(parts=["..", "secret.png"], sep="/", absolute=False)
@example(parts=["secret.png"], sep="/", absolute=True)
def test_colmap_image_names_stay_inside_the_images_folder(colmap_workspace, parts, sep, absolute):
    """Whatever an image is named, prepare reads photos only from inside the images folder and
    writes only into the scene folder."""
    from backend.prepare import convert_colmap
    from test_prepare_colmap import IMAGES_TXT
    ws = colmap_workspace
    name = sep.join(parts)
    if absolute:
        name = str(ws / name)
    if not name.strip() or any(c.isspace() for c in name):
        return
    (ws / "sparse" / "images.txt").write_text(IMAGES_TXT.replace(" a.png", f" {name}"))
    root = ws.parent
    before = files_under(root)
    out = root / "scene"
    try:
        got = refused_or_read(convert_colmap, ws, out)
        if isinstance(got, InputError):
            assert not out.exists() or "a.png" not in name
        secret = (ws / "secret.png").read_bytes()
        after = files_under(root)
        assert {k: v for k, v in after.items() if not k.startswith("scene/")} == before
        assert all((root / k).read_bytes() != secret for k in after if k.startswith("scene/"))
    finally:
        shutil.rmtree(out, ignore_errors=True)
