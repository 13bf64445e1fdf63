"""Camera convention on the Blender side: OpenCV K / world-to-camera <-> Blender camera.

The pure-math tests need only numpy; the others check against Blender's own camera code
(view frame, projection matrix) through the bpy module and skip without it.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from blender_fixtures import TINY_VIEWS, look_at, read_obj_vertices
from xscale_blender.core import camera_convert as cc

# (width, height, fx, fy, cx, cy): landscape/portrait, fx > fy and fx < fy, off-centre points.
CASES = [
    (1920, 1080, 1500.0, 1500.0, 960.0, 540.0),
    (1920, 1080, 1650.3, 1580.9, 1003.7, 511.2),
    (1080, 1920, 1580.9, 1650.3, 511.2, 1003.7),
    (4000, 3000, 3100.0, 3275.5, 1890.4, 1560.8),
    (600, 900, 700.0, 655.0, 330.25, 420.75),
    (48, 32, 52.0, 50.0, 24.7, 15.2),
]
EYES = [(0.3, -3.0, 2.0), (12.0, 40.0, -7.5), (-2.0, 0.5, 0.1)]


def K_of(fx, fy, cx, cy):
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def rel_err(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def project(K, E, pts):
    pc = pts @ E[:3, :3].T + E[:3, 3]
    uv = pc @ K.T
    return uv[:, :2] / uv[:, 2:]


def sample_points(E, n=40, seed=0):
    """World points in front of the camera with world-to-camera E."""
    rng = np.random.default_rng(seed)
    pc = np.stack([rng.uniform(-0.6, 0.6, n), rng.uniform(-0.4, 0.4, n), rng.uniform(1.0, 5.0, n)], 1)
    pc[:, :2] *= pc[:, 2:]
    R, t = E[:3, :3], E[:3, 3]
    return (pc - t) @ R


# --- pure math -------------------------------------------------------------------------------

@pytest.mark.parametrize("case,eye", list(itertools.product(CASES, EYES)))
def test_round_trip_exact(case, eye):
    w, h, fx, fy, cx, cy = case
    K, E = K_of(fx, fy, cx, cy), look_at(eye, (0.1, -0.2, 0.3))
    bc = cc.opencv_to_blender(K, E, w, h)
    assert min(bc.pixel_aspect_x, bc.pixel_aspect_y) == 1.0
    K2, E2 = cc.blender_to_opencv(bc)
    assert rel_err(K2, K) < 1e-12
    assert rel_err(E2, E) < 1e-12


def test_matrix_world_axes():
    # A camera at the origin looking along world +Y with +Z up: Blender's local -Z must be +Y.
    E = look_at((0, 0, 0), (0, 1, 0))
    M = cc.matrix_world_from_world_to_camera(E)
    np.testing.assert_allclose(M[:3, :3] @ [0, 0, -1], [0, 1, 0], atol=1e-15)
    np.testing.assert_allclose(M[:3, :3] @ [0, 1, 0], [0, 0, 1], atol=1e-15)


def test_scaled_matrix_world_is_ignored():
    E = look_at((1, 2, 3), (0, 0, 0))
    M = cc.matrix_world_from_world_to_camera(E)
    M[:3, :3] *= np.array([2.0, 0.5, 3.0])   # object scale, which Blender drops for cameras
    assert rel_err(cc.world_to_camera_from_matrix_world(M), E) < 1e-12


@pytest.mark.parametrize("case", CASES)
def test_inverse_other_sensor_fits(case):
    """The same projection described with AUTO / VERTICAL fit gives the same K."""
    w, h, fx, fy, cx, cy = case
    K = K_of(fx, fy, cx, cy)
    bc = cc.opencv_to_blender(K, np.eye(4), w, h)
    ycor = bc.pixel_aspect_y / bc.pixel_aspect_x
    # VERTICAL: the sensor height spans ycor * H pixel widths; shifts are in units of that span.
    v = cc.BlenderCamera(**{**bc.__dict__})
    v.sensor_fit, v.sensor_height = "VERTICAL", 24.0
    v.lens = fx * v.sensor_height / (ycor * h)
    v.shift_x = bc.shift_x * w / (ycor * h)
    v.shift_y = bc.shift_y * w / (ycor * h)
    assert rel_err(cc.intrinsics_from_blender(v), K) < 1e-12
    # AUTO uses sensor_width along whichever (aspect-corrected) side is longer.
    a = cc.BlenderCamera(**{**bc.__dict__})
    a.sensor_fit = "AUTO"
    if cc.fitted_axis("AUTO", w, h, bc.pixel_aspect_x, bc.pixel_aspect_y) == "VERTICAL":
        a.sensor_width, a.lens, a.shift_x, a.shift_y = v.sensor_height, v.lens, v.shift_x, v.shift_y
    assert rel_err(cc.intrinsics_from_blender(a), K) < 1e-12


def test_render_percentage():
    assert cc.render_size(1920, 1080, 50) == (960, 540)
    assert cc.render_size(1001, 777, 33) == (330, 256)   # Blender truncates


def test_skew_rejected():
    K = K_of(100, 100, 50, 50)
    K[0, 1] = 0.5
    with pytest.raises(ValueError):
        cc.opencv_to_blender(K, np.eye(4), 100, 100)


# --- against Blender -------------------------------------------------------------------------

def blender_pixels(bpy, scene, cam_obj, pts):
    """Pixels of world points through Blender's camera frame (bpy_extras.world_to_camera_view)."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector
    r = scene.render
    w, h = cc.render_size(r.resolution_x, r.resolution_y, r.resolution_percentage)
    ndc = np.array([tuple(world_to_camera_view(scene, cam_obj, Vector(p))) for p in pts])
    return np.stack([ndc[:, 0] * w, (1.0 - ndc[:, 1]) * h], 1)


