"""Meshroom / AliceVision SfMData (cameras.sfm, sfm.json) -> MVSNet scene. Known 3-D points land on
the pixels AliceVision's own projection gives (its pose, its intrinsics of each file version, its
integer pixel centres), distorted photos are undistorted, and malformed files are refused in one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.errors import InputError
from backend.meshio import write_obj
from backend.prepare import convert
from backend.prepare.sources import detect_source
from conftest import expect_error
from format_helpers import EYES, cloud, gl_camera_to_world, noise_photo, projection_error
from fuzzing import run_main
from helpers import grid_plane
from undistort_helpers import H, W, dot_errors, dots_photo


def av_pose(eye) -> tuple[np.ndarray, np.ndarray]:
    """AliceVision's pose of a camera at `eye` looking at the origin: R (world to camera, x right,
    y down, z forward) and the centre C, x_cam = R (X - C)."""
    c2w = gl_camera_to_world(eye)
    return (c2w[:3, :3] @ np.diag([1.0, -1, -1])).T, c2w[:3, 3]


def av_distort(x, y, kind, d):
    """AliceVision's radial1/radial3/brown distortion of normalised coordinates."""
    r2 = x * x + y * y
    k = list(d[:3]) + [0.0] * (3 - len(d[:3]))
    radial = 1 + k[0] * r2 + k[1] * r2**2 + k[2] * r2**3
    xd, yd = x * radial, y * radial
    if kind == "brown":
        t1, t2 = d[3], d[4]
        xd, yd = xd + t2 * (r2 + 2 * x * x) + 2 * t1 * x * y, yd + t1 * (r2 + 2 * y * y) + 2 * t2 * x * y
    return xd, yd


def av_project(X, R, C, fx, fy, off, w, h, kind="pinhole", d=()):
    """AliceVision's cam2ima(distort(R (X - C))), in its coordinates (pixel centres at integers),
    moved to ours (centres at +0.5)."""
    P = (X - C) @ R.T
    xd, yd = av_distort(P[:, 0] / P[:, 2], P[:, 1] / P[:, 2], kind, d)
    return np.stack([fx * xd + w / 2 + off[0] + 0.5, fy * yd + h / 2 + off[1] + 0.5], 1)


def intrinsic_entry(version, iid, w, h, fx, fy, off, kind="pinhole", d=()) -> dict:
    """The intrinsic as AliceVision of `version` writes it (numbers as strings, as boost does)."""
    s = lambda v: repr(float(v))      # noqa: E731
    it = {"intrinsicId": str(iid), "width": str(w), "height": str(h), "type": kind, "serialNumber": "x",
          "distortionParams": [s(v) for v in d] if d else ""}
    pp = [s(off[0]), s(off[1])] if version >= (1, 2, 1) else [s(off[0] + w / 2), s(off[1] + h / 2)]
    it["principalPoint"] = pp
    if version < (1, 2, 0):
        assert fx == fy
        it["pxFocalLength"] = s(fx)
    elif version < (1, 2, 2):
        it["pxFocalLength"] = [s(fx), s(fy)]
    else:
        sw = 23.5
        it.update(sensorWidth=s(sw), sensorHeight="15.6", focalLength=s(fx * sw / w))
        it["pixelRatio"] = s(fx / fy) if version < (1, 2, 5) else s(fy / fx)
    return it


