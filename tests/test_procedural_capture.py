"""The capture scene (backend.synthetic.capture): its degradations are real and measured, the
ground truth is the clean renderer at the true cameras, and the quality benchmark scores it."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from backend.cameras import Camera
from backend.colour import linear_to_srgb, srgb_to_linear
from backend.imageio import read_image
from backend.meshio import Mesh, load_mesh
from backend.raster import Rasterizer
from backend.raster_cpu import interpolate, rasterize
from backend.scene import load_scene
from backend.synthetic import capture as C
from backend.synthetic import procedural as P
from backend.synthetic.capture_settings import CaptureParams
from backend.synthetic.clean_render import frustum_faces, render_clean
from backend.synthetic.geometry import point_mesh_distance
from backend.synthetic.mesh_degradation import edge_use
from backend.synthetic.pose_noise import reprojection_errors
from backend.synthetic.sensor import noise_sigma, sensor
from backend.synthetic.truth import Truth, load_truth, read_gt

W, H = 96, 72
SS = 2


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return C.make_capture(tmp_path_factory.mktemp("capture") / "scene", "sparse", width=W, height=H,
                          ss_ref=SS, seed=0, workers=2)


@pytest.fixture(scope="module")
def truth(scene):
    return load_truth(scene)


@pytest.fixture(scope="module")
def spec(scene):
    return P.load_spec(scene)


@pytest.fixture(scope="module")
def params(truth):
    return CaptureParams.from_json(truth.info["settings"]["params"])


def _views(truth):
    return {v["name"]: v for v in truth.info["views"]}


def _photo(scene, name) -> np.ndarray:
    return read_image(scene / "images" / f"{name}.jpg").astype(np.float64)


def _occluder_mask(scene, name) -> np.ndarray:
    return np.asarray(Image.open(scene / "truth" / "occluders" / f"{name}.png").convert("L")) > 127


def test_a_normal_mvsnet_scene_with_sparse_layout(scene, truth, spec):
    s = load_scene(scene)
    assert len(s.views) == 16 and s.mesh_path.name == "1.obj"
    assert all(v.image_path.suffix == ".jpg" for v in s.views)
    info = json.loads((scene / "views.json").read_text())
    close = [v["closeup"] for v in info["views"]]
    k = truth.test_every
    assert k == P.pick_test_every(close)
    train, test = s.split(k)
    assert [s.views[i].name for i in test] == [v.name for v in truth.heldout]
    assert 10 <= len(train) <= 15 and sum(close[i] for i in train) >= 2       # sparse, with close-ups
    assert {v.group for v in truth.heldout} == {"far", "close"}
    # The true mesh on disk is the spec's; the pipeline's mesh is another one.
    true = load_mesh(scene / "truth" / "true.obj")
    np.testing.assert_array_equal(true.vertices, spec.mesh.vertices)
    assert len(load_mesh(s.mesh_path).faces) < len(true.faces)


def test_exposure_and_white_balance_are_recovered_from_the_photos(scene, truth, spec):
    """photo (linear) / clean render = 2**ev * white balance, per channel, within 4 %."""
    got, want = [], []
    for v in truth.info["views"]:
        cam = Camera.from_dict(v["true_camera"])
        lin, alpha = render_clean(spec, cam, SS)
        photo = srgb_to_linear(_photo(scene, v["name"]))
        ok = alpha >= 1
        if v["occluder"]:
            ok &= ~_occluder_mask(scene, v["name"])
        ratio = []
        for c in range(3):
            sel = ok & (lin[..., c] > 0.03) & (lin[..., c] < 0.5)
            assert sel.sum() > 200
            ratio.append(np.median(photo[..., c][sel] / lin[..., c][sel]))
        got.append(ratio)
        want.append(2.0 ** v["ev"] * np.array(v["wb"]))
    got, want = np.array(got), np.array(want)
    np.testing.assert_allclose(got, want, rtol=0.04)
    ev = np.log2(got[:, 1])
    assert ev.max() - ev.min() > 0.4                            # exposures really differ (EV)
    wb_got = np.log(got[:, [0, 2]] / got[:, [1]]).ravel()          # white balance: red/green, blue/green
    wb_want = np.log(want[:, [0, 2]] / want[:, [1]]).ravel()
    assert np.abs(wb_got - wb_want).max() < 0.04 and np.corrcoef(wb_got, wb_want)[0, 1] > 0.85
    train = [not v["held_out"] for v in truth.info["views"]]
    assert abs(np.mean(np.log2(want[train, 1]))) < 1e-9        # neutral on average (training photos)


def test_photos_are_4_2_0_jpegs_with_compression_loss(scene, truth, spec, params):
    for v in truth.info["views"][:6]:
        with Image.open(scene / "images" / f"{v['name']}.jpg") as im:
            assert im.format == "JPEG"
            assert JpegImagePlugin.get_sampling(im) == 2                    # 4:2:0 chroma subsampling
            assert 2 <= im.quantization[0][0] <= 5                           # DC step of quality 85-95
        assert params.jpeg_quality[0] <= v["jpeg_quality"] <= params.jpeg_quality[1]
    # The compression error dwarfs the sensor noise at these sizes: the photo minus its exposed,
    # noiseless 8-bit render is several times the noise alone.
    v = next(v for v in truth.info["views"] if not v["occluder"])
    cam = Camera.from_dict(v["true_camera"])
    lin, alpha = render_clean(spec, cam, SS)
    exposed = np.clip(lin * 2.0 ** v["ev"] * np.array(v["wb"]), 0, 1)
    clean8 = np.round(linear_to_srgb(exposed) * 255) / 255
    res = (_photo(scene, v["name"]) - clean8)[alpha >= 1]
    sigma = noise_sigma(exposed, v["iso"], params)[alpha >= 1]
    assert res.std() > 2 * np.sqrt(np.mean(sigma ** 2)) * 1.2 + 1 / 255
    assert np.abs(res).mean() < 0.05


def test_sensor_noise_is_shot_plus_read_noise_of_a_real_camera():
    p = CaptureParams()
    rng = np.random.default_rng(0)
    grey = np.full((200, 200, 3), 0.18, np.float32)              # mid grey, linear
    d = 1e-4
    slope = (linear_to_srgb(np.array(0.18 + d)) - linear_to_srgb(np.array(0.18 - d))) / (2 * d)
    stds = {}
    for iso in (100.0, 800.0):
        x = sensor(grey, 0.0, np.ones(3), iso, p, rng)
        assert abs(x.mean() - 0.18) < 1e-3
        assert x.std() == pytest.approx(float(noise_sigma(np.array(0.18), iso, p)), rel=0.03)
        stds[iso] = x.std() * slope * 255                          # 8-bit sRGB levels
    assert 0.5 < stds[100.0] < 1.5 and 2.0 < stds[800.0] < 4.0
    assert stds[800.0] / stds[100.0] == pytest.approx(np.sqrt(8), rel=0.1)
    dark = sensor(np.zeros((100, 100, 3), np.float32), 0.0, np.ones(3), 800.0, p, rng)
    assert 0 < dark.mean() < 3 * p.read_noise_e / (p.full_well_e / 8)    # read noise, clipped at 0


def test_written_poses_have_the_requested_reprojection_error(scene, truth, spec, params):
    """Measured here on other points (a coarser raster of the true mesh) than the generator's."""
    s = load_scene(scene)
    written = {v.name: v.camera for v in s.views}
    views = _views(truth)
    sq, per = [], []
    for name, cam in written.items():
        true = Camera.from_dict(views[name]["true_camera"])
        np.testing.assert_array_equal(cam.K, true.K)
        assert not np.allclose(cam.world_to_camera, true.world_to_camera)
        small = true.scaled(40 / W)
        r = rasterize(spec.mesh, small)
        x = interpolate(r, spec.mesh.faces, spec.mesh.vertices)[r.mask]
        e = reprojection_errors(true, cam, x)
        sq.append(np.mean(e ** 2))
        per.append(views[name]["reproj_rms_px"])
    rms = float(np.sqrt(np.mean(sq)))
    assert rms == pytest.approx(params.reproj_rms_px, rel=0.2)
    assert truth.info["reproj_rms_px"] == pytest.approx(params.reproj_rms_px, rel=0.05)
    assert np.std(per) > 0.03                                   # varies from photo to photo


