"""Undistortion in `prepare`: photos of distorted COLMAP / Metashape cameras become pinhole photos
whose written camera puts every point where the distorted source photo showed it.

References are independent of backend.prepare.lens: OpenCV's projectPoints / undistortPointsIter
for COLMAP's models (they are OpenCV's), a literal transcription of Agisoft's frame-camera
equations for Metashape. Photos are synthesised by projecting known points through the
distorted model; the prepared photos are then measured (dot centroids, line positions, patch
correlation against a pinhole rendering of the same scene with the prepared camera).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from backend import events
from backend.cameras import Camera, look_at, read_mvsnet_cam
from backend.errors import InputError
from backend.meshio import write_ply
from backend.prepare import NeedsBackend, check_scene, convert, convert_colmap, convert_metashape, \
    convert_mvsnet, format_report
from backend.prepare.lens import colmap_lens, metashape_lens, pinhole_canvas
from backend.scene import load_scene
from helpers import grid_plane, python_without

REPO = Path(__file__).resolve().parents[1]
W, H = 160, 120

# name -> (COLMAP params, OpenCV K, OpenCV distortion vector (k1, k2, p1, p2[, k3, k4, k5, k6]))
COLMAP_CASES = {
    "SIMPLE_RADIAL": ([130.0, 81.3, 58.6, -0.21], [130, 130, 81.3, 58.6], [-0.21, 0, 0, 0]),
    "RADIAL": ([128.0, 78.9, 61.2, -0.24, 0.06], [128, 128, 78.9, 61.2], [-0.24, 0.06, 0, 0]),
    "OPENCV": ([131.0, 127.5, 80.7, 59.1, -0.19, 0.04, 0.0021, -0.0034],
               [131, 127.5, 80.7, 59.1], [-0.19, 0.04, 0.0021, -0.0034]),
    "FULL_OPENCV": ([129.0, 132.0, 79.4, 60.8, -0.15, 0.03, -0.0015, 0.0025, 0.004, 0.06, 0.01, 0.002],
                    [129, 132, 79.4, 60.8], [-0.15, 0.03, -0.0015, 0.0025, 0.004, 0.06, 0.01, 0.002]),
}
# Metashape sensor: every frame-camera term non-zero.
MS = {"f": 130.0, "cx": 1.7, "cy": -2.3, "b1": 1.6, "b2": 0.9, "k1": -0.18, "k2": 0.05, "k3": -0.01,
      "k4": 0.003, "p1": 0.0023, "p2": -0.0017}


def opencv_K(fx, fy, cx, cy):
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def opencv_project(Xc: np.ndarray, K, dist) -> np.ndarray:
    """OpenCV's projection of camera-space points. COLMAP's models are OpenCV's formulas; K holds
    COLMAP's (continuous-convention) principal point, so the result is in that convention too."""
    uv, _ = cv2.projectPoints(Xc.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K, np.asarray(dist, float))
    return uv[:, 0]


def opencv_undistort(uv: np.ndarray, K, dist) -> np.ndarray:
    """Source pixels -> normalised undistorted coordinates, iterated to convergence."""
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-14)
    xy = cv2.undistortPointsIter(uv.reshape(-1, 1, 2).astype(np.float64), K, np.asarray(dist, float),
                                 None, None, crit)
    return xy[:, 0]


def agisoft_project(Xc: np.ndarray, w: int, h: int, c: dict) -> np.ndarray:
    """Agisoft Metashape frame camera, as its manual writes it (appendix "Camera models")."""
    x, y = Xc[:, 0] / Xc[:, 2], Xc[:, 1] / Xc[:, 2]
    r = np.sqrt(x * x + y * y)
    K1, K2, K3, K4, P1, P2 = (c.get(n, 0.0) for n in ("k1", "k2", "k3", "k4", "p1", "p2"))
    xp = x * (1 + K1 * r**2 + K2 * r**4 + K3 * r**6 + K4 * r**8) + (P1 * (r**2 + 2 * x**2) + 2 * P2 * x * y)
    yp = y * (1 + K1 * r**2 + K2 * r**4 + K3 * r**6 + K4 * r**8) + (P2 * (r**2 + 2 * y**2) + 2 * P1 * x * y)
    u = w * 0.5 + c["cx"] + xp * c["f"] + xp * c.get("b1", 0.0) + yp * c.get("b2", 0.0)
    v = h * 0.5 + c["cy"] + yp * c["f"]
    return np.stack([u, v], 1)


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    w = np.sqrt(max(0.0, 1.0 + R[0, 0] + R[1, 1] + R[2, 2])) / 2
    x = np.copysign(np.sqrt(max(0.0, 1.0 + R[0, 0] - R[1, 1] - R[2, 2])) / 2, R[2, 1] - R[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1.0 - R[0, 0] + R[1, 1] - R[2, 2])) / 2, R[0, 2] - R[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1.0 - R[0, 0] - R[1, 1] + R[2, 2])) / 2, R[1, 0] - R[0, 1])
    q = np.array([w, x, y, z])
    return q / np.linalg.norm(q)


