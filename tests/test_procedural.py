import json

import numpy as np
import pytest

from backend.synthetic import procedural as P
from backend.cameras import Camera
from backend.colour import linear_to_srgb
from backend.imageio import read_image
from backend.meshio import load_mesh
from backend.raster_cpu import interpolate, rasterize
from backend.scene import load_scene

W, H = 80, 60


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return P.make_scene(tmp_path_factory.mktemp("proc") / "scene", n_views=6, width=W, height=H, ss_ref=2, seed=3)


@pytest.fixture(scope="module")
def spec():
    return P.make_spec(0)


def test_scene_loads_with_non_ideal_intrinsics(scene_dir):
    scene = load_scene(scene_dir)
    assert len(scene.views) == 6 and scene.mesh_path.name == "1.obj"
    for v in scene.views:
        c = v.camera
        assert (c.width, c.height) == (W, H)
        assert c.fy == pytest.approx(0.98 * c.fx) and c.fx != c.fy
        assert c.cx == pytest.approx(0.52 * W) and c.cy == pytest.approx(0.47 * H)
        assert c.depth_range is not None and 0 < c.depth_range[0] < c.depth_range[1]
        img = read_image(v.image_path)
        assert img.shape == (H, W, 3) and img.std() > 0.05
        assert (img.sum(2) == 0).any() and (img.sum(2) > 0.3).mean() > 0.3   # background and surface
    mesh = load_mesh(scene.mesh_path)
    assert 300 < len(mesh.faces) < 3000
    info = json.loads((scene_dir / "views.json").read_text())
    assert info["seed"] == 3 and [x["name"] for x in info["views"]] == [v.name for v in scene.views]
    assert not any(x["closeup"] for x in info["views"])


def test_images_are_the_reference_render_of_the_saved_cameras(scene_dir):
    """The PNGs equal reference_render of the cameras read back from the cam files (so images,
    cams and mesh agree), and an ideal principal point would not match."""
    scene = load_scene(scene_dir)
    spec = P.load_spec(scene_dir)
    mesh = load_mesh(scene.mesh_path)
    np.testing.assert_array_equal(mesh.vertices, spec.mesh.vertices)
    for v in scene.views[:3]:
        img = read_image(v.image_path)
        rgb, alpha = P.reference_render(spec, v.camera, 2)
        assert np.abs(linear_to_srgb(rgb) - img).max() <= 0.5 / 255 + 1e-6
        ideal = v.camera.K.copy()
        ideal[0, 2], ideal[1, 2], ideal[1, 1] = W / 2, H / 2, ideal[0, 0]
        rgb2, _ = P.reference_render(spec, Camera(W, H, ideal, v.camera.world_to_camera), 2)
        assert np.abs(linear_to_srgb(rgb2) - img).mean() > 10 * np.abs(linear_to_srgb(rgb) - img).mean() + 0.01