def test_mesh_is_simplified_displaced_holed_and_has_blobs(scene, truth, spec, params):
    mesh = load_mesh(scene / "1.obj")
    stats = truth.info["mesh"]
    assert len(mesh.faces) < 0.6 * len(spec.mesh.faces)
    body = Mesh(mesh.vertices, mesh.faces[:stats["body_triangles"]])
    # Displacement: the surface moved by a fraction of a far pixel, within the stated bound.
    rng = np.random.default_rng(0)
    used = np.unique(body.faces)
    d = point_mesh_distance(mesh.vertices[rng.choice(used, 600, replace=False)], spec.mesh)
    bound = params.displacement + params.cluster_cell ** 2 / (8 * 0.45)     # + chord error (r >= 0.45)
    assert 0.25 * params.displacement < np.sqrt(np.mean(d ** 2)) < 0.7 * params.displacement
    assert np.quantile(d, 0.99) < bound
    # Holes: no surface left near their centres, which lie on the true surface.
    assert len(stats["holes"]) == params.holes
    assert stats["boundary_edges"] > stats["boundary_edges_before_holes"] + 3 * params.holes
    centres = np.array([h["centre"] for h in stats["holes"]])
    assert point_mesh_distance(centres, spec.mesh).max() < 1e-6
    assert point_mesh_distance(centres, body).min() > 0.25 * params.hole_radius
    # Blobs: closed little surfaces off the true surface, seen by some photos.
    blob = Mesh(mesh.vertices, mesh.faces[stats["body_triangles"]:])
    assert len(stats["blobs"]) == params.blobs
    assert (edge_use(blob.faces) == 2).all()
    bv = np.unique(blob.faces)
    assert point_mesh_distance(mesh.vertices[bv], spec.mesh).min() > 0.02
    for b in stats["blobs"]:
        r = np.linalg.norm(mesh.vertices[bv] - np.array(b["centre"]), axis=1)
        assert ((r < 1.3 * b["radius"]).sum()) >= 30                # its own vertices, around it
        assert len(b["seen_by"]) >= 1