def colmap_workspace(root: Path, camera_line: str, images: dict[str, tuple[np.ndarray, np.ndarray]],
                     mesh=None) -> Path:
    """COLMAP workspace: images/NAME.png, sparse/0/{cameras,images}.txt (one camera), a mesh.
    images: name -> (photo uint8, world_to_camera)."""
    (root / "images").mkdir(parents=True)
    (root / "sparse" / "0").mkdir(parents=True)
    (root / "sparse" / "0" / "cameras.txt").write_text(f"1 {camera_line}\n")
    lines = []
    for i, (name, (img, E)) in enumerate(sorted(images.items()), 1):
        Image.fromarray(img).save(root / "images" / name)
        q = rotmat_to_qvec(E[:3, :3])
        lines.append(f"{i} {' '.join(repr(float(v)) for v in q)} {' '.join(repr(float(v)) for v in E[:3, 3])} "
                     f"1 {name}\n")
    (root / "sparse" / "0" / "images.txt").write_text("\n".join(lines) + "\n")
    write_ply(root / "meshed-poisson.ply", mesh if mesh is not None else grid_plane(4, 3.0))
    return root


def dots_photo(uv: np.ndarray, w: int = W, h: int = H, sigma: float = 1.0) -> np.ndarray:
    """Dark Gaussian dots centred at continuous pixel positions uv on a light background."""
    jj, ii = np.mgrid[0:h, 0:w] + 0.5
    img = np.full((h, w), 0.9)
    for u, v in uv:
        img -= 0.7 * np.exp(-((ii - u) ** 2 + (jj - v) ** 2) / (2 * sigma**2))
    g = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, -1)


def centroid(img: np.ndarray, uv: np.ndarray, valid: np.ndarray | None = None, r: int = 7,
             bg: float | None = 0.9) -> np.ndarray:
    """Darkness-weighted centroids (continuous coords) of dots near the positions uv; NaN where
    the window leaves the image or touches an invalid pixel. bg=None fits the background as a
    plane through the window's border. Darkness within 4/255 of the background does not count:
    8-bit rounding there would add ~0.02 px of noise per dot."""
    g = img.astype(np.float64).mean(-1) / 255 if img.ndim == 3 else img.astype(np.float64) / 255
    out = np.full((len(uv), 2), np.nan)
    for n, (u, v) in enumerate(uv):
        i0, j0 = int(np.floor(u)) - r, int(np.floor(v)) - r
        if i0 < 0 or j0 < 0 or i0 + 2 * r + 1 > g.shape[1] or j0 + 2 * r + 1 > g.shape[0]:
            continue
        win = g[j0:j0 + 2 * r + 1, i0:i0 + 2 * r + 1]
        if valid is not None and not valid[j0:j0 + 2 * r + 1, i0:i0 + 2 * r + 1].all():
            continue
        jj, ii = np.mgrid[j0:j0 + 2 * r + 1, i0:i0 + 2 * r + 1] + 0.5
        if bg is None:
            border = np.ones_like(win, bool)
            border[1:-1, 1:-1] = False
            A = np.stack([ii[border], jj[border], np.ones(border.sum())], 1)
            coef = np.linalg.lstsq(A, win[border], rcond=None)[0]
            base = coef[0] * ii + coef[1] * jj + coef[2]
        else:
            base = bg
        wgt = np.clip(base - win - 4 / 255, 0, None)       # 8-bit noise of the background left out
        out[n] = [(wgt * ii).sum() / wgt.sum(), (wgt * jj).sum() / wgt.sum()]
    return out


def read_outputs(scene: Path, name: str, level: int = 1):
    E, K, _ = read_mvsnet_cam(scene / f"cams_{level}" / f"{name}_cam.txt")
    img = np.asarray(Image.open(scene / f"images_{level}" / f"{name}.png"))
    valid = np.asarray(Image.open(scene / f"masks_{level}" / f"{name}.png")) == 255
    return Camera(img.shape[1], img.shape[0], K, E), img, valid


