"""RealityScan / RealityCapture exports -> MVSNet scene: Bundler .out + image list and XMP camera
files. Known 3-D points land on the pixels each format's own published projection gives (Bundler's
manual; RealityCapture's XMP camera math), and malformed exports are refused in one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.errors import InputError
from backend.prepare import convert
from backend.prepare.sources import detect_source
from conftest import expect_error
from format_helpers import EYES, cloud, gl_camera_to_world, noise_photo, plane_mesh, projection_error
from fuzzing import run_main
from undistort_helpers import H, W, dot_errors, dots_photo

# --- Bundler ---------------------------------------------------------------------------------


def bundler_pose(eye) -> tuple[np.ndarray, np.ndarray]:
    """Bundler's R, t (P = R X + t in a camera looking down -z, y up) of a camera at `eye`."""
    c2w = gl_camera_to_world(eye)
    R = c2w[:3, :3].T
    return R, -R @ c2w[:3, 3]


def bundler_project(X, f, k1, k2, R, t, w, h):
    """Bundler's manual: P = R X + t, p = -P / P.z, p' = f r(p) p, origin at the image centre, y up."""
    P = X @ R.T + t
    p = -P[:, :2] / P[:, 2:3]
    n2 = (p**2).sum(1, keepdims=True)
    q = f * (1 + k1 * n2 + k2 * n2**2) * p
    return np.stack([w / 2 + q[:, 0], h / 2 - q[:, 1]], 1)


def bundler_export(root: Path, cams: list, sizes, list_lines=None, photos=None) -> Path:
    """cams: (f, k1, k2, R, t) per camera; photos photos/IMG_i.png; bundle.out, bundle.lst, a mesh."""
    rows = ["# Bundle file v0.3", f"{len(cams)} 2"]
    for f, k1, k2, R, t in cams:
        rows += [f"{f!r} {k1!r} {k2!r}", *(" ".join(map(repr, r)) for r in R), " ".join(map(repr, t))]
    rows += ["0.1 0.2 0.3", "255 0 0", "0", "0 0 0", "0 255 0", "0"]      # two points, no views
    (root / "photos").mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
        if photos is not None:
            Image.fromarray(photos[i]).save(root / "photos" / f"IMG_{i}.png")
        else:
            noise_photo(root / "photos" / f"IMG_{i}.png", w, h, i)
    (root / "bundle.out").write_text("\n".join(rows) + "\n")
    lines = list_lines or [f"photos/IMG_{i}.png" for i in range(len(cams))]
    (root / "bundle.lst").write_text("\n".join(lines) + "\n")
    plane_mesh(root / "model.ply")
    return root


def test_bundler_points_land_where_bundler_projects_them(tmp_path):
    X = cloud()
    sizes = [(W, H), (140, 100), (W, H)]
    cams = [(150.5, 0.0, 0.0, *bundler_pose(EYES[0])), (132.25, 0.0, 0.0, *bundler_pose(EYES[1])),
            (0.0, 0.0, 0.0, np.zeros((3, 3)), np.zeros(3))]          # the last one is not registered
    src = bundler_export(tmp_path / "rs", cams, sizes,
                         ["photos/IMG_0.png", "photos/IMG_1.png 0 1234.5", "C:\\capture\\IMG_2.png"])
    assert detect_source(src) == "realityscan" and detect_source(src / "bundle.out") == "realityscan"
    s = convert(src, tmp_path / "scene", images=str(src / "photos"))
    assert s["views"] == 2 and s["source"]["format"] == "bundler"
    assert any("1 camera(s) of bundle.out are not registered" in n for n in s["notes"])
    for i in (0, 1):
        f, k1, k2, R, t = cams[i]
        uv = bundler_project(X, f, k1, k2, R, t, *sizes[i])
        assert projection_error(tmp_path / "scene", f"IMG_{i}", X, uv) < 1e-3
        # a transposed rotation, or Bundler's axes taken as OpenCV's, would land elsewhere
        assert np.abs(bundler_project(X, f, k1, k2, R.T, t, *sizes[i]) - uv).max() > 5
        assert np.abs(bundler_project(X, f, k1, k2, np.diag([1, -1, -1]) @ R, t, *sizes[i]) - uv).max() > 5


def grid_points(R: np.ndarray, t: np.ndarray, n: int = 10) -> np.ndarray:
    """World points on a grid of rays over the view at depths 2-4 in front of camera (R, t), with
    R, t mapping world to a camera that looks down -z."""
    gx, gy = np.meshgrid(np.linspace(-0.5, 0.5, n), np.linspace(-0.36, 0.36, n))
    z = np.random.default_rng(0).uniform(2, 4, gx.size)
    P = np.stack([gx.ravel() * z, -gy.ravel() * z, -z], 1)
    return (P - t) @ R