def test_projection_convention_matches_rasterizer(scene_dir):
    scene = load_scene(scene_dir)
    mesh = load_mesh(scene.mesh_path)
    cam = scene.views[0].camera
    r = rasterize(mesh, cam)
    # Surface points found at pixel centres project back onto those centres with K [R|t].
    x = interpolate(r, mesh.faces, mesh.vertices)[r.mask]
    Xc = x @ cam.R.T + cam.t
    uvw = Xc @ cam.K.T
    uv = uvw[:, :2] / uvw[:, 2:]
    jj, ii = np.nonzero(r.mask)
    np.testing.assert_allclose(uv, np.stack([ii + 0.5, jj + 0.5], 1), atol=1e-4)
    # Mesh vertices that project inside the image land on covered pixels: always within one
    # pixel, and exactly except for vertices on silhouettes and the ground plane's border.
    uvw = (mesh.vertices.astype(np.float64) @ cam.R.T + cam.t) @ cam.K.T
    uv = uvw[:, :2] / uvw[:, 2:]
    inside = (uvw[:, 2] > 0) & (uv[:, 0] > 1) & (uv[:, 0] < W - 1) & (uv[:, 1] > 1) & (uv[:, 1] < H - 1)
    assert inside.sum() > 50
    px = np.floor(uv[inside]).astype(int)
    assert r.mask[px[:, 1], px[:, 0]].mean() > 0.9
    near = np.zeros(len(px), bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near |= r.mask[px[:, 1] + dy, px[:, 0] + dx]
    assert near.all()
    # The photo shows surface inside the rasterized mask and exact background well outside it.
    img = read_image(scene.views[0].image_path)
    inner, outer = r.mask.copy(), ~r.mask
    for ax in (0, 1):
        for sh in (-1, 1):
            inner &= np.roll(r.mask, sh, ax)
            outer &= ~np.roll(r.mask, sh, ax)
    assert inner.sum() > 100 and outer.sum() > 100
    assert (img[inner].sum(1) > 0.05).all() and (img[outer] == 0).all()


def test_deterministic_with_seed(tmp_path, scene_dir):
    again = P.make_scene(tmp_path / "again", n_views=6, width=W, height=H, ss_ref=2, seed=3)
    other = P.make_scene(tmp_path / "other", n_views=2, width=W, height=H, ss_ref=2, seed=4)
    for name in ("images/00000000.png", "images/00000005.png", "cams/00000002_cam.txt", "1.obj"):
        assert (again / name).read_bytes() == (scene_dir / name).read_bytes()
    assert (other / "images/00000000.png").read_bytes() != (scene_dir / "images/00000000.png").read_bytes()


def test_reuse_keeps_a_matching_scene_and_rebuilds_another(tmp_path):
    d = P.make_scene(tmp_path / "s", n_views=2, width=W, height=H, ss_ref=1, seed=3)
    assert P.scene_matches(d, 2, W, H, ss_ref=1, seed=3)
    assert not P.scene_matches(d, 3, W, H, ss_ref=1, seed=3) and not P.scene_matches(d, 2, W, H, ss_ref=2, seed=3)
    img = d / "images/00000000.png"
    img.write_bytes(b"marker")                        # a reused scene is left as it is
    P.make_scene(d, n_views=2, width=W, height=H, ss_ref=1, seed=3, reuse=True)
    assert img.read_bytes() == b"marker"
    P.make_scene(d, n_views=2, width=W, height=H, ss_ref=1, seed=4, reuse=True)   # other settings
    assert img.read_bytes() != b"marker" and P.scene_matches(d, 2, W, H, ss_ref=1, seed=4)
    (d / P.VIEWS_JSON).unlink()                       # half-written: views.json comes last
    assert not P.scene_matches(d, 2, W, H, ss_ref=1, seed=4)


def test_texture_is_finer_than_the_mesh(spec):
    """Per-vertex colour (what a mesh can carry) interpolated over the triangles misses most of
    the texture: the pattern has energy far above the vertex sampling frequency."""
    rng = np.random.default_rng(0)
    v, f = spec.mesh.vertices.astype(np.float64), spec.mesh.faces
    obj = spec.face_object
    t = rng.integers(0, len(f), 20000)
    b = rng.dirichlet(np.ones(3), len(t))
    p = np.einsum("nk,nkc->nc", b, v[f[t]])
    true = P.albedo(spec, p, obj[t])
    per_vertex = np.einsum("nk,nkc->nc", b, np.stack([P.albedo(spec, v[f[t, k]], obj[t]) for k in range(3)], 1))
    err = np.sqrt(((per_vertex - true) ** 2).mean())
    # Compare with the texture's own variation within each object.
    spread = np.sqrt(np.mean([((true[obj[t] == k] - true[obj[t] == k].mean(0)) ** 2).mean() for k in range(4)]))
    assert err > 0.5 * spread, (err, spread)
    # Edge lengths: the finest texture period is several times shorter than the mesh edges.
    edges = np.linalg.norm(v[f[:, 1]] - v[f[:, 0]], axis=1)
    assert 1 / spec.freqs.max() < np.median(edges) / 2


def test_shading_depends_on_view_direction(spec):
    p = np.array([[1.05, -0.5, 1.31]])                        # top of the sphere
    n = np.array([[0.0, 0.0, 1.0]])
    o = np.array([2])
    mirror = spec.light_dir * np.array([-1, -1, 1])           # reflection of the light about n
    seen_at_highlight = P.shade(spec, p, n, -mirror[None], o)
    seen_elsewhere = P.shade(spec, p, n, -np.array([[-mirror[0], -mirror[1], mirror[2]]]), o)
    d = seen_at_highlight - seen_elsewhere
    assert np.all(d > 0.1) and np.all(d <= spec.specular + 1e-9)


def test_reference_render_alpha_and_background(spec):
    cams, _ = P.make_cameras(spec, 2, W, H)
    rgb, alpha = P.reference_render(spec, cams[0], 3)
    assert rgb.shape == (H, W, 3) and alpha.shape == (H, W)
    assert alpha.min() == 0 and alpha.max() == 1
    edge = (alpha > 0) & (alpha < 1)
    assert 0 < edge.sum() < 0.2 * alpha.size                 # silhouette pixels partially covered
    np.testing.assert_array_equal(rgb[alpha == 0], 0)
    # Edge pixels blend with the (black) background: darker than their covered neighbours on average.
    full = alpha == 1
    assert rgb[edge].mean() < rgb[full].mean()


def test_multiscale_layout_has_close_ups(tmp_path):
    spec = P.make_spec(1)
    cams, close = P.make_cameras(spec, 9, 40, 30, "multiscale", seed=1)
    assert close == [i % 3 == 2 for i in range(9)]
    depth = [np.median(rasterize(spec.mesh, c).depth[rasterize(spec.mesh, c).mask]) for c in cams]
    far = np.median([d for d, c in zip(depth, close) if not c])
    near = np.median([d for d, c in zip(depth, close) if c])
    assert 5 < far / near < 12
    for c, cl in zip(cams, close):
        if cl:
            assert rasterize(spec.mesh, c).mask.mean() > 0.85   # close-ups look at surface
    d = P.make_scene(tmp_path / "ms", n_views=3, width=40, height=30, ss_ref=1, seed=1, layout="multiscale")
    info = json.loads((d / "views.json").read_text())
    assert [x["closeup"] for x in info["views"]] == [False, False, True]


def test_flythrough_is_smooth_and_sees_the_scene(tmp_path, scene_dir):
    cams = P.make_flythrough(scene_dir, 48, 64, 36)
    assert len(cams) == 48 and all((c.width, c.height) == (64, 36) for c in cams)
    centres = np.array([c.center for c in cams])
    steps = np.linalg.norm(np.diff(np.vstack([centres, centres[:1]]), axis=0), axis=1)
    assert steps.max() < 2.0 * np.median(steps) and steps.max() < 1.5     # closed, no jumps
    fx = np.array([c.fx for c in cams])
    assert fx.max() / fx.min() > 1.2
    assert np.abs(np.diff(fx)).max() < 0.05 * fx.mean()
    spec = P.load_spec(scene_dir)
    for c in cams[::12]:
        cov = rasterize(spec.mesh, c).mask.mean()
        assert 0.2 < cov < 1.0
    assert len(P.make_flythrough(spec, 5, 32, 24)) == 5
