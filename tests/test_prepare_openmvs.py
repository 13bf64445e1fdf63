"""OpenMVS scenes (.mvs, the MVSI archive of OpenMVS's Interface.h) -> MVSNet scene. Archives of each
layout version written here byte by byte; known 3-D points land on the pixels OpenMVS's own
projection gives (platform pose composed with the camera's, integer pixel centres), and damaged
archives are refused in one line."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from backend.errors import InputError
from backend.prepare import convert
from backend.prepare.sources import detect_source
from conftest import expect_error
from format_helpers import EYES, cloud, gl_camera_to_world, noise_photo, plane_mesh, projection_error
from fuzzing import run_main
from undistort_helpers import H, W

NO_ID = 0xFFFFFFFF


def cv_pose(eye) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera rotation (x right, y down, z forward) and centre of a camera at `eye`."""
    c2w = gl_camera_to_world(eye)
    return (c2w[:3, :3] @ np.diag([1.0, -1, -1])).T, c2w[:3, 3]


def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def s_(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def m_(M) -> bytes:
    return struct.pack("<9d", *np.asarray(M, float).ravel())         # row-major


def p_(v) -> bytes:
    return struct.pack("<3d", *v)


def archive(version: int, platforms: list, images: list) -> bytes:
    """platforms: [(cameras [(w, h, K, R, C)], poses [(R, C)])]; images: [(name, platform, camera, pose)]."""
    out = b"MVSI" + struct.pack("<II", version, 0) if version else b""
    out += struct.pack("<Q", len(platforms))
    for cams, poses in platforms:
        out += s_("platform") + struct.pack("<Q", len(cams))
        for w, h, K, R, C in cams:
            out += s_("camera") + (s_("RGB") if version > 3 else b"")
            out += (struct.pack("<II", w, h) if version > 0 else b"") + m_(K) + m_(R) + p_(C)
        out += struct.pack("<Q", len(poses)) + b"".join(m_(R) + p_(C) for R, C in poses)
    out += struct.pack("<Q", len(images))
    for name, pid, cid, poseid in images:
        out += s_(name) + (s_("") if version > 4 else b"") + struct.pack("<3I", pid, cid, poseid)
        out += struct.pack("<I", 0) if version > 2 else b""
        if version > 6:
            out += struct.pack("<3f", 1.0, 2.0, 3.0)                       # depths, then one view score
            out += struct.pack("<Q", 1) + struct.pack("<IIffff", 1, 40, 1, 0.1, 0.5, 0.9)
    out += struct.pack("<Q", 1) + struct.pack("<3f", 0.1, 0.2, 0.3) + struct.pack("<Q", 0)     # one point, no views
    return out + struct.pack("<QQ", 0, 0)                                                   # normals, colours


def openmvs_project(X, K, Rc, Cc, Rp, Cp):
    """OpenMVS: the image's pose is (Rc Rp, Rp^T Cc + Cp), x = K R (X - C), pixel centres at integers
    (moved to ours: + 0.5)."""
    R, C = Rc @ Rp, Rp.T @ Cc + Cp
    P = (X - C) @ R.T @ np.asarray(K).T
    return P[:, :2] / P[:, 2:3] + 0.5


def scene(root: Path, version: int) -> tuple[Path, list]:
    """Two platforms: one with a pixel K (or normalised before version 1) and a camera mounted at
    an offset, one normalised (by the larger side of a portrait photo); three images, one without a
    pose. Returns the folder and, per posed image, (name, K in pixels, Rc, Cc, Rp, Cp)."""
    Kpx = np.array([[150.5, 0, 81.25], [0, 152.0, 57.5], [0, 0, 1]])
    Rc, Cc = rot_z(0.1), np.array([0.05, -0.02, 0.01])
    R0, C0 = cv_pose(EYES[0])
    R1, C1 = cv_pose(EYES[1])
    s = max(W, H)
    Kn = np.array([[130.0 / s, 0, 60.25 / s], [0, 130.0 / s, 79.5 / s], [0, 0, 1]])
    cam0 = (W, H, Kpx, Rc, Cc) if version else (0, 0, Kpx * [[1 / s] * 3, [1 / s] * 3, [1, 1, 1]], Rc, Cc)
    plats = [([cam0], [(R0, C0)]), ([(0, 0, Kn, np.eye(3), np.zeros(3))], [(R1, C1)])]
    imgs = [("images/IMG_0.png", 0, 0, 0), ("images/IMG_1.png", 1, 0, 0), ("images/IMG_2.png", 1, 0, NO_ID)]
    root.mkdir(parents=True)
    for i, (w, h) in enumerate([(W, H), (H, W), (W, H)]):      # the normalised camera's photo is portrait
        noise_photo(root / "images" / f"IMG_{i}.png", w, h, i)
    (root / "scene.mvs").write_bytes(archive(version, plats, imgs))
    plane_mesh(root / "scene_mesh.ply")
    (root / "scene_dense.ply").write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n"
                                          "property float y\nproperty float z\nend_header\n0 0 0\n")   # not a mesh
    Kn_px = Kn * [[s] * 3, [s] * 3, [1, 1, 1]]
    return root, [("IMG_0", Kpx, Rc, Cc, R0, C0), ("IMG_1", Kn_px, np.eye(3), np.zeros(3), R1, C1)]


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 5, 6, 7])
def test_points_land_where_openmvs_projects_them(tmp_path, version):
    X = cloud()
    src, posed = scene(tmp_path / "mvs", version)
    assert detect_source(src) == "openmvs" and detect_source(src / "scene.mvs") == "openmvs"
    s = convert(src, tmp_path / "scene")
    assert s["views"] == 2 and s["source"]["kind"] == "openmvs" and s["source"]["mesh"].endswith("scene_mesh.ply")
    assert any("1 image(s) of scene.mvs have no pose" in n for n in s["notes"])
    for name, K, Rc, Cc, Rp, Cp in posed:
        uv = openmvs_project(X, K, Rc, Cc, Rp, Cp)
        assert projection_error(tmp_path / "scene", name, X, uv) < 1e-3
        # the platform pose alone, its rotation transposed, or OpenMVS's pixel centres taken as ours land elsewhere
        assert np.abs(openmvs_project(X, K, Rc, Cc, Rp.T, Cp) - uv).max() > 5
        assert projection_error(tmp_path / "scene", name, X, uv - 0.5) > 0.4
        if name == "IMG_0":
            assert np.abs(openmvs_project(X, K, np.eye(3), np.zeros(3), Rp, Cp) - uv).max() > 5