def test_bundler_radial_distortion_is_undistorted(tmp_path):
    R, t = bundler_pose((0.5, -2.4, 1.5))
    f, k1, k2 = 150.0, -0.18, 0.05
    X = grid_points(R, t)
    uv = bundler_project(X, f, k1, k2, R, t, W, H)
    keep = (uv[:, 0] > 8) & (uv[:, 0] < W - 8) & (uv[:, 1] > 8) & (uv[:, 1] < H - 8)
    X, uv = X[keep], uv[keep]
    src = bundler_export(tmp_path / "rs", [(f, k1, k2, R, t)], [(W, H)], photos=[dots_photo(uv)])
    s = convert(src, tmp_path / "scene")
    assert s["undistortion"]["models"] == ["Bundler (k1, k2)"]
    err, ok = dot_errors(tmp_path / "scene", "IMG_0", X)
    assert ok.sum() >= 0.8 * len(X) and len(X) >= 40 and err.max() < 0.05, err.max()


# --- XMP -------------------------------------------------------------------------------------

XMP = """<x:xmpmeta xmlns:x="adobe:ns:meta/">
  <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
    <rdf:Description xmlns:xcr="http://www.capturingreality.com/ns/xcr/1.1#" xcr:Version="3"
       xcr:PosePrior="locked" xcr:Coordinates="absolute" xcr:DistortionModel="{model}"
       xcr:FocalLength35mm="{f35!r}" xcr:Skew="0" xcr:AspectRatio="1" xcr:PrincipalPointU="{ppu!r}"
       xcr:PrincipalPointV="{ppv!r}" xcr:CalibrationPrior="initial" xcr:InTexturing="1" xcr:InMeshing="1">
      <xcr:Rotation>{rot}</xcr:Rotation>
      <xcr:Position>{pos}</xcr:Position>
      <xcr:DistortionCoeficients>{dist}</xcr:DistortionCoeficients>
    </rdf:Description>
  </rdf:RDF>
</x:xmpmeta>
"""


