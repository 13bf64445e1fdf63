"""Undistortion in `prepare`, end to end: a synthetic COLMAP model with one distorted OPENCV camera
and three photos of a textured plane becomes a scene whose pinhole photos match the plane rendered
directly with the written cameras; its masks leave invalid pixels out of the ray cache, the
downsampled levels and the held-out metrics; reruns, re-levelling and the command line.
The lens models and single-photo acceptance tests: test_prepare_undistort.py.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend import events
from backend.cameras import look_at
from backend.prepare import check_scene, convert, convert_mvsnet, format_report
from backend.scene import load_scene
from helpers import grid_plane
from undistort_helpers import centroid, colmap_workspace, opencv_K, opencv_project, opencv_undistort, read_outputs

REPO = Path(__file__).resolve().parents[1]


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


# --- the command line and the held-out metrics ----------------------------------------------------

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