def sfm_file(root: Path, version, cams: list, photos=None, name="cameras.sfm", photo_dir=".",
             unposed: int = 0, here: bool = False) -> Path:
    """cams: (R, C, w, h, fx, fy, off, kind, d) per view; photos in root/photo_dir, paths in the
    file absolute on another machine (here: on this one); `unposed` more views without a pose; a
    mesh beside the file."""
    views, intr, poses = [], [], []
    (root / photo_dir).mkdir(parents=True, exist_ok=True)
    for i, (R, C, w, h, fx, fy, off, kind, d) in enumerate(cams + [cams[0]] * unposed):
        if photos is not None and i < len(cams):
            Image.fromarray(photos[i]).save(root / photo_dir / f"IMG_{i}.png")
        else:
            noise_photo(root / photo_dir / f"IMG_{i}.png", w, h, i)
        views.append({"viewId": str(100 + i), "poseId": str(100 + i), "intrinsicId": str(7 + i),
                      "path": str((root / photo_dir).resolve() / f"IMG_{i}.png") if here
                      else f"C:/Users/someone/capture/IMG_{i}.png", "width": str(w), "height": str(h),
                      "metadata": {"Make": "Test"}})
        intr.append(intrinsic_entry(version, 7 + i, w, h, fx, fy, off, kind, d))
        if i < len(cams):   # Eigen stores R column by column
            poses.append({"poseId": str(100 + i), "pose": {"transform": {
                "rotation": [repr(v) for v in R.ravel(order="F")], "center": [repr(v) for v in C]}, "locked": "0"}})
    data = {"version": [str(v) for v in version], "views": views, "intrinsics": intr, "poses": poses}
    (root / name).write_text(json.dumps(data, indent=4))
    write_obj(root / "texturedMesh.obj", grid_plane(4, 1.0))      # Meshroom's Texturing output
    return root


VERSIONS = [(1, 0, 0), (1, 2, 0), (1, 2, 3), (1, 2, 8)]


@pytest.mark.parametrize("version", VERSIONS)
def test_points_land_where_alicevision_projects_them(tmp_path, version):
    X = cloud()
    same = version < (1, 2, 0)        # one focal length before 1.2.0
    cams = [(*av_pose(EYES[0]), W, H, 150.5, 150.5 if same else 163.25, (3.2, -2.7), "pinhole", ()),
            (*av_pose(EYES[1]), 100, 140, 121.0, 121.0 if same else 117.5, (-1.5, 4.25), "radial3", (0.0, 0.0, 0.0))]
    src = sfm_file(tmp_path / "mr", version, cams, unposed=1)
    assert detect_source(src) == "meshroom" and detect_source(src / "cameras.sfm") == "meshroom"
    s = convert(src, tmp_path / "scene")          # photos found by name beside the .sfm
    assert s["views"] == 2 and s["source"]["kind"] == "meshroom"
    assert any("1 view(s) of cameras.sfm have no pose" in n for n in s["notes"])
    for i, (R, C, w, h, fx, fy, off, _, _) in enumerate(cams):
        uv = av_project(X, R, C, fx, fy, off, w, h)
        assert projection_error(tmp_path / "scene", f"IMG_{i}", X, uv) < 1e-3
        # the rotation read row by row, or AliceVision's pixel centres taken as ours, land elsewhere
        assert np.abs(av_project(X, R.T, C, fx, fy, off, w, h) - uv).max() > 5
        assert projection_error(tmp_path / "scene", f"IMG_{i}", X, uv - 0.5) > 0.4


def test_sfm_json_with_photos_elsewhere(tmp_path):
    X = cloud()
    cams = [(*av_pose(EYES[2]), W, H, 140.0, 141.5, (0.0, 0.0), "radial1", (0.0,))]
    src = sfm_file(tmp_path / "mr", (1, 2, 6), cams, name="sfm.json", photo_dir="elsewhere")
    assert detect_source(src / "sfm.json") == "meshroom"
    assert detect_source(src) == "meshroom"
    s = convert(src / "sfm.json", tmp_path / "scene", images=str(src / "elsewhere"))
    assert s["views"] == 1
    R, C, w, h, fx, fy, off, _, _ = cams[0]
    assert projection_error(tmp_path / "scene", "IMG_0", X, av_project(X, R, C, fx, fy, off, w, h)) < 1e-3


def test_photos_found_where_the_file_says_on_this_machine(tmp_path):
    cams = [(*av_pose(EYES[0]), W, H, 150.0, 150.0, (0.0, 0.0), "pinhole", ())] * 2
    src = sfm_file(tmp_path / "mr", (1, 2, 8), cams, photo_dir="run/images", here=True)
    (src / "run" / "images" / "IMG_1.png").rename(src / "run" / "IMG_1.png")     # not in the first photo's folder
    expect_error(run_main("prepare", str(src), "--out", str(tmp_path / "scene"), "--no-check"),
                 "images/IMG_1.png: photo of view 101 not found; pass --images DIR")
    (src / "run" / "IMG_1.png").rename(src / "run" / "images" / "IMG_1.png")
    assert convert(src, tmp_path / "scene")["views"] == 2