def blender_pixels_projection_matrix(bpy, scene, cam_obj, pts):
    """Pixels through the camera's projection matrix and its inverted normalised object matrix."""
    r = scene.render
    w, h = cc.render_size(r.resolution_x, r.resolution_y, r.resolution_percentage)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    P = np.array(cam_obj.calc_matrix_camera(depsgraph, x=w, y=h, scale_x=r.pixel_aspect_x,
                                            scale_y=r.pixel_aspect_y))
    V = np.linalg.inv(np.array(cam_obj.matrix_world.normalized()))
    clip = np.c_[pts, np.ones(len(pts))] @ (P @ V).T
    ndc = clip[:, :2] / clip[:, 3:]
    return np.stack([(ndc[:, 0] + 1) * 0.5 * w, (1 - ndc[:, 1]) * 0.5 * h], 1)


@pytest.mark.parametrize("case", CASES)
def test_blender_object_round_trip(blank, bpy_module, case):
    from xscale_blender import campath_export, importer
    w, h, fx, fy, cx, cy = case
    K = K_of(fx, fy, cx, cy)
    coll = bpy_module.context.scene.collection
    for k, eye in enumerate(EYES):
        E = look_at(eye, (0.1, -0.2, 0.3))
        ob = importer.make_camera(f"cam{k}", K, E, w, h, coll)
        blank.camera = ob
        importer.apply_camera_settings(blank, ob)
        cam = campath_export.opencv_camera(blank, ob)
        assert (cam.width, cam.height) == (w, h)
        assert rel_err(cam.K, K) < 1e-6
        assert rel_err(cam.world_to_camera, E) < 1e-6


@pytest.mark.parametrize("case", CASES[1:])
def test_blender_projection_matches_opencv(blank, bpy_module, case):
    from xscale_blender import importer
    w, h, fx, fy, cx, cy = case
    K, E = K_of(fx, fy, cx, cy), look_at((3.0, -4.0, 2.0), (0.0, 0.0, 0.5))
    ob = importer.make_camera("cam", K, E, w, h, blank.collection)
    blank.camera = ob
    importer.apply_camera_settings(blank, ob)
    pts = sample_points(E)
    expected = project(K, E, pts)
    tol = 2e-6 * max(w, h)          # Blender works in float32
    np.testing.assert_allclose(blender_pixels(bpy_module, blank, ob, pts), expected, atol=tol)
    np.testing.assert_allclose(blender_pixels_projection_matrix(bpy_module, blank, ob, pts), expected, atol=tol)


@pytest.mark.parametrize("fit,w,h,pax,pay", [
    ("AUTO", 1920, 1080, 1.0, 1.0), ("AUTO", 1080, 1920, 1.0, 1.0), ("AUTO", 1000, 980, 1.0, 1.1),
    ("VERTICAL", 1920, 1080, 1.0, 1.0), ("VERTICAL", 900, 1200, 1.3, 1.0),
    ("HORIZONTAL", 900, 1200, 1.0, 1.25)])
def test_inverse_matches_blender_for_any_fit(blank, bpy_module, fit, w, h, pax, pay):
    """K computed from arbitrary Blender settings projects like Blender itself."""
    from xscale_blender import campath_export
    bpy = bpy_module
    data = bpy.data.cameras.new("c")
    data.sensor_fit, data.sensor_width, data.sensor_height = fit, 32.0, 21.0
    data.lens, data.shift_x, data.shift_y = 41.5, 0.07, -0.045
    ob = bpy.data.objects.new("c", data)
    blank.collection.objects.link(ob)
    E = look_at((-1.0, 3.0, 2.5), (0.2, 0.0, 0.0))
    from mathutils import Matrix
    ob.matrix_world = Matrix(cc.matrix_world_from_world_to_camera(E).tolist())
    r = blank.render
    r.resolution_x, r.resolution_y, r.pixel_aspect_x, r.pixel_aspect_y = w, h, pax, pay
    blank.camera = ob
    cam = campath_export.opencv_camera(blank, ob)
    pts = sample_points(E)
    np.testing.assert_allclose(project(cam.K, cam.world_to_camera, pts),
                               blender_pixels(bpy, blank, ob, pts), atol=2e-6 * max(w, h))