def points_in_view(E: np.ndarray, project, w: int = W, h: int = H, margin: float = 8.0, n: int = 10,
                   depth=(2.0, 4.0), seed: int = 0):
    """World points whose distorted projection lands on a grid over the photo (margin px from
    its border), at random depths; returns world points and their distorted pixel positions."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.linspace(-0.75, 0.75, n), np.linspace(-0.6, 0.6, n))
    z = rng.uniform(*depth, gx.size)
    Xc = np.stack([gx.ravel() * z, gy.ravel() * z, z], 1)
    uv = project(Xc)
    keep = (uv[:, 0] > margin) & (uv[:, 0] < w - margin) & (uv[:, 1] > margin) & (uv[:, 1] < h - margin)
    Xc, uv = Xc[keep], uv[keep]
    Ec = np.linalg.inv(E)
    return Xc @ Ec[:3, :3].T + Ec[:3, 3], uv


POSE = look_at((0.3, -0.2, -3.0), (0.1, 0.05, 0.0), up=(0, -1, 0))


# --- the lens models against independent references -----------------------------------------

@pytest.mark.parametrize("model", list(COLMAP_CASES))
def test_colmap_models_are_opencvs(model):
    """Each COLMAP model projects like OpenCV with the same parameters, and inverts exactly."""
    params, k, dist = COLMAP_CASES[model]
    lens = colmap_lens(model, params, W, H)
    rng = np.random.default_rng(1)
    Xc = np.c_[rng.uniform(-0.6, 0.6, (500, 2)), np.ones(500)] * rng.uniform(1, 5, (500, 1))
    u, v = lens.project(Xc[:, 0] / Xc[:, 2], Xc[:, 1] / Xc[:, 2])
    ref = opencv_project(Xc, opencv_K(*k), dist)
    assert np.abs(np.stack([u, v], 1) - ref).max() < 1e-9
    x, y, ok = lens.undistort(*lens.from_pixels(u, v))
    assert ok.all() and np.abs(np.stack([x, y], 1) - Xc[:, :2] / Xc[:, 2:]).max() < 1e-12
    xy = opencv_undistort(ref, opencv_K(*k), dist)
    assert np.abs(np.stack([x, y], 1) - xy).max() < 1e-9


def test_metashape_model_is_agisofts_and_swaps_p1_p2():
    sensor = metashape_lens(W, H, MS["f"] + MS["b1"], MS["f"], W / 2 + MS["cx"], H / 2 + MS["cy"], MS)
    rng = np.random.default_rng(2)
    Xc = np.c_[rng.uniform(-0.6, 0.6, (500, 2)), np.ones(500)] * rng.uniform(1, 5, (500, 1))
    u, v = sensor.project(Xc[:, 0] / Xc[:, 2], Xc[:, 1] / Xc[:, 2])
    assert np.abs(np.stack([u, v], 1) - agisoft_project(Xc, W, H, MS)).max() < 1e-9
    x, y, ok = sensor.undistort(*sensor.from_pixels(u, v))
    assert ok.all() and np.abs(np.stack([x, y], 1) - Xc[:, :2] / Xc[:, 2:]).max() < 1e-12
    # Metashape's p1 is OpenCV's p2 (and p2 is p1).
    only_p1 = metashape_lens(W, H, 130, 130, 80, 60, {"p1": 0.01})
    u, v = only_p1.project(Xc[:, 0] / Xc[:, 2], Xc[:, 1] / Xc[:, 2])
    ref = opencv_project(Xc, opencv_K(130, 130, 80, 60), [0, 0, 0, 0.01])
    assert np.abs(np.stack([u, v], 1) - ref).max() < 1e-9
    assert sensor.terms == ["b2", "k1", "k2", "k3", "k4", "p1", "p2"]


def test_canvas_keeps_focal_length_and_every_source_pixel():
    """The canvas holds the undistorted image of the whole source photo (barrel: it grows,
    pincushion: it shrinks), focal lengths unchanged, principal point moved by whole pixels."""
    for k1, grows in ((-0.2, True), (0.15, False)):
        lens = colmap_lens("OPENCV", [131.0, 127.5, 80.7, 59.1, k1, 0.0, 0.001, 0.0], W, H)
        c = pinhole_canvas(lens)
        assert (c.width > W and c.height > H) == grows and (c.width < W) == (not grows)
        assert c.K[0, 0] == 131.0 and c.K[1, 1] == 127.5
        assert c.K[0, 2] - 80.7 == -c.ox and float(c.ox).is_integer()
        # every source pixel centre's undistorted position lies on the canvas
        jj, ii = np.mgrid[0:H, 0:W] + 0.5
        xy = opencv_undistort(np.stack([ii.ravel(), jj.ravel()], 1), opencv_K(131, 127.5, 80.7, 59.1),
                              [k1, 0, 0.001, 0])
        pu, pv = 131.0 * xy[:, 0] + c.K[0, 2], 127.5 * xy[:, 1] + c.K[1, 2]
        assert pu.min() >= 0 and pv.min() >= 0 and pu.max() <= c.width and pv.max() <= c.height
        # ... and the canvas is no bigger than the photo's undistorted outline (whole-pixel rounding)
        t = np.linspace(0, 1, 400)
        outline = np.concatenate([np.c_[t * W, 0 * t], np.c_[t * W, 0 * t + H], np.c_[0 * t, t * H],
                                  np.c_[0 * t + W, t * H]])
        xy = opencv_undistort(outline, opencv_K(131, 127.5, 80.7, 59.1), [k1, 0, 0.001, 0])
        pu, pv = 131.0 * xy[:, 0] + c.K[0, 2], 127.5 * xy[:, 1] + c.K[1, 2]
        assert -1e-6 <= pu.min() < 1 and -1e-6 <= pv.min() < 1
        assert c.width - 1 < pu.max() <= c.width + 1e-6 and c.height - 1 < pv.max() <= c.height + 1e-6
    assert pinhole_canvas(lens, 4).width % 4 == 0 and pinhole_canvas(lens, 4).height % 4 == 0


# --- acceptance: projected points land where the pinhole camera puts them ----------------------

def _dot_errors(scene: Path, name: str, X: np.ndarray):
    cam, img, valid = read_outputs(scene, name)
    q, _ = cam.project(X)
    c = centroid(img, q, valid)
    ok = ~np.isnan(c[:, 0])
    return np.hypot(*(c[ok] - q[ok]).T), ok


@pytest.mark.parametrize("model", list(COLMAP_CASES))
def test_colmap_points_land_on_the_pinhole_projection(tmp_path, model):
    params, k, dist = COLMAP_CASES[model]
    X, uv = points_in_view(POSE, lambda Xc: opencv_project(Xc, opencv_K(*k), dist))
    src = colmap_workspace(tmp_path / "ws", f"{model} {W} {H} " + " ".join(map(repr, params)),
                           {"a.png": (dots_photo(uv), POSE)})
    convert_colmap(src, tmp_path / "scene")
    err, ok = _dot_errors(tmp_path / "scene", "a", X)
    assert ok.sum() >= 0.8 * len(X) and len(X) >= 40
    # the distortion is large: without undistortion the dots would be pixels away
    cam0 = Camera(W, H, opencv_K(*k), POSE)
    assert np.hypot(*(cam0.project(X)[0] - uv).T).max() > 5
    assert err.max() < 0.05, (model, err.max())


def metashape_export(root: Path, photo: np.ndarray, E: np.ndarray, calib: dict, sensor_type="frame") -> Path:
    (root / "images").mkdir(parents=True)
    Image.fromarray(photo).save(root / "images" / "IMG_1.png")
    c2w = np.linalg.inv(E)
    tags = "".join(f"<{n}>{v!r}</{n}>" for n, v in calib.items())
    (root / "cams.xml").write_text(f"""<?xml version="1.0" encoding="UTF-8"?>