def cv_rotation(eye) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera rotation (OpenCV axes) and centre of a camera at `eye` looking at the origin."""
    c2w = gl_camera_to_world(eye)
    return (c2w[:3, :3] @ np.diag([1.0, -1, -1])).T, c2w[:3, 3]


def xmp_project(X, R, C, f35, ppu, ppv, dist, w, h):
    """RealityCapture's XMP camera math: x = [R t] X with t = -R C, radial distortion of x/z, y/z,
    then focal f35/36 and principal point in units of the larger image side, from the centre."""
    P = (X - C) @ R.T
    u, v = P[:, 0] / P[:, 2], P[:, 1] / P[:, 2]
    r2 = u * u + v * v
    k1, k2, k3, k4 = dist[:4]
    d = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3 + k4 * r2**4
    s = max(w, h)
    return np.stack([(f35 / 36 * u * d + ppu) * s + w / 2, (f35 / 36 * v * d + ppv) * s + h / 2], 1)


def xmp_export(root: Path, cams: list, photos=None, sizes=None) -> Path:
    """cams: (R, C, f35, ppu, ppv, dist, model) per photo IMG_i.png with IMG_i.xmp beside it."""
    root.mkdir(parents=True)
    for i, (R, C, f35, ppu, ppv, dist, model) in enumerate(cams):
        w, h = (sizes or [(W, H)] * len(cams))[i]
        if photos is not None:
            Image.fromarray(photos[i]).save(root / f"IMG_{i}.png")
        else:
            noise_photo(root / f"IMG_{i}.png", w, h, i)
        (root / f"IMG_{i}.xmp").write_text(XMP.format(
            model=model, f35=f35, ppu=ppu, ppv=ppv, rot=" ".join(map(repr, R.ravel())),
            pos=" ".join(map(repr, C)), dist=" ".join(map(repr, dist))))
    plane_mesh(root / "model.ply")
    return root


def test_xmp_points_land_where_realitycapture_projects_them(tmp_path):
    X = cloud()
    sizes = [(W, H), (100, 140)]          # landscape and portrait: the larger side sets the units
    cams = [(*cv_rotation(EYES[0]), 52.5, 0.013, -0.021, [0.0] * 6, "brown3"),
            (*cv_rotation(EYES[2]), 31.0, -0.008, 0.017, [0.0] * 6, "brown4")]
    src = xmp_export(tmp_path / "rs", cams, sizes=sizes)
    (src / "other.xmp").write_text('<x:xmpmeta xmlns:x="adobe:ns:meta/"/>')    # a photo editor's sidecar
    assert detect_source(src) == "realityscan"
    s = convert(src, tmp_path / "scene")
    assert s["views"] == 2 and s["source"]["format"] == "xmp"
    for i, (R, C, f35, ppu, ppv, dist, _) in enumerate(cams):
        uv = xmp_project(X, R, C, f35, ppu, ppv, dist, *sizes[i])
        assert projection_error(tmp_path / "scene", f"IMG_{i}", X, uv) < 1e-3
        assert np.abs(xmp_project(X, R.T, C, f35, ppu, ppv, dist, *sizes[i]) - uv).max() > 5


def test_xmp_radial_distortion_is_undistorted(tmp_path):
    R, C = cv_rotation((0.5, -2.4, 1.5))
    dist = [-0.12, 0.03, -0.004, 0.0005, 0.0, 0.0]
    f35, ppu, ppv = 34.0, 0.011, -0.007
    gx, gy = np.meshgrid(np.linspace(-0.5, 0.5, 10), np.linspace(-0.36, 0.36, 10))
    z = np.random.default_rng(0).uniform(2, 4, gx.size)
    X = np.stack([gx.ravel() * z, gy.ravel() * z, z], 1) @ R + C
    uv = xmp_project(X, R, C, f35, ppu, ppv, dist, W, H)
    keep = (uv[:, 0] > 8) & (uv[:, 0] < W - 8) & (uv[:, 1] > 8) & (uv[:, 1] < H - 8)
    X, uv = X[keep], uv[keep]
    src = xmp_export(tmp_path / "rs", [(R, C, f35, ppu, ppv, dist, "brown4")], photos=[dots_photo(uv)])
    s = convert(src, tmp_path / "scene")
    assert s["undistortion"]["models"] == ["RealityScan brown4 (k1, k2, k3, k4)"]
    err, ok = dot_errors(tmp_path / "scene", "IMG_0", X)
    assert ok.sum() >= 0.8 * len(X) and len(X) >= 40 and err.max() < 0.05, err.max()


# --- refusals ----------------------------------------------------------------------------------

def _bundler(tmp_path, how):
    src = bundler_export(tmp_path / "rs", [(150.0, 0.0, 0.0, *bundler_pose(EYES[0]))], [(W, H)])
    out = src / "bundle.out"
    if how == "header":
        out.write_text(out.read_text().replace("# Bundle file v0.3", "bundle"))
    elif how == "truncated":
        out.write_text("\n".join(out.read_text().splitlines()[:4]))
    elif how == "word":
        out.write_text(out.read_text().replace("150.0", "f=150", 1))
    elif how == "escape":
        (src / "bundle.lst").write_text("../IMG_0.png\n")
    elif how == "count":
        (src / "bundle.lst").write_text("photos/IMG_0.png\nphotos/IMG_0.png\n")
    elif how == "latin-1":
        (src / "bundle.lst").write_bytes("photos/caf\u00e9.png\n".encode("latin-1"))
    elif how == "missing":
        (src / "bundle.lst").write_text("photos/nothere.png\n")
    return src


@pytest.mark.parametrize("how,needle", [
    ("header", "not a Bundler file"), ("truncated", "ends before its 1 cameras"), ("word", "is not a number"),
    ("escape", "leads outside"), ("count", "lists 2 photo(s) but bundle.out has 1"), ("latin-1", "not UTF-8"),
    ("missing", "nothere.png: photo of camera 0 not found")])
def test_malformed_bundler_refused_in_one_line(tmp_path, how, needle):
    src = _bundler(tmp_path, how)
    with pytest.raises(InputError):
        convert(src, tmp_path / "scene")
    expect_error(run_main("prepare", str(src), "--out", str(tmp_path / "scene"), "--no-check"), needle)


@pytest.mark.parametrize("edit,needle", [
    (lambda s: s.replace('xcr:FocalLength35mm="52.5"', 'xcr:FocalLength35mm="wide"'),
     "xcr:FocalLength35mm is not a number"),
    (lambda s: s.replace("0.0 0.0 0.0 0.0 0.0 0.01", "0.0 0.0"), "must hold 6 numbers"),
    (lambda s: s.replace("0.0 0.0 0.0 0.0 0.0 0.01", "0 0 0 0 0.001 0.01"), "tangential terms"),
    (lambda s: s.replace('xcr:AspectRatio="1"', 'xcr:AspectRatio="1.01"'), "aspect ratio"),
    (lambda s: s.replace("<xcr:Rotation>", "<xcr:Rotation>2 "), "must hold 9 numbers"),
    (lambda s: s.replace("</rdf:RDF>", ""), "not readable XML")])
def test_malformed_xmp_refused_in_one_line(tmp_path, edit, needle):
    R, C = cv_rotation(EYES[0])
    src = xmp_export(tmp_path / "rs", [(R, C, 52.5, 0.0, 0.0, [0.0] * 5 + [0.01], "brown3t2")])
    xmp = src / "IMG_0.xmp"
    xmp.write_text(edit(xmp.read_text()))
    expect_error(run_main("prepare", str(src), "--out", str(tmp_path / "scene"), "--no-check"), needle)
