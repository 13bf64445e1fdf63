"""CG objects mixed into the capture (xscale_blender/compositing.py) and the passes compositors
use beside Combined and Depth, in Blender (bpy module, CPU, tiny images).

The captured place is the striped plane of the `scene` fixture, rendered by the XScale-NVS
engine; the CG objects are a cube in front of it, a cube below it (behind it, seen from the
camera) and a sun, rendered by Cycles. What each pixel should show comes from the exact CPU
rasterizer: which surface is nearest along every sub-sample's ray, and which plane points see
the sun past the front cube."""
from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from blender_fixtures import ROOT, import_trained
from test_blender_engine import ENGINE, read_layers

SIZE = 96, 64                       # the imported camera's 48x32 at 200 %
FRONT = ((0.0, 0.0, 0.35), 0.4)     # centre, side: above the plane, between it and the camera
BEHIND = ((-1.2, -0.7, -0.3), 0.5)  # below the plane, partly seen past its far edge
SUN_ROTATION = (0.5, 0.3, 0.0)


def cube_faces(centre, side) -> tuple[np.ndarray, list]:
    """Vertices and quads of an axis-aligned cube (outward faces)."""
    h = side / 2
    v = np.array([(x, y, z) for x in (-h, h) for y in (-h, h) for z in (-h, h)]) + centre
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return v, quads


def add_cube(bpy, scene, name, centre, side):
    v, quads = cube_faces(np.zeros(3), side)
    me = bpy.data.meshes.new(name)
    me.from_pydata([tuple(p) for p in v], [], quads)
    ob = bpy.data.objects.new(name, me)
    ob.location = centre
    scene.collection.objects.link(ob)        # where Add > Mesh puts it in a scene without collections
    return ob


def exr_output(scene, path) -> None:
    """Renders of `scene` written as one-layer float RGBA EXR files at `path`."""
    im = scene.render.image_settings
    if hasattr(im, "media_type"):          # Blender 5.0+
        im.media_type = "IMAGE"
    im.file_format, im.color_mode, im.color_depth = "OPEN_EXR", "RGBA", "32"
    scene.render.filepath = str(path)


def rgba(path) -> np.ndarray:
    from backend.imageio import read_exr
    ch = read_exr(path)
    return np.stack([ch[c] for c in "RGBA"], -1)


@pytest.fixture
def mixed(blank, bpy_module, scene, trained_run, monkeypatch, tmp_path):
    """The captured plane (XScale-NVS) with the two cubes and the sun, set up by the operator."""
    bpy = bpy_module
    import_trained(bpy, blank, scene, trained_run, monkeypatch)
    blank.render.resolution_percentage = 200
    blank.render.film_transparent = True
    front = add_cube(bpy, blank, "front", *FRONT)
    behind = add_cube(bpy, blank, "behind", *BEHIND)
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = SUN_ROTATION
    blank.collection.objects.link(sun)
    assert bpy.ops.xscale.mix_cg(engine="CYCLES") == {"FINISHED"}
    from xscale_blender import compositing
    cg = compositing.cg_scene(blank)
    cg.cycles.samples, cg.cycles.use_denoising, cg.cycles.seed = 16, False, 1
    cg.cycles.pixel_filter_type, cg.cycles.filter_width = "BOX", 1.0     # pixels as truth() sees them
    exr_output(blank, tmp_path / "composite.exr")
    exr_output(cg, tmp_path / "cg.exr")
    return SimpleNamespace(scene=blank, cg=cg, front=front, behind=behind, sun=sun)


