"""COLMAP -> MVSNet conversion: hand-written text and binary models with known cameras."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cameras import read_mvsnet_cam
from backend.errors import InputError
from backend.meshio import Mesh, write_ply
from backend.prepare import convert, convert_colmap
from backend.prepare.colmap import qvec_to_rotmat, read_model
from backend.scene import load_scene
from helpers import python_without


# Two cameras and two images whose K and world_to_camera are exact in binary floating point.
CAMERAS_TXT = """# Camera list with one line of data per camera:
#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]
1 PINHOLE 40 30 50.5 48.25 20.5 14.75
2 SIMPLE_PINHOLE 30 40 45 15.25 20
"""
IMAGES_TXT = """# Image list with two lines of data per image:
#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME
#   POINTS2D[] as (X, Y, POINT3D_ID)
1 1 0 0 0 0.5 -0.25 3 1 a.png
10.0 12.0 -1 3.5 4.5 7
2 0.5 0.5 0.5 0.5 0 0.125 4 2 sub/b.png

"""
EXPECTED = {
    "a": (np.array([[50.5, 0, 20.5], [0, 48.25, 14.75], [0, 0, 1]]),
          np.array([[1, 0, 0, 0.5], [0, 1, 0, -0.25], [0, 0, 1, 3], [0, 0, 0, 1]], float), (40, 30)),
    # q = (0.5, 0.5, 0.5, 0.5) is the cyclic permutation x <- z, y <- x, z <- y.
    "sub_b": (np.array([[45, 0, 15.25], [0, 45, 20], [0, 0, 1]], float),
              np.array([[0, 0, 1, 0], [1, 0, 0, 0.125], [0, 1, 0, 4], [0, 0, 0, 1]], float), (30, 40)),
}
MODEL_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "OPENCV": 4, "OPENCV_FISHEYE": 5}


def write_cameras_bin(path: Path, cams: list[tuple[int, str, int, int, list[float]]]) -> None:
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(cams)))
        for cid, model, w, h, params in cams:
            fh.write(struct.pack("<iiQQ", cid, MODEL_IDS[model], w, h))
            fh.write(struct.pack(f"<{len(params)}d", *params))


def write_images_bin(path: Path, imgs: list[tuple[int, list[float], list[float], int, str, int]]) -> None:
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(imgs)))
        for iid, q, t, cid, name, npts in imgs:
            fh.write(struct.pack("<i7di", iid, *q, *t, cid))
            fh.write(name.encode() + b"\x00")
            fh.write(struct.pack("<Q", npts))
            for k in range(npts):
                fh.write(struct.pack("<ddq", 1.5 * k, 2.5 * k, k - 1))


def binary_model(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    write_cameras_bin(d / "cameras.bin", [(1, "PINHOLE", 40, 30, [50.5, 48.25, 20.5, 14.75]),
                                          (2, "SIMPLE_PINHOLE", 30, 40, [45, 15.25, 20])])
    write_images_bin(d / "images.bin", [(1, [1, 0, 0, 0], [0.5, -0.25, 3], 1, "a.png", 3),
                                        (2, [0.5, 0.5, 0.5, 0.5], [0, 0.125, 4], 2, "sub/b.png", 0)])


def text_model(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "cameras.txt").write_text(CAMERAS_TXT)
    (d / "images.txt").write_text(IMAGES_TXT)


def workspace(root: Path, model=text_model, layout: str = "sparse") -> Path:
    """An image_undistorter-like folder: images/, sparse/ (or sparse/0), a mesh."""
    rng = np.random.default_rng(0)
    (root / "images" / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(root / "images" / "sub" / "b.png")
    model(root / layout)
    v = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float32)
    write_ply(root / "meshed-poisson.ply", Mesh(v, np.array([[0, 1, 2], [0, 2, 3]], np.int32)))
    return root


def test_quaternion_matches_known_rotations():
    assert np.array_equal(qvec_to_rotmat(np.array([1.0, 0, 0, 0])), np.eye(3))
    a = 0.3
    Rz = qvec_to_rotmat(np.array([np.cos(a / 2), 0, 0, np.sin(a / 2)]))
    assert np.allclose(Rz, [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]], atol=1e-15)
    # Non-unit quaternions are normalised, as COLMAP does.
    assert np.allclose(qvec_to_rotmat(np.array([2.0, 0, 0, 0])), np.eye(3))


@pytest.mark.parametrize("model", [text_model, binary_model])
def test_read_model_text_and_binary(tmp_path, model):
    model(tmp_path)
    cams, imgs = read_model(tmp_path)
    assert cams[1].model == "PINHOLE" and (cams[1].width, cams[1].height) == (40, 30)
    assert list(cams[2].params) == [45, 15.25, 20]
    assert [imgs[i].name for i in (1, 2)] == ["a.png", "sub/b.png"]
    assert list(imgs[2].qvec) == [0.5, 0.5, 0.5, 0.5] and list(imgs[2].tvec) == [0, 0.125, 4]


def test_binary_wins_over_text(tmp_path):
    binary_model(tmp_path)
    (tmp_path / "cameras.txt").write_text("1 PINHOLE 99 99 1 1 1 1\n")
    (tmp_path / "images.txt").write_text("")
    cams, imgs = read_model(tmp_path)
    assert cams[1].width == 40 and len(imgs) == 2


@pytest.mark.parametrize("model,layout", [(text_model, "sparse"), (binary_model, "sparse"),
                                          (text_model, "sparse/0"), (binary_model, "sparse/0")])
def test_convert_exact_K_and_pose(tmp_path, model, layout):
    src = workspace(tmp_path / "ws", model, layout)
    out = tmp_path / "scene"
    summary = convert_colmap(src, out)
    assert summary["views"] == 2 and summary["level"] == 1
    assert (out / "images_1" / "a.png").read_bytes() == (src / "images" / "a.png").read_bytes()
    for name, (K, E, size) in EXPECTED.items():
        E_read, K_read, depth = read_mvsnet_cam(out / "cams_1" / f"{name}_cam.txt")
        assert np.array_equal(K_read, K), name
        assert np.array_equal(E_read, E), name
        assert depth is not None and depth[0] > 0
    scene = load_scene(out, level=1)
    assert [v.name for v in scene.views] == ["a", "sub_b"]
    assert (scene.views[1].camera.width, scene.views[1].camera.height) == (30, 40)
    assert scene.mesh_path == out / "mesh.ply"


def test_generic_pose_roundtrip(tmp_path):
    """A random rotation written as a quaternion comes back as the same world_to_camera."""
    rng = np.random.default_rng(3)
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    t = rng.normal(size=3)
    d = tmp_path / "ws"
    workspace(d)
    (d / "sparse" / "images.txt").write_text(
        f"1 {' '.join(repr(float(x)) for x in q)} {' '.join(repr(float(x)) for x in t)} 1 a.png\n\n")
    convert_colmap(d, tmp_path / "out")
    E, _, _ = read_mvsnet_cam(tmp_path / "out" / "cams_1" / "a_cam.txt")
    w, x, y, z = q
    R = np.array([[w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)],
                  [2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)],
                  [2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z]])
    assert np.allclose(E[:3, :3], R, atol=1e-14) and np.array_equal(E[:3, 3], t)


@pytest.mark.parametrize("line", ["1 SIMPLE_RADIAL 40 30 50 20 15 0.01",
                                  "1 OPENCV 40 30 50 50 20 15 0.1 0 0 0"])
def test_distortion_is_undistorted(tmp_path, line):
    """Distorted photos are undistorted (tests/test_prepare_undistort.py checks how well); the
    pinhole camera keeps the focal length and the undistorted photo gets a mask."""
    ws = workspace(tmp_path / "ws")
    (ws / "sparse" / "cameras.txt").write_text(line + "\n2 SIMPLE_PINHOLE 30 40 45 15.25 20\n")
    s = convert_colmap(ws, tmp_path / "out")
    assert s["undistortion"]["views"] == 1 and s["undistortion"]["models"][0].startswith("COLMAP " + line.split()[1])
    K = read_mvsnet_cam(tmp_path / "out" / "cams_1" / "a_cam.txt")[1]
    assert K[0, 0] == 50 and K[0, 1] == 0
    assert (tmp_path / "out" / "masks_1" / "a.png").is_file() and not (tmp_path / "out" / "masks_1" / "sub_b.png").exists()
    assert (tmp_path / "out" / "images_1" / "sub_b.png").read_bytes() == (ws / "images" / "sub" / "b.png").read_bytes()


@pytest.mark.parametrize("line", ["1 OPENCV_FISHEYE 40 30 50 50 20 15 0 0 0 0",
                                  "1 OPENCV_FISHEYE 40 30 50 50 20 15 0.1 0 0 0",
                                  "1 FOV 40 30 50 50 20 15 0.2",
                                  "1 DIVISION 40 30 50 50 20 15 0.1"])
def test_fisheye_and_other_models_refused_with_undistort_hint(tmp_path, line):
    ws = workspace(tmp_path / "ws")
    (ws / "sparse" / "cameras.txt").write_text(line + "\n2 SIMPLE_PINHOLE 30 40 45 15.25 20\n")
    with pytest.raises(InputError, match="image_undistorter"):
        convert_colmap(ws, tmp_path / "out")


def test_zero_distortion_accepted(tmp_path):
    ws = workspace(tmp_path / "ws")
    (ws / "sparse" / "cameras.txt").write_text("1 OPENCV 40 30 50.5 48.25 20.5 14.75 0 0 0 0\n"
                                               "2 SIMPLE_RADIAL 30 40 45 15.25 20 0\n")
    s = convert_colmap(ws, tmp_path / "out")
    assert s["undistortion"] is None and not (tmp_path / "out" / "masks_1").exists()
    for name, (K, _, _) in EXPECTED.items():
        assert np.array_equal(read_mvsnet_cam(tmp_path / "out" / "cams_1" / f"{name}_cam.txt")[1], K)


def test_photo_size_mismatch_is_an_input_error(tmp_path):
    ws = workspace(tmp_path / "ws")
    Image.new("RGB", (80, 60)).save(ws / "images" / "a.png")
    with pytest.raises(InputError, match="80x60.*40x30"):
        convert_colmap(ws, tmp_path / "out")


def test_missing_photo_and_missing_model(tmp_path):
    ws = workspace(tmp_path / "ws")
    (ws / "images" / "a.png").unlink()
    with pytest.raises(InputError, match="a.png"):
        convert_colmap(ws, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no COLMAP model"):
        convert_colmap(tmp_path / "empty", tmp_path / "out")


def test_several_meshes_need_a_choice(tmp_path):
    ws = workspace(tmp_path / "ws")
    (ws / "meshed-delaunay.ply").write_bytes((ws / "meshed-poisson.ply").read_bytes())
    with pytest.raises(InputError, match="several meshes"):
        convert_colmap(ws, tmp_path / "out")
    convert_colmap(ws, tmp_path / "out", mesh=ws / "meshed-delaunay.ply")


def test_in_place_rerun_and_auto_detection(tmp_path):
    ws = workspace(tmp_path / "ws")
    s1 = convert(ws, ws)                       # writes images_1/, cams_1/, mesh.ply next to sparse/
    assert s1["source"]["kind"] == "colmap"
    s2 = convert(ws, ws)                       # mesh.ply from the first run is not a second source mesh
    assert s2["views"] == 2 and s2["source"]["mesh"].endswith("meshed-poisson.ply")
    assert len(load_scene(ws, level=1).views) == 2


def test_import_needs_neither_torch_nor_pillow(tmp_path):
    """The Blender side converts with the same code: numpy + stdlib only when not resizing."""
    ws = workspace(tmp_path / "ws")
    code = ("from backend.prepare import convert_colmap\n"
            f"s = convert_colmap({str(ws)!r}, {str(tmp_path / 'out')!r}, downsample=1, copy_images=True)\n"
            "assert s['views'] == 2\n"
            "try:\n"
            f"    convert_colmap({str(ws)!r}, {str(tmp_path / 'out2')!r}, downsample=2)\n"
            "except Exception as e:\n"
            "    assert type(e).__name__ == 'InputError' and 'backend environment' in str(e), e\n"
            "else:\n"
            "    raise SystemExit('resizing without Pillow should fail')\n")
    r = python_without(("torch", "PIL"), code)
    assert r.returncode == 0, r.stderr


def test_dense_model_preferred_over_distorted_sparse0(tmp_path):
    """A full workspace: sparse/0 is distorted, dense/0 holds the undistorted model and photos."""
    root = tmp_path / "project"
    workspace(root / "dense" / "0")
    (root / "sparse" / "0").mkdir(parents=True)
    (root / "sparse" / "0" / "cameras.txt").write_text("1 SIMPLE_RADIAL 80 60 100 40 30 0.02\n")
    s = convert_colmap(root, tmp_path / "out")
    assert s["views"] == 2 and s["source"]["model"].endswith("dense/0/sparse")
    assert s["source"]["mesh"].endswith("dense/0/meshed-poisson.ply")


def test_stale_cameras_removed_and_levels_recorded(tmp_path):
    import json
    ws = workspace(tmp_path / "ws")
    out = tmp_path / "out"
    convert_colmap(ws, out)
    (out / "cams_1" / "old_cam.txt").write_text((out / "cams_1" / "a_cam.txt").read_text())
    s = convert_colmap(ws, out)
    assert not (out / "cams_1" / "old_cam.txt").exists() and any("earlier run" in n for n in s["notes"])
    convert_colmap(ws, out, downsample=2)
    info = json.loads((out / "prepare.json").read_text())
    assert sorted(info["levels"]) == ["1", "2"] and info["meshes"] == ["mesh.ply"]


@pytest.mark.parametrize("name", ["../secret.png", "sub/../../secret.png", "ABSOLUTE", "..\\secret.png"])
def test_image_names_stay_inside_the_images_folder(tmp_path, name):
    """A model naming `../secret.png` or an absolute path had that file read and copied into the
    prepared scene; it is refused, naming the model and the image, and nothing is written."""
    ws = workspace(tmp_path / "ws")
    secret = ws / "secret.png"
    photo = (ws / "images" / "a.png").read_bytes()
    secret.write_bytes(photo)
    if name == "ABSOLUTE":
        name = str(secret)
    if "\\" in name:                                     # a Windows separator in the name
        (ws / "images" / "..\\secret.png").write_bytes(photo)
    (ws / "images" / "a.png").unlink()
    (ws / "sparse" / "images.txt").write_text(IMAGES_TXT.replace(" a.png", f" {name}"))
    out = tmp_path / "scene"
    with pytest.raises(InputError, match=r"image 1 is named .* outside the images folder"):
        convert_colmap(ws, out)
    assert not out.exists()