<document version="2.0.0"><chunk label="Chunk 1">
  <sensors><sensor id="0" label="cam" type="{sensor_type}"><resolution width="{photo.shape[1]}" height="{photo.shape[0]}"/>
    <calibration type="{sensor_type}" class="adjusted"><resolution width="{photo.shape[1]}" height="{photo.shape[0]}"/>{tags}</calibration>
  </sensor></sensors>
  <cameras><camera id="0" sensor_id="0" label="IMG_1"><transform>{' '.join(repr(float(v)) for v in c2w.ravel())}</transform></camera></cameras>
</chunk></document>
""")
    write_ply(root / "mesh.ply", grid_plane(4, 3.0))
    return root


def test_metashape_points_land_on_the_pinhole_projection(tmp_path):
    X, uv = points_in_view(POSE, lambda Xc: agisoft_project(Xc, W, H, MS))
    src = metashape_export(tmp_path / "ms", dots_photo(uv), POSE, MS)
    s = convert_metashape(src, tmp_path / "scene")
    assert s["undistortion"]["models"] == ["Metashape frame (b2, k1, k2, k3, k4, p1, p2)"]
    cam, _, _ = read_outputs(tmp_path / "scene", "IMG_1")
    assert cam.K[0, 1] == 0 and cam.fx == MS["f"] + MS["b1"] and cam.fy == MS["f"]   # no skew left
    err, ok = _dot_errors(tmp_path / "scene", "IMG_1", X)
    assert ok.sum() >= 0.8 * len(X) and len(X) >= 40
    assert err.max() < 0.05, err.max()
    # --images-undistorted keeps its meaning: distortion ignored, photo used as it is (skew refused)
    with pytest.raises(InputError, match="skew.*--images-undistorted"):
        convert_metashape(src, tmp_path / "as_is", undistorted=True)
    no_skew = {n: v for n, v in MS.items() if n != "b2"}
    src2 = metashape_export(tmp_path / "ms2", dots_photo(uv), POSE, no_skew)
    s = convert_metashape(src2, tmp_path / "as_is", undistorted=True)
    assert s["undistortion"] is None and not (tmp_path / "as_is" / "masks_1").exists()
    assert (tmp_path / "as_is" / "images_1" / "IMG_1.png").read_bytes() == (src2 / "images" / "IMG_1.png").read_bytes()


def line_photo(w, h, K, dist, n_, c_, sigma=1.2, ss=4) -> np.ndarray:
    """Photo of a dark straight line n . (u, v) = c, (u, v) the pinhole image of the source
    camera: each pixel is the mean of ss x ss samples, each sample's ray found by OpenCV."""
    img = np.zeros(w * h)
    jj, ii = np.mgrid[0:h, 0:w]
    for a in (np.arange(ss) + 0.5) / ss:
        for b in (np.arange(ss) + 0.5) / ss:
            xy = opencv_undistort(np.stack([(ii + a).ravel(), (jj + b).ravel()], 1), K, dist)
            d = n_[0] * (K[0, 0] * xy[:, 0] + K[0, 2]) + n_[1] * (K[1, 1] * xy[:, 1] + K[1, 2]) - c_
            img += (0.9 - 0.7 * np.exp(-d**2 / (2 * sigma**2))) / ss**2
    return np.repeat(np.round(img.reshape(h, w) * 255).astype(np.uint8)[..., None], 3, -1)


def trace_line(gray: np.ndarray, ok: np.ndarray, expected, horizontal: bool, r: int = 6) -> np.ndarray:
    """(position along, measured position across, expected position across) of a dark line, one
    row per column (horizontal) or per row; windows touching invalid pixels are skipped."""
    g = gray if horizontal else gray.T
    okg = ok if horizontal else ok.T
    pts = []
    for a in range(g.shape[1]):
        t = a + 0.5
        p = expected(t)
        p0 = int(np.floor(p)) - r
        if p0 < 0 or p0 + 2 * r + 1 > g.shape[0] or not okg[p0:p0 + 2 * r + 1, a].all():
            continue
        wgt = np.clip(0.9 - g[p0:p0 + 2 * r + 1, a] - 4 / 255, 0, None)
        pts.append((t, (wgt * (np.arange(2 * r + 1) + p0 + 0.5)).sum() / wgt.sum(), p))
    return np.array(pts)


def straightness(pts: np.ndarray) -> float:
    fit = np.polyfit(pts[:, 0], pts[:, 1], 1)
    return float(np.abs(np.polyval(fit, pts[:, 0]) - pts[:, 1]).max())


