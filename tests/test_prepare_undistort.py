"""Undistortion in `prepare`: photos of distorted COLMAP / Metashape cameras become pinhole photos
whose written camera puts every point where the distorted source photo showed it.

References are independent of backend.prepare.lens: OpenCV's projectPoints / undistortPointsIter
for COLMAP's models (they are OpenCV's), a literal transcription of Agisoft's frame-camera
equations for Metashape. Photos are synthesised by projecting known points through the
distorted model; the prepared photos are then measured (dot centroids, line positions, patch
correlation against a pinhole rendering of the same scene with the prepared camera: a synthetic
scene end to end, in test_prepare_undistort_scene.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cameras import Camera, look_at
from backend.errors import InputError
from backend.meshio import write_ply
from backend.prepare import NeedsBackend, convert, convert_colmap, convert_metashape
from backend.prepare.lens import colmap_lens, metashape_lens, pinhole_canvas
from helpers import grid_plane, python_without
from undistort_helpers import (H, W, colmap_workspace, dot_errors, dots_photo, opencv_K, opencv_project, opencv_undistort,
                               points_in_view, read_outputs)


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

@pytest.mark.parametrize("model", list(COLMAP_CASES))
def test_colmap_points_land_on_the_pinhole_projection(tmp_path, model):
    params, k, dist = COLMAP_CASES[model]
    X, uv = points_in_view(POSE, lambda Xc: opencv_project(Xc, opencv_K(*k), dist))
    src = colmap_workspace(tmp_path / "ws", f"{model} {W} {H} " + " ".join(map(repr, params)),
                           {"a.png": (dots_photo(uv), POSE)})
    convert_colmap(src, tmp_path / "scene")
    err, ok = dot_errors(tmp_path / "scene", "a", X)
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
    err, ok = dot_errors(tmp_path / "scene", "IMG_1", X)
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
