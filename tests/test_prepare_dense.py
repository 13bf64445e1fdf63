"""Photos -> scene through the dense stages (backend/prepare/photos.py, sfm.py): undistortion, fusion and
Poisson meshing are pycolmap's CPU code and run for real; patch-match stereo (CUDA only) is replaced by
maps of the true mesh, carried into the cameras' frame, in COLMAP's format (tests/dense_helpers.py)."""
from __future__ import annotations


import numpy as np
import pytest

from backend import events
from backend.meshio import load_mesh
from backend.prepare import photos, sfm
from backend.prepare.report import check_scene
from backend.raster_cpu import rasterize
from backend.scene import find_mesh, load_scene
from helpers import photo_arc
from dense_helpers import distances_to_mesh, patch_match_standin, true_mesh_in, write_dense_map

pycolmap = pytest.importorskip("pycolmap", reason="pycolmap is not installed (pip install -e \".[photos]\")")

N, W, H = 8, 320, 240


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """8 photos along a 120-degree arc around the procedural scene, and the true cameras."""
    root = tmp_path_factory.mktemp("dense")
    mesh, truth = photo_arc(root / "photos", N, W, H)
    return root, mesh, truth


@pytest.fixture(scope="module")
def dense_scene(capture, tmp_path_factory):
    """`prepare` on the photos alone with the dense stages (patch match replaced), run twice."""
    root, mesh, truth = capture
    dst = tmp_path_factory.mktemp("dense_scene") / "scene"
    calls, got = [], []
    emit = events.emit
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(events, "emit", lambda event, **kw: (got.append({"event": event, **kw}), emit(event, **kw)))
        mp.setattr(sfm, "has_cuda", lambda _pycolmap: True)
        mp.setattr(sfm, "stereo", patch_match_standin(mesh, {n: c.center for n, c in truth.items()}, calls))
        first = photos.convert_photos(root / "photos", dst)
        first_events = list(got)
        mesh_bytes = find_mesh(dst).read_bytes()
        mp.setattr(sfm, "fuse", lambda *a, **kw: pytest.fail("fusion ran again"))
        mp.setattr(sfm, "poisson", lambda *a, **kw: pytest.fail("Poisson meshing ran again"))
        second = photos.convert_photos(root / "photos", dst)
    return dst, first, second, calls, mesh_bytes, first_events


def test_the_map_writer_writes_what_colmap_reads(tmp_path):
    """The stand-in's maps in COLMAP's format: pycolmap's own reader gives back a depth map (a
    non-square one, so rows and columns cannot be swapped unnoticed). A normal map's channels are
    stored one after the other, as COLMAP's Mat::Get(row, col, slice) reads them; pycolmap's
    NormalMap.to_array() is that buffer as it lies, reshaped to (H, W, 3) without reordering."""
    rng = np.random.default_rng(0)
    depth = rng.uniform(1, 5, (7, 11)).astype(np.float32)
    normal = rng.normal(size=(7, 11, 3)).astype(np.float32)
    write_dense_map(tmp_path / "d.bin", depth)
    write_dense_map(tmp_path / "n.bin", normal)
    assert (tmp_path / "d.bin").read_bytes().startswith(b"11&7&1&")
    d, n = pycolmap.DepthMap(), pycolmap.NormalMap()
    d.read(tmp_path / "d.bin")
    n.read(tmp_path / "n.bin")
    assert np.array_equal(d.to_array(), depth)
    assert (n.width, n.height) == (11, 7) and np.array_equal(n.to_array().ravel(), normal.transpose(2, 0, 1).ravel())


def test_the_dense_stages_mesh_the_true_surface(capture, dense_scene):
    root, mesh, truth = capture
    dst, first, _, calls, _, _ = dense_scene
    assert first.get("stopped") is None and len(calls) == 1
    work = dst / "sfm"
    assert sorted(p.name for p in (work / "dense" / "stereo" / "depth_maps").iterdir()) == \
        [f"{n}.geometric.bin" for n in sorted(truth)]
    assert not list(work.glob("*.part*")), list(work.glob("*.part*"))          # nothing half-made left
    scene_mesh = load_mesh(find_mesh(dst))
    true = true_mesh_in(work / "sparse", mesh, {n: c.center for n, c in truth.items()})
    extent = float(np.linalg.norm(np.ptp(true.vertices, axis=0)))
    sample = scene_mesh.vertices[np.random.default_rng(0).choice(len(scene_mesh.vertices), 3000, replace=False)]
    d = distances_to_mesh(sample, true) / extent
    assert np.median(d) < 0.002 and np.percentile(d, 99) < 0.01, np.percentile(d, [50, 90, 99, 100])
    # it covers what the photos see of the true surface (fusion keeps what 5 photos or more see: the
    # edges of the ground, seen by fewer, go), and no more (as an untrimmed, closed Poisson surface would)
    report = check_scene(dst, max_side=W)
    scene = load_scene(dst)
    for row, view in zip(report["views"], scene.views):
        seen = float(rasterize(true, view.camera).mask.mean())
        assert 0.85 * seen <= row["coverage"] <= seen + 0.03, (row["name"], row["coverage"], seen)
    assert not report["views_not_reached"] and len(report["views"]) == N


def test_a_rerun_keeps_every_dense_stage(dense_scene):
    dst, _, second, calls, mesh_bytes, _ = dense_scene
    assert second.get("stopped") is None and len(calls) == 1                # patch match did not run again
    assert find_mesh(dst).read_bytes() == mesh_bytes


def test_every_stage_has_an_eta_on_a_machine_with_patch_match(dense_scene):
    """With the dense stages in the plan, each of them needs an estimate, or no stage has an ETA."""
    *_, first_events = dense_scene
    prog = [e for e in first_events if e["event"] == "progress" and e.get("stage") == "sfm"]
    assert [p for p in photos.PHASES if p in {e["phase"] for e in prog}] == list(photos.PHASES)
    assert all(e.get("eta_s") is not None for e in prog), [e for e in prog if e.get("eta_s") is None][:3]
    assert prog[0]["phase"] == "features" and prog[0]["eta_s"] > 0