def test_straight_line_stays_straight(tmp_path):
    """Strong barrel distortion (about 48 px at the corners) bows a straight 3D line by pixels in
    the photo; after prepare it is straight to 0.1 px and lies where the written camera puts it."""
    w, h = 240, 180
    K, dist = opencv_K(170.0, 170.0, 121.3, 88.6), [-0.22, 0.03, 0.0, 0.0]
    # near the top edge (nearly horizontal) and near the right edge (nearly vertical)
    lines = {"top.png": (np.array([0.05, 1.0]) / np.hypot(0.05, 1.0), 20.0, True),
             "right.png": (np.array([1.0, -0.08]) / np.hypot(1.0, 0.08), 205.0, False)}
    photos = {name: (line_photo(w, h, K, dist, n_, c_), np.eye(4)) for name, (n_, c_, _) in lines.items()}
    src = colmap_workspace(tmp_path / "ws", f"OPENCV {w} {h} 170 170 121.3 88.6 -0.22 0.03 0 0", photos)
    s = convert_colmap(src, tmp_path / "scene")
    assert s["undistortion"]["max_shift_px"] > 40
    for name, (n_, c_, horizontal) in lines.items():
        cam, out, valid = read_outputs(tmp_path / "scene", Path(name).stem)
        ox, oy = 121.3 - cam.cx, 88.6 - cam.cy          # the prepared photo's origin in source pinhole pixels
        if horizontal:
            expected = lambda t: (c_ - n_[0] * (t + ox)) / n_[1] - oy          # noqa: E731
        else:
            expected = lambda t: (c_ - n_[1] * (t + oy)) / n_[0] - ox          # noqa: E731
        pts = trace_line(out.mean(-1) / 255, valid, expected, horizontal)
        assert len(pts) > 150
        assert straightness(pts) < 0.1, (name, straightness(pts))
        assert np.abs(pts[:, 1] - pts[:, 2]).max() < 0.1                       # where the camera puts it
        # in the source photo the same line is bowed by pixels
        src_gray = photos[name][0].mean(-1) / 255
        g = src_gray if horizontal else src_gray.T
        raw = np.array([(a + 0.5, np.argmin(g[:, a]) + 0.5) for a in range(g.shape[1])])
        assert straightness(raw) > 3


# --- a synthetic COLMAP scene, end to end ---------------------------------------------------------

DOTS = np.array([(x, y) for x in np.linspace(-1.2, 1.2, 7) for y in np.linspace(-0.9, 0.9, 6)])
SIGMA_W = 0.02


def plane_colour(P: np.ndarray) -> np.ndarray:
    """Texture of the plane z = 0: stripes, and dark dots at DOTS on flat discs of radius 0.15."""
    X, Y = P[..., 0], P[..., 1]
    d2 = (X[..., None] - DOTS[:, 0]) ** 2 + (Y[..., None] - DOTS[:, 1]) ** 2
    flat = np.clip((np.sqrt(d2.min(-1)) - 0.15) / 0.05, 0, 1)
    dots = np.exp(-d2 / (2 * SIGMA_W**2)).sum(-1)
    tex = 0.18 * np.sin(9 * X + 2 * Y) * np.cos(7 * Y - X) + 0.08 * np.sin(23 * X)
    return np.clip(0.7 + tex * flat - 0.6 * dots, 0, 1)


def render_plane(E: np.ndarray, rays_of_pixels, w: int, h: int, ss: int = 3) -> np.ndarray:
    """Photo of the textured plane z = 0: box filter of ss x ss samples per pixel, each sample's
    ray from rays_of_pixels(continuous pixel coords (N, 2)) -> normalised camera coords (N, 2)."""
    o = (np.arange(ss) + 0.5) / ss
    acc = np.zeros((h, w))
    R, t = E[:3, :3], E[:3, 3]
    C = -R.T @ t
    for a in o:
        for b in o:
            jj, ii = np.mgrid[0:h, 0:w]
            xy = rays_of_pixels(np.stack([(ii + a).ravel(), (jj + b).ravel()], 1))
            d = np.c_[xy, np.ones(len(xy))] @ R              # world directions (R^T d_cam)
            s = -C[2] / d[:, 2]
            P = C + s[:, None] * d
            acc += plane_colour(P).reshape(h, w)
    g = np.round(acc / ss**2 * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, -1)


SCENE_CAM = "OPENCV 200 150 150 152 101.3 74.2 -0.2 0.04 0.001 -0.0015"
SCENE_K, SCENE_DIST = opencv_K(150, 152, 101.3, 74.2), [-0.2, 0.04, 0.001, -0.0015]
SCENE_POSES = {"a.png": look_at((0.2, -0.3, 2.4), (0.0, 0.0, 0.0)),
               "b.png": look_at((1.1, 0.6, 2.1), (0.1, -0.1, 0.0)),
               "c.png": look_at((-0.9, -1.2, 2.0), (-0.1, 0.1, 0.0))}


@pytest.fixture(scope="module")
def distorted_scene(tmp_path_factory):
    """A COLMAP model with one OPENCV camera and three photos of a textured plane, projected
    through the distorted model; prepared once at full resolution."""
    root = tmp_path_factory.mktemp("colmap")
    imgs = {n: (render_plane(E, lambda p: opencv_undistort(p, SCENE_K, SCENE_DIST), 200, 150), E)
            for n, E in SCENE_POSES.items()}
    src = colmap_workspace(root / "ws", SCENE_CAM, imgs, mesh=grid_plane(8, 3.0))
    summary = convert(src, root / "scene")
    return src, root / "scene", summary