def test_occluders_are_in_their_photos_only(scene, truth, spec, params):
    views = truth.info["views"]
    occluded = [v for v in views if v["occluder"]]
    assert len(occluded) == round(params.occluded_fraction * len(views))
    assert {v["occluder"]["kind"] for v in occluded} == {"pole", "box"}
    assert any(v["held_out"] for v in occluded)
    gt_held = {v.name: v for v in truth.heldout}
    for v in occluded:
        cam = Camera.from_dict(v["true_camera"])
        m = _occluder_mask(scene, v["name"])
        assert m.mean() == pytest.approx(v["occluder"]["pixels"], abs=1e-9)
        assert 0.01 < m.mean() < 0.5
        lin, alpha = render_clean(spec, cam, SS)
        expected = linear_to_srgb(np.clip(lin * 2.0 ** v["ev"] * np.array(v["wb"]), 0, 1))
        diff = np.abs(_photo(scene, v["name"]) - expected).mean(-1)
        assert diff[m].mean() > 4 * diff[~m & (alpha >= 1)].mean()
        if v["name"] in gt_held:                                   # the reference never has it
            g = read_gt(gt_held[v["name"]].path)
            assert np.abs(g["srgb"] - linear_to_srgb(lin)).max() < 2 / 65535


def test_heldout_ground_truth_is_the_clean_render_at_the_true_pose(scene, truth, spec):
    s = load_scene(scene)
    written = {v.name: v.camera for v in s.views}
    for tv in truth.heldout:
        g = read_gt(tv.path)
        lin, alpha = render_clean(spec, tv.camera, SS)
        assert np.abs(g["srgb"] - linear_to_srgb(lin)).max() < 2 / 65535
        assert np.abs(g["alpha"] - alpha).max() < 2 / 65535
        # Exact renderer: the same clean image through the pipeline's (noisy) camera differs.
        shifted, _ = render_clean(spec, written[tv.name], SS)
        assert np.abs(linear_to_srgb(shifted) - g["srgb"]).mean() > 1e-3