@pytest.mark.parametrize("how,needle", [
    ("truncated", "the file ends early"), ("newer", "version 9 is newer than prepare reads"),
    ("missing", "nothere.png: photo of image 0 not found"), ("escape", "leads outside"),
    ("huge count", "does not fit in the file"), ("bad pose", "does not exist"), ("size", "the photo is 160x120 but")])
def test_damaged_archives_refused_in_one_line(tmp_path, how, needle):
    K = np.array([[150.0, 0, 80], [0, 150.0, 60], [0, 0, 1]])
    R, C = cv_pose(EYES[0])
    w = 320 if how == "size" else W
    name = {"missing": "nothere.png", "escape": "../IMG_0.png"}.get(how, "IMG_0.png")
    data = archive(5, [([(w, H, K, np.eye(3), np.zeros(3))], [(R, C)])], [(name, 0, 0, 3 if how == "bad pose" else 0)])
    if how == "truncated":
        data = data[:-60]               # inside the image's ids
    elif how == "newer":
        data = data[:4] + struct.pack("<I", 9) + data[8:]
    elif how == "huge count":
        data = data[:12] + struct.pack("<Q", 10**12) + data[20:]
    src = tmp_path / "mvs"
    noise_photo(src / "IMG_0.png", W, H)
    (src / "scene.mvs").write_bytes(data)
    plane_mesh(src / "mesh.ply")
    with pytest.raises(InputError):
        convert(src, tmp_path / "scene")
    expect_error(run_main("prepare", str(src), "--out", str(tmp_path / "scene"), "--no-check"), needle)