def truth(scene, ss: int = 4):
    """Per pixel of the scene camera, from ss x ss sub-samples: the fraction whose nearest surface
    is the plane, the front cube and the behind cube; the fraction of the plane's sub-samples that
    have the behind cube further along the ray; the fraction that see the front cube between them
    and the sun."""
    from backend.meshio import Mesh, load_mesh
    from backend.raster_cpu import interpolate, rasterize
    from xscale_blender import campath_export
    cam = campath_export.opencv_camera(scene, scene.camera)
    assert (cam.width, cam.height) == SIZE
    plane = load_mesh(str(scene.xscale.scene_dir) + "/1.obj")
    parts = [(plane.vertices, plane.faces)]
    for centre, side in (FRONT, BEHIND):
        v, quads = cube_faces(np.array(centre), side)
        parts.append((v, np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])))
    offsets = np.cumsum([0] + [len(v) for v, _ in parts])
    mesh = Mesh(np.concatenate([v for v, _ in parts]).astype(np.float32),
                np.concatenate([f + o for (_, f), o in zip(parts, offsets)]).astype(np.int32))
    owner = np.concatenate([np.full(len(f), k) for k, (_, f) in enumerate(parts)])
    big = cam.scaled(ss)
    r = rasterize(mesh, big)
    hit = np.where(r.tri >= 0, owner[np.maximum(r.tri, 0)], -1)
    behind = rasterize(Mesh(parts[2][0].astype(np.float32), parts[2][1].astype(np.int32)), big)

    # sun: a plane point is shadowed when its ray to the sun enters the front cube (slab test)
    from mathutils import Euler
    to_sun = np.array(Euler(SUN_ROTATION).to_matrix().col[2])
    P = interpolate(r, mesh.faces, mesh.vertices)
    lo, hi = np.array(FRONT[0]) - FRONT[1] / 2, np.array(FRONT[0]) + FRONT[1] / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (lo - P) / to_sun, (hi - P) / to_sun
    near, far = np.minimum(t0, t1).max(-1), np.maximum(t0, t1).min(-1)
    shadowed = (hit == 0) & (far > np.maximum(near, 0))

    def per_pixel(a):
        h, w = SIZE[1], SIZE[0]
        return a.reshape(h, ss, w, ss).mean((1, 3))
    return SimpleNamespace(plane=per_pixel(hit == 0), front=per_pixel(hit == 1), behind=per_pixel(hit == 2),
                           behind_hidden=per_pixel((hit == 0) & behind.mask & (behind.depth > r.depth)),
                           shadow=per_pixel(shadowed))