def test_magnified_cameras_are_2_4_8_times_closer_than_the_nearest_photo(scene, truth, spec, params):
    views = _views(truth)
    train = [Camera.from_dict(v["true_camera"]) for v in truth.info["views"] if not v["held_out"]]
    targets = truth.info["magnified_targets"]
    assert len(targets) == params.magnified_points
    assert {t["nearest_is_closeup"] for t in targets} == {True, False}
    for t in targets:
        p = np.array(t["point"])
        # Which training photos see the point: inside the frame and the first hit of the true mesh.
        dists = []
        for cam in train:
            uv, z = cam.project(p[None])
            i, j = int(uv[0, 0]), int(uv[0, 1])
            if not (z[0] > 0 and 0 <= i < W and 0 <= j < H):
                continue
            r = rasterize(spec.mesh, cam)
            if r.mask[j, i] and abs(r.depth[j, i] - z[0]) < 0.01 * z[0]:
                dists.append(np.linalg.norm(cam.center - p))
        assert len(dists) >= 2
        assert t["nearest_distance"] == pytest.approx(min(dists), rel=1e-9)
        assert views[t["nearest_photo"]]["held_out"] is False
    for tv in truth.magnified:
        t = targets[tv.target]
        p = np.array(t["point"])
        assert np.linalg.norm(tv.camera.center - p) == pytest.approx(t["nearest_distance"] / tv.factor, rel=1e-9)
        np.testing.assert_allclose(tv.camera.K, train[0].K)
        uv, _ = tv.camera.project(p[None])
        np.testing.assert_allclose(uv[0], [tv.camera.cx, tv.camera.cy], atol=1e-6)   # looks at the point
        near = Camera.from_dict(views[t["nearest_photo"]]["true_camera"])
        d0, d1 = near.center - p, tv.camera.center - p                         # along the photo's ray
        assert np.dot(d0, d1) / np.linalg.norm(d0) / np.linalg.norm(d1) > 1 - 1e-9
    assert sorted({tv.factor for tv in truth.magnified}) == [1.0, 2.0, 4.0, 8.0]
    tv = next(tv for tv in truth.magnified if tv.factor == 8.0)
    g = read_gt(tv.path)
    lin, alpha = render_clean(spec, tv.camera, SS)
    assert np.abs(g["srgb"] - linear_to_srgb(lin)).max() < 2 / 65535
    assert np.abs(g["alpha"] - alpha).max() < 2 / 65535
    assert g["photo_valid"].mean() > 0.5 and g["photo"].shape == (H, W, 3)


def test_generation_is_deterministic_per_seed(tmp_path):
    kw = {"variant": "sparse", "n_views": 8, "width": 48, "height": 36, "ss_ref": 1}
    a = C.make_capture(tmp_path / "a", seed=1, workers=1, **kw)
    b = C.make_capture(tmp_path / "b", seed=1, workers=2, **kw)
    c = C.make_capture(tmp_path / "c", seed=2, workers=1, **kw)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "capture.json")
    assert len(files) > 30
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "capture.json")
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    ja, jb = (json.loads((x / "truth" / "capture.json").read_text()) for x in (a, b))
    ja.pop("seconds"), jb.pop("seconds")
    assert ja == jb
    assert (a / "images" / "00000000.jpg").read_bytes() != (c / "images" / "00000000.jpg").read_bytes()
    assert (a / "1.obj").read_bytes() != (c / "1.obj").read_bytes()
    # reuse: an identical request leaves the folder alone, a different one rebuilds it.
    stamp = (a / "views.json").stat().st_mtime_ns
    assert C.capture_matches(a, seed=1, **kw) and not C.capture_matches(a, seed=2, **kw)
    C.make_capture(a, seed=1, reuse=True, **kw)
    assert (a / "views.json").stat().st_mtime_ns == stamp