def test_scene_points_and_content_match_the_pinhole_camera(distorted_scene):
    """Dots on the plane sit where the written camera projects them (to 0.1 px), and the prepared
    photos match the plane rendered directly with the written pinhole camera, patch by patch."""
    src, scene, summary = distorted_scene
    errors, nccs = [], []
    P3 = np.c_[DOTS, np.zeros(len(DOTS))]
    for name in ("a", "b", "c"):
        cam, img, valid = read_outputs(scene, name)
        q, _ = cam.project(P3)
        # The same plane rendered directly with the written pinhole camera.
        ref = render_plane(cam.world_to_camera, lambda p: (p - [cam.cx, cam.cy]) / [cam.fx, cam.fy],
                           cam.width, cam.height)
        # Dots too small or too close to the stripes to be measured to 0.02 px in the direct
        # rendering (far, oblique parts of the plane) are left out.
        c_ref = centroid(ref, q, valid, r=5, bg=None)
        measurable = np.hypot(*(c_ref - q).T) < 0.02
        c = centroid(img, q[measurable], valid, r=5, bg=None)
        errors += list(np.hypot(*(c - q[measurable]).T))
        a, b = img.astype(np.float64).mean(-1), ref.astype(np.float64).mean(-1)
        for j in range(0, cam.height - 16, 16):
            for i in range(0, cam.width - 16, 16):
                if valid[j:j + 16, i:i + 16].all():
                    pa, pb = a[j:j + 16, i:i + 16].ravel(), b[j:j + 16, i:i + 16].ravel()
                    if pb.std() > 5:
                        nccs.append(np.corrcoef(pa, pb)[0, 1])
    assert len(errors) >= 40 and not np.isnan(errors).any()
    assert max(errors) < 0.1, max(errors)
    assert len(nccs) > 100 and np.min(nccs) > 0.985 and np.median(nccs) > 0.998, (np.min(nccs), np.median(nccs))


def test_scene_layout_mesh_masks_and_report(distorted_scene):
    src, scene, summary = distorted_scene
    assert (scene / "mesh.ply").read_bytes() == (src / "meshed-poisson.ply").read_bytes()   # mesh untouched
    u = summary["undistortion"]
    assert u["views"] == 3 and u["models"] == ["COLMAP OPENCV (k1, k2, p1, p2)"] and 15 < u["max_shift_px"] < 40
    sc = load_scene(scene)
    assert [v.mask_path.name for v in sc.views] == ["a.png", "b.png", "c.png"]
    cam, img, valid = read_outputs(scene, "a")
    assert (cam.width, cam.height) != (200, 150) and 0.6 < valid.mean() < 0.95
    assert (img[~valid] == 0).all()
    # invalid pixels are exactly those whose ray lands outside the source photo's pixel centres
    jj, ii = np.mgrid[0:cam.height, 0:cam.width] + 0.5
    x, y = (ii - cam.cx) / cam.fx, (jj - cam.cy) / cam.fy
    uv = opencv_project(np.stack([x.ravel(), y.ravel(), np.ones(x.size)], 1), SCENE_K, SCENE_DIST)
    inside = ((uv[:, 0] >= 0.5) & (uv[:, 0] <= 199.5) & (uv[:, 1] >= 0.5) & (uv[:, 1] <= 149.5)).reshape(valid.shape)
    assert (inside != valid).mean() < 1e-3
    # the canvas is no larger than the content: valid pixels come within 3 px of every side
    assert valid[:, :3].any() and valid[:, -3:].any() and valid[:3].any() and valid[-3:].any()
    r = check_scene(scene, coverage=False)
    assert r["undistortion"]["max_shift_px"] == u["max_shift_px"] and r["views_with_mask"] == 3
    text = format_report(r)
    assert "photos undistorted by prepare: 3 view(s), lens model COLMAP OPENCV (k1, k2, p1, p2); largest pixel " \
           f"shift {u['max_shift_px']:.2f} px" in text


def test_ray_cache_leaves_out_invalid_pixels(distorted_scene, tmp_path):
    import torch
    from backend.cache import view_rays
    from backend.imageio import read_mask
    from backend.meshio import load_mesh
    from backend.raster import Rasterizer
    _, scene, _ = distorted_scene
    v = load_scene(scene).views[0]
    rgb = np.asarray(Image.open(v.image_path).convert("RGB")).copy()
    valid = read_mask(v.mask_path, v.camera.width, v.camera.height)
    rast = Rasterizer(load_mesh(scene / "mesh.ply"), torch.device("cpu"))
    every = view_rays(rast, v.camera, rgb, 1, 0)
    kept = view_rays(rast, v.camera, rgb, 1, 0, valid)
    covered = rast.surface(v.camera, 1).mask.any(-1).numpy()
    assert len(every["view"]) == covered.sum() > len(kept["view"]) == (covered & valid).sum()
    # the kept rays are those of valid pixels: recover each ray's pixel from its direction
    d = kept["dir"].double().numpy() @ v.camera.R.T
    i = np.floor(d[:, 0] / d[:, 2] * v.camera.fx + v.camera.cx).astype(int)
    j = np.floor(d[:, 1] / d[:, 2] * v.camera.fy + v.camera.cy).astype(int)
    assert valid[j, i].all() and (kept["rgb"].numpy().sum(1) > 0).all()
    # the whole cache: rays of covered valid pixels only, from every view
    from backend.cache import build_cache
    run = tmp_path / "run"
    build_cache(str(scene), str(run), ss=1, test_every=0, device="cpu")
    expected = 0
    for w in load_scene(scene, level=1).views:
        ok = read_mask(w.mask_path, w.camera.width, w.camera.height)
        expected += int((rast.surface(w.camera, 1).mask.any(-1).numpy() & ok).sum())
    assert json.loads((run / "cache" / "meta.json").read_text())["n_rays"] == expected