@pytest.mark.parametrize("kind,d", [("radial3", (-0.15, 0.04, -0.006)), ("brown", (-0.12, 0.03, 0.0, 0.002, -0.0015))])
def test_distortion_is_undistorted(tmp_path, kind, d):
    R, C = av_pose((0.5, -2.4, 1.5))
    fx, fy, off = 150.0, 152.0, (2.5, -1.75)
    gx, gy = np.meshgrid(np.linspace(-0.5, 0.5, 10), np.linspace(-0.36, 0.36, 10))
    z = np.random.default_rng(0).uniform(2, 4, gx.size)
    X = np.stack([gx.ravel() * z, gy.ravel() * z, z], 1) @ R + C
    uv = av_project(X, R, C, fx, fy, off, W, H, kind, d)
    keep = (uv[:, 0] > 8) & (uv[:, 0] < W - 8) & (uv[:, 1] > 8) & (uv[:, 1] < H - 8)
    X, uv = X[keep], uv[keep]
    src = sfm_file(tmp_path / "mr", (1, 2, 8), [(R, C, W, H, fx, fy, off, kind, d)], photos=[dots_photo(uv)])
    s = convert(src, tmp_path / "scene")
    names = ("k1", "k2", "k3", "t1", "t2")
    assert s["undistortion"]["models"] == [f"AliceVision {kind} ({', '.join(n for n, v in zip(names, d) if v)})"]
    err, ok = dot_errors(tmp_path / "scene", "IMG_0", X)
    assert ok.sum() >= 0.8 * len(X) and len(X) >= 40 and err.max() < 0.05, err.max()


# --- refusals ----------------------------------------------------------------------------------

I3 = ["1", "0", "0", "0", "1", "0", "0", "0", "1"]
GONE = object()


@pytest.mark.parametrize("where,key,value,needle", [
    ("intrinsics", "type", "fisheye4", "camera type 'fisheye4' is not converted"),
    (None, "version", GONE, "no \"version\""),
    ("poses", "pose", {"transform": {"rotation": I3[:4] + ["2"] + I3[5:], "center": ["0", "0", "5"]}},
     "is not a rotation matrix"),
    ("poses", "pose", {"transform": {"rotation": I3, "center": ["0", "1"]}}, "center must hold 3 numbers"),
    ("intrinsics", "focalLength", "long", "'focalLength' is not a number"),
    ("intrinsics", "width", "320", "the photo is 160x120 but its camera"),
    ("views", "path", "/capture/nothere.png", "nothere.png: photo of view 100 not found"),
    ("views", "rigId", "0", "belongs to a camera rig"),
    ("intrinsics", "distortionParams", ["0.1"], "'distortionParams' of a radial3 camera must hold 3 numbers"),
    (None, "poses", [], "no view has a pose"),
    (None, "latin-1", None, "not UTF-8")])
def test_malformed_sfm_refused_in_one_line(tmp_path, where, key, value, needle):
    cam = (*av_pose(EYES[0]), W, H, 150.0, 150.0, (0, 0), "radial3", (0.0, 0.0, 0.0))
    f = sfm_file(tmp_path / "mr", (1, 2, 8), [cam]) / "cameras.sfm"
    data = json.loads(f.read_text())
    target = data if where is None else data[where][0]
    if key == "latin-1":
        target["views"][0]["metadata"]["Make"] = "Caf\u00e9"
    elif value is GONE:
        del target[key]
    else:
        target[key] = value
    f.write_bytes(json.dumps(data, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(InputError):
        convert(f.parent, tmp_path / "scene")
    expect_error(run_main("prepare", str(f.parent), "--out", str(tmp_path / "scene"), "--no-check"), needle)
