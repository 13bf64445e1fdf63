"""nerfstudio transforms.json -> MVSNet scene: known 3-D points land on the pixels nerfstudio's own
camera convention gives (OpenGL camera axes, camera-to-world transform_matrix, continuous pixel
coordinates, its radial-tangential distortion), and malformed exports are refused in one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from backend.errors import InputError
from backend.meshio import Mesh, load_mesh, write_ply
from backend.prepare import convert
from backend.prepare.sources import detect_source
from conftest import expect_error
from format_helpers import EYES, cloud, gl_camera_to_world, noise_photo, plane_mesh, projection_error
from fuzzing import run_main
from undistort_helpers import H, W, dot_errors, dots_photo

INTR = {"fl_x": 150.5, "fl_y": 148.25, "cx": 83.75, "cy": 57.5, "w": W, "h": H}


def ns_project(X: np.ndarray, c2w: np.ndarray, c: dict) -> np.ndarray:
    """nerfstudio's camera: the ray of pixel (u, v) has direction ((u - cx)/fx, -(v - cy)/fy, -1) in
    the camera's OpenGL axes, distorted by k1..k4 (radial in r^2) and p1, p2 (docs, camera_utils)."""
    P = (np.linalg.inv(c2w) @ np.c_[X, np.ones(len(X))].T).T[:, :3]
    x, y = P[:, 0] / -P[:, 2], -P[:, 1] / -P[:, 2]
    k1, k2, k3, k4, p1, p2 = (c.get(n, 0.0) for n in ("k1", "k2", "k3", "k4", "p1", "p2"))
    r = x * x + y * y
    d = 1 + k1 * r + k2 * r**2 + k3 * r**3 + k4 * r**4
    xd = x * d + 2 * p1 * x * y + p2 * (r + 2 * x * x)
    yd = y * d + 2 * p2 * x * y + p1 * (r + 2 * y * y)
    return np.stack([c["fl_x"] * xd + c["cx"], c["fl_y"] * yd + c["cy"]], 1)


def grid_in_front(c2w: np.ndarray, n: int = 10) -> np.ndarray:
    """World points on a grid of rays spread over the view (apart enough to measure each dot),
    at random depths 2-4 in front of a camera with OpenGL axes."""
    gx, gy = np.meshgrid(np.linspace(-0.5, 0.5, n), np.linspace(-0.36, 0.36, n))
    z = np.random.default_rng(0).uniform(2, 4, gx.size)
    P = np.stack([gx.ravel() * z, -gy.ravel() * z, -z, np.ones(gx.size)], 1)
    return (c2w @ P.T).T[:, :3]


def export(root: Path, frames: list[dict], top: dict | None = None, photos=None) -> Path:
    """A nerfstudio dataset: images/frame_N.png, transforms.json, a mesh."""
    for i, f in enumerate(frames):
        img = root / f["file_path"]
        if photos is not None:
            img.parent.mkdir(parents=True, exist_ok=True)
            from PIL import Image
            Image.fromarray(photos[i]).save(img)
        elif not img.exists():
            noise_photo(img, int(f.get("w", (top or INTR)["w"])), int(f.get("h", (top or INTR)["h"])), i)
    (root / "transforms.json").write_text(json.dumps({**(top if top is not None else INTR), "frames": frames}))
    plane_mesh(root / "mesh.ply")
    return root


def frame(i: int, c2w: np.ndarray, **extra) -> dict:
    return {"file_path": f"images/frame_{i:05d}.png", "transform_matrix": c2w.tolist(), **extra}


def test_points_land_where_nerfstudio_projects_them(tmp_path):
    X = cloud()
    poses = [gl_camera_to_world(e) for e in EYES]
    # global intrinsics, and one frame with its own (the frame's win)
    own = {"fl_x": 120.0, "fl_y": 121.5, "cx": 70.25, "cy": 44.5, "w": 140, "h": 90}
    frames = [frame(0, poses[0]), frame(1, poses[1], **own), frame(2, poses[2])]
    src = export(tmp_path / "ns", frames, {**INTR, "camera_model": "PINHOLE"})
    assert detect_source(src) == "nerfstudio" and detect_source(src / "transforms.json") == "nerfstudio"
    s = convert(src, tmp_path / "scene")
    assert s["views"] == 3 and s["source"]["kind"] == "nerfstudio" and s["undistortion"] is None
    for i, c2w in enumerate(poses):
        c = {**INTR, **own} if i == 1 else INTR
        uv = ns_project(X, c2w, c)
        assert projection_error(tmp_path / "scene", f"frame_{i:05d}", X, uv) < 1e-3
        # the test can fail: OpenCV axes taken as they are, or a transposed rotation, land far away
        wrong_axes = c2w @ np.diag([1.0, -1, -1, 1])
        transposed = c2w.copy()
        transposed[:3, :3] = c2w[:3, :3].T
        for bad in (wrong_axes, transposed):
            ok = (np.linalg.inv(bad) @ np.c_[X, np.ones(len(X))].T)[2] < 0
            assert not ok.all() or np.abs(ns_project(X, bad, c) - uv).max() > 5