def test_downsample_undistorts_then_shrinks(distorted_scene, tmp_path):
    src, scene, _ = distorted_scene
    from backend.prepare.downsample import block_all, block_mean
    s = convert(src, scene, downsample=2)
    assert s["level"] == 2
    for name in ("a", "b", "c"):
        cam1, img1, valid1 = read_outputs(scene, name, 1)
        cam2, img2, valid2 = read_outputs(scene, name, 2)
        # the canvas was padded to a multiple of 2 (nothing cropped) ...
        assert (cam2.width, cam2.height) == ((cam1.width + 1) // 2, (cam1.height + 1) // 2)
        assert np.array_equal(cam2.K[:2], cam1.K[:2] / 2)
        ph, pw = 2 * cam2.height - cam1.height, 2 * cam2.width - cam1.width
        pad = np.pad(img1, ((0, ph), (0, pw), (0, 0)))
        vpad = np.pad(valid1, ((0, ph), (0, pw)))
        # ... and the k=2 photo is the area filter of the full-resolution one, its mask all-of-4
        assert np.array_equal(valid2, block_all(vpad, 2))
        assert np.abs(img2.astype(int) - block_mean(pad, 2).astype(int))[valid2].max() <= 1


def test_rerun_skips_photos_already_written(distorted_scene, tmp_path):
    src, scene, _ = distorted_scene
    out = tmp_path / "again"
    convert(src, out)
    files = {p: p.stat().st_mtime_ns for p in (out / "images_1").iterdir()}
    (out / "images_1" / "b.png").unlink()                # as if interrupted before b was written
    saved, stream = events._stream, io.StringIO()
    events.set_stream(stream)
    try:
        s = convert(src, out)
    finally:
        events.set_stream(saved)
    assert s["undistortion"]["skipped_already_written"] == 2
    assert all(p.stat().st_mtime_ns == t for p, t in files.items() if p.name != "b.png")
    assert np.array_equal(np.asarray(Image.open(out / "images_1" / "b.png")),
                          np.asarray(Image.open(scene / "images_1" / "b.png")))
    evs = [json.loads(ln) for ln in stream.getvalue().splitlines()]
    prog = [e for e in evs if e["event"] == "progress" and e["stage"] == "prepare"]
    assert prog and prog[-1]["step"] == prog[-1]["total"] == 3 and prog[-1]["undistorted"] == 3
    # a changed calibration invalidates what was written
    cams = src / "sparse" / "0" / "cameras.txt"
    text = cams.read_text()
    try:
        cams.write_text(text.replace("-0.2 0.04", "-0.19 0.04"))
        s = convert(src, out)
        assert s["undistortion"]["skipped_already_written"] == 0
    finally:
        cams.write_text(text)


def test_pinhole_rerun_removes_stale_masks(distorted_scene, tmp_path):
    """Re-preparing into the same folder from undistorted photos leaves no mask behind (the
    scene loader would apply it)."""
    src, _, _ = distorted_scene
    out = tmp_path / "scene"
    convert(src, out)
    assert (out / "masks_1").is_dir()
    cams = src / "sparse" / "0" / "cameras.txt"
    text = cams.read_text()
    try:
        cams.write_text("1 PINHOLE 200 150 150 152 101.3 74.2\n")
        s = convert(src, out)
    finally:
        cams.write_text(text)
    assert s["undistortion"] is None and not (out / "masks_1").exists()
    assert all(v.mask_path is None for v in load_scene(out).views)


def test_mvsnet_relevel_keeps_masks(distorted_scene, tmp_path):
    _, scene, _ = distorted_scene
    out = tmp_path / "relevel"
    s = convert_mvsnet(scene, out, downsample=2, level=1)
    assert s["level"] == 2 and s["undistortion"]["views"] == 3
    v = load_scene(out, level=2).views[0]
    assert v.mask_path is not None
    _, _, valid1 = read_outputs(scene, "a", 1)
    valid2 = np.asarray(Image.open(v.mask_path)) == 255
    h, w = valid2.shape
    from backend.prepare.downsample import block_all
    assert np.array_equal(valid2, block_all(valid1[:2 * h, :2 * w], 2))


# --- refusals and the Blender path -------------------------------------------------------------------

@pytest.mark.parametrize("line", ["OPENCV_FISHEYE 160 120 80 80 80 60 0.1 0 0 0",
                                  "SIMPLE_RADIAL_FISHEYE 160 120 80 80 60 0.1",
                                  "FISHEYE 160 120 80 80 80 60"])
def test_fisheye_refused(tmp_path, line):
    src = colmap_workspace(tmp_path / "ws", line, {"a.png": (dots_photo(np.zeros((0, 2))), POSE)})
    with pytest.raises(InputError, match="fisheye.*image_undistorter"):
        convert_colmap(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_metashape_fisheye_refused(tmp_path):
    src = metashape_export(tmp_path / "ms", dots_photo(np.zeros((0, 2))), POSE, {"f": 80.0, "k1": 0.1},
                           sensor_type="fisheye")
    with pytest.raises(InputError, match="fisheye camera.*frame"):
        convert_metashape(src, tmp_path / "out")


def test_without_opencv_the_conversion_asks_for_the_backend(tmp_path):
    """Blender's Python has no OpenCV: undistort=False (what the Blender import passes) and a
    missing OpenCV both raise NeedsBackend before anything is written."""
    params, _, _ = COLMAP_CASES["OPENCV"]
    src = colmap_workspace(tmp_path / "ws", f"OPENCV {W} {H} " + " ".join(map(repr, params)),
                           {"a.png": (dots_photo(np.zeros((0, 2))), POSE)})
    with pytest.raises(NeedsBackend, match="backend environment"):
        convert(src, tmp_path / "out", undistort=False)
    assert not (tmp_path / "out").exists()
    code = ("from backend.prepare import convert, NeedsBackend\n"
            "try:\n"
            f"    convert({str(src)!r}, {str(tmp_path / 'out2')!r})\n"
            "except NeedsBackend as e:\n"
            "    assert 'OpenCV' in str(e), e\n"
            "else:\n"
            "    raise SystemExit('undistorting without OpenCV should fail')\n")
    r = python_without(("cv2", "torch"), code)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "out2").exists()


def test_cli_prepare_and_check_say_undistorted(distorted_scene, tmp_path):
    src, _, _ = distorted_scene
    r = subprocess.run([sys.executable, "-m", "backend", "prepare", str(src), "--out", str(tmp_path / "s"),
                        "--max-side", "64"], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert "photos undistorted by prepare: 3 view(s), lens model COLMAP OPENCV (k1, k2, p1, p2)" in r.stdout
    done = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith('{"event": "done"')]
    assert done[-1]["stage"] == "prepare" and any("undistorted" in n for n in done[-1]["notes"])


def test_eval_leaves_out_invalid_pixels(tmp_path):
    """Held-out metrics count only valid pixels: garbage in a photo's invalid part changes nothing."""
    from backend.cache import build_cache
    from backend.evaluate import evaluate
    from backend.train import train
    from helpers import striped_plane_scene
    scene = striped_plane_scene(tmp_path / "scene")
    run = tmp_path / "run"
    build_cache(str(scene), str(run), ss=1, test_every=3, device="cpu")
    train(str(run), iters=3, device="cpu", preset="small", overrides={"batch_rays": 512, "log2_table": 12})
    test_views = json.loads((run / "config.json").read_text())["test_views"]
    before = {v["view"]: v for v in evaluate(str(run), device="cpu", write_images=False)["views"]}
    (scene / "masks").mkdir()
    photos = {}
    for i in test_views:
        photos[i] = img = np.asarray(Image.open(scene / "images" / f"{i:08d}.png")).copy()
        valid = np.ones(img.shape[:2], bool)
        valid[:, : img.shape[1] // 2] = False
        Image.fromarray(np.where(valid, 255, 0).astype(np.uint8)).save(scene / "masks" / f"{i:08d}.png")
    masked = {v["view"]: v for v in evaluate(str(run), device="cpu", write_images=False)["views"]}
    for i, img in photos.items():
        img[:, : img.shape[1] // 2] = np.random.default_rng(i).integers(0, 256, img[:, : img.shape[1] // 2].shape)
        Image.fromarray(img).save(scene / "images" / f"{i:08d}.png")
    garbage = {v["view"]: v for v in evaluate(str(run), device="cpu", write_images=False)["views"]}
    for name in before:
        assert 0 < masked[name]["covered"] < before[name]["covered"]
        assert garbage[name]["psnr"] == pytest.approx(masked[name]["psnr"], abs=1e-9)


def test_lens_that_folds_inside_the_photo(tmp_path):
    """A strong barrel model whose radial curve turns back before the photo's corners: rays
    beyond the fold are never used (each source pixel lands at most once), the rest is kept,
    and the user is told."""
    lens = colmap_lens("SIMPLE_RADIAL", [110.0, 100.0, 75.0, -0.3], 200, 150)
    rf = lens.fold_radius()
    assert rf == pytest.approx(1 / np.sqrt(0.9), abs=1e-3)                # where d(r(1 + k r^2))/dr = 0
    canvas = pinhole_canvas(lens)
    assert 0 < canvas.outline_lost < 1
    from backend.prepare.lens import undistort_maps
    map_x, map_y, valid, _ = undistort_maps(lens, canvas)
    jj, ii = np.mgrid[0:canvas.height, 0:canvas.width] + 0.5
    r = np.hypot((ii - canvas.K[0, 2]) / 110.0, (jj - canvas.K[1, 2]) / 110.0)
    assert valid.any() and r[valid].max() < rf
    # one-to-one: the source point of every valid pixel undistorts back to that pixel's own ray
    # (beyond the fold a second, farther ray would reach the same source point)
    x, y, ok = lens.undistort(*lens.from_pixels(map_x[valid] + 0.5, map_y[valid] + 0.5))
    u, v = 110.0 * x + canvas.K[0, 2], 110.0 * y + canvas.K[1, 2]
    assert ok.all() and np.abs(u - ii[valid]).max() < 0.01 and np.abs(v - jj[valid]).max() < 0.01
    photo = dots_photo(np.zeros((0, 2)), 200, 150)
    src_ws = colmap_workspace(tmp_path / "ws", "SIMPLE_RADIAL 200 150 110 100 75 -0.3", {"a.png": (photo, POSE)})
    s = convert_colmap(src_ws, tmp_path / "out")
    assert any("folds over" in n for n in s["notes"])