def interior(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` whose eight neighbours are in it too (Cycles' samples fall anywhere in a
    pixel, truth()'s on a grid)."""
    m = np.pad(mask, 1)
    h, w = mask.shape
    return np.logical_and.reduce([m[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])


def render(bpy, scene) -> None:
    """F12 of `scene` (the scene in context or not), its file written."""
    assert bpy.ops.render.render(write_still=True, scene=scene.name) == {"FINISHED"}


def test_cg_in_front_covers_the_capture_behind_is_covered_and_shadows_darken_it(mixed, bpy_module, tmp_path):
    bpy = bpy_module
    scene, cg = mixed.scene, mixed.cg
    render(bpy, scene)
    comp = rgba(tmp_path / "composite.exr")
    render(bpy, cg)
    cg_alone = rgba(tmp_path / "cg.exr")
    scene.render.use_compositing = False
    scene.render.filepath = str(tmp_path / "capture.exr")
    render(bpy, scene)
    capture = rgba(tmp_path / "capture.exr")
    t = truth(scene)
    assert comp.shape == capture.shape == cg_alone.shape == (SIZE[1], SIZE[0], 4)

    # a CG object in front of the capture covers it
    front = interior(t.front == 1)
    assert front.sum() > 150
    assert np.abs(comp[front] - cg_alone[front]).max() < 1e-5 and (cg_alone[front][:, 3] == 1).all()
    assert np.abs(comp[front][:, :3] - capture[front][:, :3]).mean() > 0.1

    # the capture covers a CG object behind it; where the object is seen past the capture's edge
    # it is there
    hidden = interior((t.behind_hidden == 1) & (t.plane == 1) & (t.shadow == 0))
    assert hidden.sum() > 40
    assert (cg_alone[hidden][:, 3] == 0).all()                    # held out by the capture mesh
    assert np.abs(comp[hidden] - capture[hidden]).mean() < 0.03
    seen = interior(t.behind == 1)
    assert seen.sum() > 20
    assert np.abs(comp[seen] - cg_alone[seen]).max() < 1e-5 and (comp[seen][:, 3] == 1).all()
    assert (capture[seen][:, 3] == 0).all()

    # the front cube's shadow darkens the capture where it falls, and only there
    shade = interior((t.shadow == 1) & (t.plane == 1))
    lit = interior((t.plane == 1) & (t.shadow == 0) & (t.behind_hidden == 0))
    assert shade.sum() > 30 and lit.sum() > 1000
    assert (cg_alone[shade][:, 3] == 0).all()                     # the capture mesh itself is not drawn
    assert comp[shade][:, :3].mean() < 0.3 * capture[shade][:, :3].mean()
    assert abs(comp[lit][:, :3].mean() / capture[lit][:, :3].mean() - 1) < 0.08   # light the cube reflects
    a_cg = cg_alone[..., 3]                                          # premultiplied over
    assert np.abs(comp[..., 3] - (a_cg + capture[..., 3] * (1 - a_cg))).max() < 1e-5

    # nothing anywhere: transparent
    empty = interior((t.plane == 0) & (t.front == 0) & (t.behind == 0))
    assert empty.sum() > 0 and (comp[empty] == 0).all()


# `blender -b shot.blend -a`, with the bpy module: the composite of every frame.
# (bpy 4.2 can crash while the interpreter shuts down: the script ends the process itself.)
ANIMATE = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
import bpy, xscale_blender
xscale_blender.register()
bpy.ops.wm.open_mainfile(filepath=sys.argv[2])
bpy.context.scene.render.filepath = sys.argv[3]
assert bpy.ops.render.render(animation=True) == {"FINISHED"}
sys.stdout.flush()
os._exit(0)
"""


def test_f12_animation_and_headless_render_the_same_composite(mixed, bpy_module, tmp_path):
    bpy = bpy_module
    scene = mixed.scene
    scene.frame_start = scene.frame_end = 1
    render(bpy, scene)
    still = rgba(tmp_path / "composite.exr")
    assert (still[..., 3] == 1).sum() > 1000 and still[..., :3].std() > 0.05

    scene.render.filepath = str(tmp_path / "anim" / "f_")
    assert bpy.ops.render.render(animation=True) == {"FINISHED"}
    assert np.abs(rgba(tmp_path / "anim" / "f_0001.exr") - still).max() < 1e-5

    blend = tmp_path / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend), copy=True)
    script = tmp_path / "animate.py"
    script.write_text(ANIMATE)
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"))
    res = subprocess.run([sys.executable, str(script), str(ROOT), str(blend), str(tmp_path / "headless" / "f_")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert np.abs(rgba(tmp_path / "headless" / "f_0001.exr") - still).max() < 1e-5


def test_cg_scene_keeps_in_step_with_the_scene(mixed, bpy_module):
    """Camera, size, pixel aspect, frames and the scene's objects and collections follow on the
    next depsgraph update; pressing the button again updates rather than duplicates."""
    bpy = bpy_module
    from xscale_blender import compositing
    scene, cg = mixed.scene, mixed.cg
    assert cg.camera == scene.camera and cg.render.engine == "CYCLES" and cg.render.film_transparent
    assert {o.name for o in cg.collection.objects} == {"front", "behind", "sun"}
    scene.camera = bpy.data.objects["00000003"]
    added = add_cube(bpy, scene, "added", (0.5, 0.5, 0.2), 0.2)
    coll = bpy.data.collections.new("props")
    scene.collection.children.link(coll)
    scene.collection.objects.unlink(mixed.behind)
    bpy.context.view_layer.update()
    assert cg.camera == scene.camera
    assert added.name in cg.collection.objects and coll.name in cg.collection.children
    assert mixed.behind.name not in cg.collection.objects
    scene.render.pixel_aspect_x, scene.render.resolution_x, scene.frame_end = 1.5, 90, 40
    bpy.context.view_layer.update()
    assert (cg.render.pixel_aspect_x, cg.render.resolution_x, cg.frame_end) == (1.5, 90, 40)

    tree = compositing.cn.tree(scene, "Compositing")
    ours = sorted(n.name for n in tree.nodes if n.name.startswith(compositing.NODE_PREFIX))
    # (Blender 4.x puts a Render Layers node of its own into a new tree: it is not left lying there)
    assert all(n.name in ours for n in tree.nodes if n.bl_idname == "CompositorNodeRLayers")
    assert bpy.ops.xscale.mix_cg(engine="CYCLES") == {"FINISHED"}
    assert compositing.cg_scene(scene) == cg and len([s for s in bpy.data.scenes if s.name.startswith(scene.name)]) == 2
    with bpy.context.temp_override(scene=cg):
        with pytest.raises(RuntimeError, match=f"this is the CG scene of '{scene.name}'"):
            bpy.ops.xscale.mix_cg()
    assert sorted(n.name for n in tree.nodes if n.name.startswith(compositing.NODE_PREFIX)) == ours


def test_no_denoising_where_cycles_cannot(mixed, bpy_module, monkeypatch):
    """A Blender without OpenImageDenoise (Debian's) fails every denoised frame, and the composite
    comes out black: the set-up switches the CG scene's denoising off there."""
    from xscale_blender import compositing
    cg = mixed.cg
    cg.cycles.use_denoising = True
    assert bpy_module.ops.xscale.mix_cg(engine="CYCLES") == {"FINISHED"} and cg.cycles.use_denoising
    monkeypatch.setattr(compositing, "can_denoise", lambda: False)
    assert bpy_module.ops.xscale.mix_cg(engine="CYCLES") == {"FINISHED"} and not cg.cycles.use_denoising


def test_eevee_set_up_holds_the_capture_out(mixed, bpy_module):
    """EEVEE has no shadow catcher: the capture's collection is a holdout in the CG scene's view
    layer (this scene's viewport keeps showing the mesh), no shadow node; Cycles again undoes it."""
    bpy = bpy_module
    from xscale_blender import compositing
    scene = mixed.scene
    mesh = compositing.capture_meshes(scene)
    assert [m.name for m in mesh] == ["1"]
    assert bpy.ops.xscale.mix_cg(engine="EEVEE") == {"FINISHED"}
    cg = compositing.cg_scene(scene)
    assert cg.render.engine in ("BLENDER_EEVEE", "BLENDER_EEVEE_NEXT") and not mesh[0].is_shadow_catcher
    capture_layer = cg.view_layers[0].layer_collection.children[mesh[0].users_collection[0].name]
    main_layer = bpy.context.view_layer.layer_collection.children[mesh[0].users_collection[0].name]
    assert capture_layer.holdout and not main_layer.holdout
    tree = compositing.cn.tree(scene, "Compositing")
    assert not any("shadows" in n.name for n in tree.nodes)
    link = compositing.cn.result_input(tree).links[0]
    assert link.from_node.name == compositing.NODE_PREFIX + "CG over capture"
    assert bpy.ops.xscale.mix_cg(engine="CYCLES") == {"FINISHED"}
    assert cg.render.engine == "CYCLES" and mesh[0].is_shadow_catcher and not capture_layer.holdout


def test_refused_without_a_capture_or_a_camera(blank, bpy_module):
    bpy = bpy_module
    with pytest.raises(RuntimeError, match="no captured mesh in this scene: import the capture first"):
        bpy.ops.xscale.mix_cg()
    from blender_fixtures import make_tiny_scene
    import tempfile
    root = make_tiny_scene(tempfile.mkdtemp() + "/tiny")
    assert bpy.ops.import_scene.xscale_mvsnet(directory=str(root), show_photos=False) == {"FINISHED"}
    blank.camera = None
    with pytest.raises(RuntimeError, match="the scene has no camera"):
        bpy.ops.xscale.mix_cg()


def test_panels_draw_the_set_up(mixed, bpy_module):
    from test_blender_ui import draw
    from xscale_blender import compositing
    bpy = bpy_module
    for panel in (compositing.VIEW3D_PT_xscale_cg, compositing.RENDER_PT_xscale_cg):
        log = draw(bpy, panel, bpy.context)
        assert [c[1][0] for c in log if c[0] == "operator"] == ["xscale.mix_cg"] * 2
        assert any(c[0] == "label" and f"CG scene: {mixed.cg.name} (Cycles)" in c[2]["text"] for c in log)
        assert ("prop", (mixed.cg.cycles, "samples")) in [(c[0], c[1]) for c in log]


def test_passes_match_cycles(engine_scene_passes, bpy_module, tmp_path):
    """Normal, Position and Depth of the XScale-NVS engine as Cycles writes them for the same
    mesh and camera: the same pass and channel names, the same values inside the mesh, the
    normal premultiplied by alpha at its edges, and 0 (depth 1e10) off it."""
    bpy = bpy_module
    scene = engine_scene_passes
    layers = {}
    for engine in (ENGINE, "CYCLES"):
        scene.render.engine = engine
        scene.render.filepath = str(tmp_path / f"{engine}.exr")
        render(bpy, scene)
        layers[engine] = read_layers(tmp_path / f"{engine}.exr")
    ours, cycles = layers[ENGINE], layers["CYCLES"]
    assert sorted(ours) == sorted(cycles)

    def get(ls, name):
        return np.stack([ls[f"ViewLayer.{name}.{c}"] for c in "XYZ"], -1)
    a, a_cycles = ours["ViewLayer.Combined.A"], cycles["ViewLayer.Combined.A"]
    inside = (a == 1) & (a_cycles == 1)
    off = (a == 0) & (a_cycles == 0)
    assert inside.sum() > 500 and off.sum() > 20
    for name in ("Position", "Normal"):
        assert np.abs(get(ours, name)[inside] - get(cycles, name)[inside]).max() < 1e-3
    z, z_cycles = ours["ViewLayer.Depth.Z"], cycles["ViewLayer.Depth.Z"]
    assert np.abs(z[inside] - z_cycles[inside]).max() < 1e-3
    for ls, alpha in ((ours, a), (cycles, a_cycles)):
        edge = (alpha > 0) & (alpha < 1)
        assert edge.sum() > 10
        assert np.allclose(np.linalg.norm(get(ls, "Normal")[edge], axis=-1), alpha[edge], atol=2e-3)
        assert (get(ls, "Normal")[off] == 0).all() and (get(ls, "Position")[off] == 0).all()
        assert (ls["ViewLayer.Depth.Z"][off] == np.float32(1e10)).all()


@pytest.fixture
def engine_scene_passes(blank, bpy_module, scene, trained_run, monkeypatch):
    """The captured plane through its first camera, Z, Normal and Position on, multilayer EXR
    output (square pixels), Cycles set to a box filter of one pixel (the engine's sub-samples are a
    box)."""
    bpy = bpy_module
    from test_blender_engine import multilayer_exr
    import_trained(bpy, blank, scene, trained_run, monkeypatch)
    blank.render.resolution_percentage = 200
    blank.render.pixel_aspect_x = blank.render.pixel_aspect_y = 1.0   # multilayer EXR in 5.0 needs 1
    blank.render.film_transparent = True
    vl = bpy.context.view_layer
    vl.use_pass_z = vl.use_pass_normal = vl.use_pass_position = True
    blank.cycles.samples, blank.cycles.use_denoising = 64, False
    blank.cycles.pixel_filter_type, blank.cycles.filter_width = "BOX", 1.0
    multilayer_exr(blank)
    return blank