def test_imported_scene_projects_like_mvsnet(blank, bpy_module, tiny_scene):
    """Mesh vertices (as imported into Blender) through each imported camera land where the
    MVSNet camera puts the mesh file's vertices: same world frame, exact intrinsics."""
    from backend.cameras import read_mvsnet_cam
    from xscale_blender import importer
    bpy = bpy_module
    assert bpy.ops.import_scene.xscale_mvsnet(directory=str(tiny_scene), show_photos=True) == {"FINISHED"}
    file_verts = read_obj_vertices(tiny_scene / "1.obj")
    meshes = [ob for ob in blank.objects if ob.type == "MESH"]
    assert len(meshes) == 1
    me = meshes[0]
    M = np.array(me.matrix_world)
    verts = np.array([tuple(v.co) for v in me.data.vertices]) @ M[:3, :3].T + M[:3, 3]
    # no axis change: the same vertex set (the OBJ importer keeps the order)
    np.testing.assert_allclose(verts, file_verts, atol=1e-6)
    for name, w, h, *_ in TINY_VIEWS:
        ob = bpy.data.objects[name]
        assert ob.data.background_images[0].image.filepath.endswith(f"{name}.png")
        blank.camera = ob
        importer.apply_camera_settings(blank, ob)
        assert (blank.render.resolution_x, blank.render.resolution_y) == (w, h)
        E, K, _ = read_mvsnet_cam(tiny_scene / "cams" / f"{name}_cam.txt")
        expected = project(K, E, file_verts)
        np.testing.assert_allclose(blender_pixels(bpy, blank, ob, verts), expected, atol=1e-4)
        np.testing.assert_allclose(blender_pixels_projection_matrix(bpy, blank, ob, verts), expected, atol=1e-4)


def test_held_out_cameras_marked(blank, bpy_module, tmp_path):
    from blender_fixtures import make_tiny_scene
    views = [(f"v{i:03d}", 40, 30, 41.0, 40.0, 20.5, 14.5, (3 * np.cos(i), 3 * np.sin(i), 2.0))
             for i in range(10)]
    root = make_tiny_scene(tmp_path / "ten", views)
    bpy = bpy_module
    bpy.ops.import_scene.xscale_mvsnet(directory=str(root), test_every=4, show_photos=False,
                                       import_mesh=False)
    from backend.scene import load_scene
    _, test = load_scene(root).split(4)
    marked = sorted(ob.name for ob in blank.objects if ob.get("xscale_split") == "test")
    assert marked == sorted(f"v{i:03d}" for i in test) and marked
    held = [c for c in bpy.data.collections if c.name.endswith("held-out")][0]
    assert sorted(ob.name for ob in held.objects) == marked
    assert blank.camera.get("xscale_split") == "train"
    assert blank.xscale.test_every == 4


def test_active_camera_switch_sets_resolution(blank, bpy_module, tiny_scene):
    bpy = bpy_module
    bpy.ops.import_scene.xscale_mvsnet(directory=str(tiny_scene), show_photos=False)
    assert (blank.render.resolution_x, blank.render.resolution_y) == (48, 32)
    blank.camera = bpy.data.objects["view_001"]
    bpy.context.view_layer.update()   # runs depsgraph_update_post, like a UI change
    assert (blank.render.resolution_x, blank.render.resolution_y) == (32, 48)
    assert blank.render.pixel_aspect_x == pytest.approx(47.5 / 44.0, rel=1e-6)


def test_import_errors_are_reports(blank, bpy_module, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="images"):
        bpy_module.ops.import_scene.xscale_mvsnet(directory=str(tmp_path / "empty"))


def test_ply_mesh_keeps_world_frame(blank, bpy_module, tmp_path):
    from blender_fixtures import bumpy_grid
    from xscale_blender import importer
    v, f = bumpy_grid(5)
    lines = ["ply", "format ascii 1.0", f"element vertex {len(v)}", "property float x",
             "property float y", "property float z", f"element face {len(f)}",
             "property list uchar int vertex_indices", "end_header"]
    lines += [f"{x} {y} {z}" for x, y, z in v] + [f"3 {a} {b} {c}" for a, b, c in f]
    (tmp_path / "mesh.ply").write_text("\n".join(lines) + "\n")
    (ob,) = importer.import_mesh(bpy_module.context, tmp_path / "mesh.ply", blank.collection)
    M = np.array(ob.matrix_world)
    got = np.array([tuple(p.co) for p in ob.data.vertices]) @ M[:3, :3].T + M[:3, 3]
    np.testing.assert_allclose(np.sort(got, axis=0), np.sort(v, axis=0), atol=1e-6)