def test_frustum_culling_changes_no_pixel(spec):
    cams, _ = P.make_cameras(P.make_spec(0), 3, 64, 48, "multiscale", seed=0)
    close = cams[2]                                             # a close-up: most triangles culled
    keep = frustum_faces(spec.mesh, close)
    assert keep.sum() < 0.5 * len(keep)
    a = P.reference_render(spec, close, 1)
    b = render_clean(spec, close, 1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# --- the quality benchmark's scoring on a capture scene -----------------------------------

@pytest.fixture(scope="module")
def qs():
    """The quality benchmark's scoring (benchmarks/quality_scoring.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import quality_scoring
    return quality_scoring


@pytest.fixture(scope="module")
def qr(qs):
    """The quality benchmark's summary and targets (benchmarks/quality_report.py)."""
    import quality_report
    return quality_report


def test_benchmark_scores_every_group_against_the_clean_reference(scene, truth, spec, qs, qr, tmp_path):
    from baselines import vertex_colour as vc
    rast = Rasterizer(load_mesh(scene / "1.obj"), torch.device("cpu"))
    # One far and one close held-out photo, and the magnified views of the first point (seconds).
    first = {v.group: v.name for v in reversed(truth.heldout)}
    sub = Truth(truth.root, truth.info, [v for v in truth.heldout if v.name in first.values()],
                  [v for v in truth.magnified if v.target == 0])
    views = qs.capture_views(sub, rast)
    assert [v.name for v in views] == [v.name for v in sub.views] and len(views) == 6
    assert all(0.05 < v.mask.mean() for v in views)
    sheets = qs.capture_sheets("capture-sparse", sub)
    assert [row for row, _name in sheets[0].rows] == ["1x", "4x", "8x"]
    scorer = qs.Scorer("capture-sparse", views, sheets[:1])
    # A perfect method: the clean renderer at the camera it is given (exact at the true cameras).
    scorer.score(qs.OURS, lambda c: linear_to_srgb(render_clean(spec, c, SS)[0]), 0.0)
    # The vertex-colour baseline fitted to the photos, briefly.
    s = load_scene(scene)
    train_ids, _ = s.split(truth.test_every)
    photos = [(s.views[i].camera, np.asarray(Image.open(s.views[i].image_path).convert("RGB"))) for i in train_ids]
    model = vc.fit(vc.pixel_table(rast, photos, 2), rast.mesh.faces, len(rast.mesh.vertices), iters=15, batch=2048)
    scorer.score(qs.VC, lambda c: vc.render(model, rast, c, 2)[0], 1.0)
    rows = qr.summarise(scorer.records)
    groups = ["far", "close", "all", "mag 1x", "mag 2x", "mag 4x", "mag 8x"]
    assert list(dict.fromkeys(r["group"] for r in rows)) == groups
    got = {(r["group"], r["method"]): r for r in rows}
    for g in groups:
        assert {m for gg, m in got if gg == g} == {qs.TRUTH, qs.OURS, qs.VC}
        assert np.isfinite(got[g, qs.TRUTH]["speckle"]) and got[g, qs.TRUTH]["psnr"] is None
        assert got[g, qs.OURS]["psnr"] > 60                      # the reference is the clean render
        assert got[g, qs.OURS]["speckle"] == pytest.approx(got[g, qs.TRUTH]["speckle"], abs=1e-9)
        assert 10 < got[g, qs.VC]["psnr"] < 35 and 0 < got[g, qs.VC]["ssim"] < 1
        assert 0 <= got[g, qs.VC]["speckle"] < 0.5
    assert got["all", qs.VC]["views"] == 2                     # 'all' never holds magnified views
    targets = qr.check_targets(rows)
    by = {(t["group"], t["target"]): t for t in targets}
    assert by["far", "PSNR >= vertex colour + 2 dB"]["met"] is True
    assert by["far", "PSNR >= 3DGS + 1 dB"]["met"] is None     # no 3DGS row
    assert by["mag 8x", "speckle <= 2 x ground truth + 0.2 %"]["met"] is True
    assert by["mag 4x", "PSNR >= every baseline"]["met"] is True
    files = scorer.write_crops(tmp_path)
    assert files == ["crops_capture-sparse_point0.png"]
    with Image.open(tmp_path / files[0]) as im:
        assert im.width >= 4 * 256 and im.height >= 3 * 256          # 3 rows x (truth, photo, 2 methods)