def test_distorted_photos_are_undistorted_onto_the_pinhole_camera(tmp_path):
    """An OPENCV frame with every nerfstudio term: dots drawn where nerfstudio's model puts the
    points sit where the prepared pinhole camera projects them."""
    dist = {"k1": -0.16, "k2": 0.04, "k3": -0.006, "k4": 0.001, "p1": 0.0021, "p2": -0.0016}
    c = {**INTR, **dist}
    c2w = gl_camera_to_world((0.5, -2.4, 1.5))
    X = grid_in_front(c2w)
    uv = ns_project(X, c2w, c)
    keep = (uv[:, 0] > 8) & (uv[:, 0] < W - 8) & (uv[:, 1] > 8) & (uv[:, 1] < H - 8)
    X, uv = X[keep], uv[keep]
    src = export(tmp_path / "ns", [frame(0, c2w)], {**c, "camera_model": "OPENCV"}, photos=[dots_photo(uv)])
    s = convert(src, tmp_path / "scene")
    assert s["undistortion"]["models"] == ["nerfstudio OPENCV (k1, k2, k3, k4, p1, p2)"]
    err, ok = dot_errors(tmp_path / "scene", "frame_00000", X)
    assert ok.sum() >= 0.8 * len(X) and len(X) >= 40
    assert err.max() < 0.05, err.max()
    # p1 and p2 swapped would put the dots elsewhere: the reference is sensitive to the order
    swapped = ns_project(X, c2w, {**c, "p1": dist["p2"], "p2": dist["p1"]})
    assert np.hypot(*(swapped - uv).T).max() > 0.1


def test_mesh_choice_and_applied_transform(tmp_path):
    c2w = gl_camera_to_world(EYES[0])
    src = export(tmp_path / "ns", [frame(0, c2w)])
    # nerfstudio's sparse_pc.ply is a point cloud: never the mesh
    write_ply(src / "sparse_pc.ply", Mesh(np.zeros((3, 3), np.float32), np.zeros((0, 3), np.int32)))
    meta = json.loads((src / "transforms.json").read_text())
    A = [[0.0, 1.0, 0.0, 0.5], [-1.0, 0.0, 0.0, 0.25], [0.0, 0.0, 1.0, -1.0]]
    meta.update(ply_file_path="sparse_pc.ply", applied_transform=A)
    (src / "transforms.json").write_text(json.dumps(meta))
    s = convert(src, tmp_path / "plain")
    assert Path(s["mesh"]).name == "mesh.ply" and s["source"]["mesh"] == str(src / "mesh.ply")
    s = convert(src, tmp_path / "moved", mesh_before_transform=True)
    v0 = load_mesh(src / "mesh.ply").vertices.astype(np.float64)
    v1 = load_mesh(s["mesh"]).vertices
    assert np.abs(v1 - (v0 @ np.array(A)[:, :3].T + np.array(A)[:, 3])).max() < 1e-6
    # a ply_file_path that is a mesh is the mesh
    (src / "mesh.ply").rename(src / "recon.ply")
    meta["ply_file_path"] = "recon.ply"
    (src / "transforms.json").write_text(json.dumps(meta))
    assert convert(src, tmp_path / "ply")["source"]["mesh"] == str(src / "recon.ply")


def _break(meta: dict, how: str) -> dict | bytes:
    f = meta["frames"][0]
    if how == "no focal":
        del meta["fl_x"]
    elif how == "matrix shape":
        f["transform_matrix"] = f["transform_matrix"][:2]
    elif how == "string number":
        meta["cx"] = "middle"
    elif how == "not a rotation":
        f["transform_matrix"][0][0] = 3.0
    elif how == "fisheye":
        meta["camera_model"] = "OPENCV_FISHEYE"
    elif how == "escape":
        f["file_path"] = "../outside.png"
    elif how == "missing photo":
        f["file_path"] = "images/nothere.png"
    elif how == "no frames":
        meta["frames"] = []
    elif how == "latin-1":
        return json.dumps(meta).replace("images/frame_00000.png", "images/caf\u00e9.png").encode("latin-1")
    return meta


@pytest.mark.parametrize("how,needle", [
    ("no focal", "no 'fl_x'"), ("matrix shape", "4x4"), ("string number", "'cx' is not a number"),
    ("not a rotation", "not a rotation"), ("fisheye", "OPENCV_FISHEYE"), ("escape", "leads outside"),
    ("missing photo", "nothere.png: photo of frame 0 not found"), ("no frames", "no 'frames' list"),
    ("latin-1", "not UTF-8")])
def test_malformed_exports_are_refused_in_one_line(tmp_path, how, needle):
    src = export(tmp_path / "ns", [frame(0, gl_camera_to_world(EYES[0]))])
    (tmp_path / "outside.png").write_bytes((src / "images" / "frame_00000.png").read_bytes())
    broken = _break(json.loads((src / "transforms.json").read_text()), how)
    path = src / "transforms.json"
    path.write_bytes(broken) if isinstance(broken, bytes) else path.write_text(json.dumps(broken))
    with pytest.raises(InputError, match="transforms.json|nothere"):
        convert(src, tmp_path / "scene")
    expect_error(run_main("prepare", str(src), "--out", str(tmp_path / "scene"), "--no-check"), needle)
