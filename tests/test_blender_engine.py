"""The XScale-NVS render engine in Blender (bpy module, CPU): F12 and animation frames through the
render server match `backend render` of the same camera path, the Depth pass is there, one server
serves every frame, a dead server is reported and replaced, and no server outlives Blender."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from blender_fixtures import ROOT, import_trained
from conftest import cli

ENGINE = "XSCALE_NVS"
TOL = 1 / 255


@pytest.fixture
def engine_scene(blank, bpy_module, scene, trained_run, monkeypatch, tmp_path):
    """The striped-plane scene imported, its trained run set, the engine selected, and a camera
    'shot' (square pixels, 40x30) that dollies, zooms and shifts over frames 1-3."""
    bpy = bpy_module
    import_trained(bpy, blank, scene, trained_run, monkeypatch)
    r = blank.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = 40, 30, 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    r.film_transparent = True
    vl = bpy.context.view_layer
    vl.use_pass_z = vl.use_pass_normal = vl.use_pass_position = True
    src = bpy.data.objects["00000000"]
    data = bpy.data.cameras.new("shot")
    data.sensor_fit, data.sensor_width = "HORIZONTAL", 36.0
    cam = bpy.data.objects.new("shot", data)
    blank.collection.objects.link(cam)
    cam.matrix_world = src.matrix_world
    back = np.array(src.matrix_world.to_3x3().col[2])
    base = np.array(src.matrix_world.translation)
    for f, (lens, shift) in {1: (30.0, 0.0), 3: (38.0, 0.08)}.items():
        cam.location = base + back * 0.3 * (f - 1)
        data.lens, data.shift_x, data.shift_y = lens, shift, -shift / 2
        cam.keyframe_insert("location", frame=f)
        for prop in ("lens", "shift_x", "shift_y"):
            data.keyframe_insert(prop, frame=f)
    blank.camera = cam
    blank.frame_start, blank.frame_end = 1, 3
    multilayer_exr(blank)
    return blank


def multilayer_exr(scene) -> None:
    im = scene.render.image_settings
    if hasattr(im, "media_type"):          # Blender 5.0+
        im.media_type = "MULTI_LAYER_IMAGE"
    im.file_format = "OPEN_EXR_MULTILAYER"
    im.color_depth = "32"


def read_layers(path) -> dict[str, np.ndarray]:
    """Every channel of every part of a (multilayer) EXR: 'ViewLayer.Combined.R' -> (H, W)."""
    import OpenEXR
    with OpenEXR.File(str(path), separate_channels=True) as f:
        return {k: np.asarray(c.pixels, np.float32) for p in f.parts for k, c in p.channels.items()}


def backend_frames(bpy, scene, frames, tmp_path, name="ref", fmt="exr"):
    """`backend render` of the scene camera's path over `frames`: {frame: EXR channels, or the
    PNG's (H, W, 4) uint8 pixels}."""
    from backend.imageio import read_exr
    from xscale_blender import campath_export
    path = tmp_path / f"{name}.json"
    campath_export.export_camera_path(bpy.context, str(path), frames=frames)
    res = cli("render", "--run", scene.xscale.run_dir, "--path", str(path), "--out", str(tmp_path / name),
              "--format", fmt, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    files = {f: tmp_path / name / f"frame_{f:06d}.{fmt}" for f in frames}
    return {f: read_exr(p) if fmt == "exr" else read_png(p) for f, p in files.items()}


def read_png(path) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(path).convert("RGBA"))


def f12_png(bpy, scene, path) -> np.ndarray:
    """F12 of the scene's current frame saved as an 8-bit RGBA PNG (what an artist saves)."""
    im = scene.render.image_settings
    if hasattr(im, "media_type"):
        im.media_type = "IMAGE"
    im.file_format, im.color_mode, im.color_depth = "PNG", "RGBA", "8"
    scene.render.filepath = str(path)
    assert bpy.ops.render.render(write_still=True, scene=scene.name) == {"FINISHED"}
    return read_png(path)


def covered_difference(a: np.ndarray, b: np.ndarray) -> int:
    """Largest RGB difference (0-255) over the pixels both frames fully cover."""
    both = (a[..., 3] == 255) & (b[..., 3] == 255)
    assert both.mean() > 0.2
    return int(np.abs(a[..., :3].astype(int) - b[..., :3].astype(int))[both].max())


def assert_matches(layers, ref, depth=True):
    """Engine output (Combined, Depth, Normal, Position) against `backend render`'s EXR (RGB
    premultiplied, A, Z, Normal.XYZ, Position.XYZ) of the same camera."""
    a = ref["A"]
    assert 0 < a.mean() < 1                                        # part of the frame is covered
    for c in "RGB":
        assert np.abs(layers[f"ViewLayer.Combined.{c}"] - ref[c]).max() <= TOL
    assert np.abs(layers["ViewLayer.Combined.A"] - a).max() <= TOL
    if depth:
        z = layers["ViewLayer.Depth.Z"]
        hit = a > 0
        assert np.allclose(z[hit], ref["Z"][hit], rtol=1e-6)
        assert (z[~hit] == np.float32(1e10)).all()                 # Cycles' background depth
        for name in ("Normal", "Position"):
            for c in "XYZ":
                assert np.allclose(layers[f"ViewLayer.{name}.{c}"], ref[f"{name}.{c}"], rtol=1e-6, atol=1e-6)


def test_engine_is_a_renderer(engine_scene, bpy_module):
    bpy = bpy_module
    from xscale_blender import engine
    assert engine_scene.render.engine == ENGINE                      # an engine choice like Cycles
    assert engine.XScaleRenderEngine.bl_label == "XScale-NVS"
    assert ENGINE in bpy.types.DATA_PT_lens.COMPAT_ENGINES           # camera settings stay visible
    assert ENGINE in bpy.types.RENDER_PT_format.COMPAT_ENGINES
    assert ENGINE not in bpy.types.RENDER_PT_freestyle.COMPAT_ENGINES
    assert engine.XScaleRenderEngine.bl_use_postprocess


def test_still_and_animation_match_backend_render(engine_scene, bpy_module, tmp_path):
    bpy = bpy_module
    from xscale_blender.core import render_server as rs
    scene = engine_scene
    ref = backend_frames(bpy, scene, [1, 2, 3], tmp_path)
    rs.shutdown()
    starts = rs.starts

    scene.frame_set(2)
    scene.render.filepath = str(tmp_path / "still.exr")
    assert bpy.ops.render.render(write_still=True) == {"FINISHED"}
    assert_matches(read_layers(tmp_path / "still.exr"), ref[2])
    pid = rs.current().pid

    # Ctrl+F12: Blender's own animation pipeline and output settings, frame by frame
    scene.render.filepath = str(tmp_path / "anim" / "f_")
    assert bpy.ops.render.render(animation=True) == {"FINISHED"}
    for f in (1, 2, 3):
        assert_matches(read_layers(tmp_path / "anim" / f"f_{f:04d}.exr"), ref[f])
    assert rs.starts == starts + 1 and rs.current().pid == pid      # one server for every frame


def test_pixel_aspect_and_opaque_film(engine_scene, bpy_module, tmp_path):
    """Non-square pixels (fx != fy) and Film > Transparent off: covered pixels over the world
    colour, alpha 1 (written as a plain RGBA EXR: Blender 5.0 cannot write a multilayer EXR with
    a pixel aspect other than 1)."""
    bpy = bpy_module
    scene = engine_scene
    scene.render.pixel_aspect_x = 1.25
    scene.render.film_transparent = False
    world = bpy.data.worlds.new("w")
    scene.world = world
    bg = world.node_tree.nodes["Background"] if world.node_tree is not None else None
    if bg is not None:
        bg.inputs["Color"].default_value = (0.2, 0.4, 0.8, 1.0)
        bg.inputs["Strength"].default_value = 0.5
    else:
        world.color = (0.1, 0.2, 0.4)
    colour = np.array([0.1, 0.2, 0.4], np.float32)
    scene.frame_set(1)
    ref = backend_frames(bpy, scene, [1], tmp_path)[1]
    im = scene.render.image_settings
    if hasattr(im, "media_type"):
        im.media_type = "IMAGE"
    im.file_format, im.color_mode, im.color_depth = "OPEN_EXR", "RGBA", "32"
    scene.render.filepath = str(tmp_path / "opaque.exr")
    assert bpy.ops.render.render(write_still=True) == {"FINISHED"}
    from backend.imageio import read_exr
    out = read_exr(tmp_path / "opaque.exr")
    a = ref["A"]
    assert out["R"].shape == (30, 40) and 0 < a.mean() < 1
    for k, c in enumerate("RGB"):
        assert np.abs(out[c] - (ref[c] + colour[k] * (1 - a))).max() <= TOL
    assert (out["A"] == 1).all()


def test_dead_server_is_reported_and_restarted(engine_scene, bpy_module, tmp_path, capfd):
    bpy = bpy_module
    from xscale_blender.core import render_server as rs
    scene = engine_scene
    scene.render.filepath = str(tmp_path / "a.exr")
    bpy.ops.render.render(write_still=True)
    old = rs.current()
    os.kill(old.pid, signal.SIGKILL)
    old.proc.wait(timeout=10)
    capfd.readouterr()
    scene.render.filepath = str(tmp_path / "b.exr")
    assert bpy.ops.render.render(write_still=True) == {"FINISHED"}
    out = capfd.readouterr()
    assert "render server had stopped (killed by signal 9); started a new one" in out.out + out.err
    assert rs.current() is not old and rs.current().alive
    assert np.array_equal(read_layers(tmp_path / "a.exr")["ViewLayer.Combined.R"],
                          read_layers(tmp_path / "b.exr")["ViewLayer.Combined.R"])


def test_errors_are_reported_not_raised(engine_scene, bpy_module, tmp_path, capfd):
    bpy = bpy_module
    scene = engine_scene
    scene.xscale.run_dir = str(tmp_path / "nothing_here")
    scene.render.filepath = str(tmp_path / "x.exr")
    with pytest.raises(RuntimeError):       # the render operator fails with the engine's error
        bpy.ops.render.render(write_still=True)
    out = capfd.readouterr()
    assert "no trained model in" in out.out + out.err


def test_server_stops_with_the_addon_and_on_file_load(engine_scene, bpy_module, tmp_path):
    bpy = bpy_module
    import xscale_blender
    from test_serve import gone
    from xscale_blender.core import render_server as rs
    scene = engine_scene
    scene.render.filepath = str(tmp_path / "a.exr")
    bpy.ops.render.render(write_still=True)
    pid, run_dir = rs.current().pid, scene.xscale.run_dir
    bpy.ops.wm.read_homefile(use_empty=True)            # load_pre: another file, maybe another run
    assert rs.current() is None and gone(pid)
    from xscale_blender import engine
    assert engine._on_load_pre in bpy.app.handlers.load_pre
    rs.acquire("k", lambda: ([sys.executable, "-m", "backend", "serve", "--run", run_dir, "--device", "cpu"],
                             dict(os.environ, PYTHONPATH=str(ROOT))))
    pid = rs.current().pid
    xscale_blender.unregister()
    try:
        assert gone(pid) and rs.current() is None
        assert ENGINE not in bpy.types.DATA_PT_lens.COMPAT_ENGINES
    finally:
        xscale_blender.register()


# What `blender -b shot.blend -a` does, with the bpy module: render the frames, then quit (or
# die): the server must be gone either way.
QUIT = r"""
import os, sys, signal
sys.path.insert(0, sys.argv[1])
import bpy, xscale_blender
from xscale_blender.core import render_server
xscale_blender.register()
bpy.ops.wm.open_mainfile(filepath=sys.argv[2])
bpy.ops.render.render(animation=True)
print("SERVER", render_server.current().pid, render_server.starts, flush=True)
if sys.argv[3] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("how", ["quit", "die"])
def test_headless_animation_and_no_server_after_blender(engine_scene, bpy_module, tmp_path, how):
    bpy = bpy_module
    from test_serve import gone
    scene = engine_scene
    scene.render.filepath = str(tmp_path / "frames" / "f_")
    blend = tmp_path / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend), copy=True)
    script = tmp_path / "quit.py"
    script.write_text(QUIT)
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"))
    res = subprocess.run([sys.executable, str(script), str(ROOT), str(blend), how], env=env,
                         capture_output=True, text=True, timeout=600)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("SERVER ")]
    assert line, res.stdout[-2000:] + res.stderr[-2000:]
    _, pid, starts = line[0].split()
    assert int(starts) == 1
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f"f_{f:04d}.exr" for f in (1, 2, 3)]
    assert gone(int(pid)), f"the render server outlived Blender ({how})"


def test_viewport_camera_matches_the_camera_projection(engine_scene, bpy_module):
    """The viewport's K comes from its window matrix; Blender's own projection matrix of a camera
    (what camera view draws, with lens, shift, sensor fit, pixel aspect) gives the K that
    camera_convert computes for a render."""
    bpy = bpy_module
    from xscale_blender.core import camera_convert as cc
    from xscale_blender import campath_export
    scene = engine_scene
    cam = scene.camera
    for fit, (w, h), aspect in (("HORIZONTAL", (40, 30), (1, 1)), ("VERTICAL", (30, 40), (1, 1.5)),
                                ("AUTO", (64, 36), (1.2, 1))):
        cam.data.sensor_fit = fit
        scene.render.resolution_x, scene.render.resolution_y = w, h
        scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = aspect
        scene.frame_set(2)
        depsgraph = bpy.context.evaluated_depsgraph_get()
        ob = cam.evaluated_get(depsgraph)
        P = np.array(ob.calc_matrix_camera(depsgraph, x=w, y=h, scale_x=aspect[0], scale_y=aspect[1]))
        K, E = cc.view_to_opencv(np.linalg.inv(np.array(ob.matrix_world)), P, w, h)
        ref = campath_export.opencv_camera(scene, cam, depsgraph)
        np.testing.assert_allclose(K, ref.K, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(E, ref.world_to_camera, atol=1e-6)
    ortho = np.eye(4)
    with pytest.raises(ValueError, match="orthographic"):
        cc.view_to_opencv(np.eye(4), ortho, 10, 10)


def test_settings_panel_draws(engine_scene, bpy_module):
    from test_blender_ui import draw
    from xscale_blender import engine, render_panels
    bpy = bpy_module
    ctx = bpy.context
    log = draw(bpy, render_panels.RENDER_PT_xscale, ctx)
    props = [c[1][1] for c in log if c[0] == "prop"]
    assert {"run_dir", "exposure", "preview_supersample", "preview_divisor", "film_transparent"} <= set(props)
    # render supersampling left to the run: the cache's, said as such (the run was cached with ss 2)
    assert ("operator", ("xscale.option_auto",), {"text": "Auto (as cached: 2)"}) in log
    draw(bpy, render_panels.RENDER_PT_xscale_server, ctx)
    log = draw(bpy, render_panels.VIEWLAYER_PT_xscale_passes, ctx)
    assert [c[1][1] for c in log if c[0] == "prop"] == ["use_pass_z", "use_pass_normal", "use_pass_position"]
    assert math.isclose(engine.DEPTH_MISS, 1e10)


# --- what an artist sees: the photos' colours ----------------------------------------------------
DITHER = 2      # Blender dithers 8-bit output (Dither 1 by default): up to 2 levels apart


def test_f12_has_the_photos_colours(engine_scene, bpy_module, tmp_path):
    """Importing the capture set the Standard view transform: F12's PNG is `backend render`'s PNG
    up to Blender's dither. The panel's way back to AgX makes F12 paler again (the 34 dB of the
    issue)."""
    bpy = bpy_module
    scene = engine_scene
    assert scene.view_settings.view_transform == "Standard" and scene.xscale.view_transform_before == "AgX"
    scene.frame_set(2)
    ref = backend_frames(bpy, scene, [2], tmp_path, fmt="png")[2]
    assert covered_difference(f12_png(bpy, scene, tmp_path / "standard.png"), ref) <= DITHER
    assert bpy.ops.xscale.view_transform(transform="AgX", look="None") == {"FINISHED"}
    assert covered_difference(f12_png(bpy, scene, tmp_path / "agx.png"), ref) > 10


def test_choosing_the_engine_switches_to_standard_once(blank, bpy_module, tmp_path):
    from test_blender_ui import draw
    from xscale_blender import render_panels
    bpy = bpy_module
    scene = blank
    assert scene.view_settings.view_transform == "AgX"               # Blender's default
    scene.render.engine = ENGINE
    bpy.context.view_layer.update()
    assert scene.view_settings.view_transform == "Standard" and scene.xscale.view_transform_before == "AgX"

    def button():
        log = draw(bpy, render_panels.RENDER_PT_xscale, bpy.context)
        texts = [kw.get("text", "") for n, _a, kw in log if n == "label"]
        return [kw["text"] for n, a, kw in log if n == "operator" and a[0] == "xscale.view_transform"], texts
    ops, texts = button()
    assert ops == ["Back to AgX"] and "View Transform: Standard, the photos' colours" in " ".join(texts)
    assert bpy.ops.xscale.view_transform(transform="AgX", look="None") == {"FINISHED"}
    ops, texts = button()
    assert ops == ["Use Standard"] and "paler than the photos" in " ".join(texts)
    # choosing the engine again leaves the artist's choice alone
    scene.render.engine = "CYCLES"
    bpy.context.view_layer.update()
    scene.render.engine = ENGINE
    bpy.context.view_layer.update()
    assert scene.view_settings.view_transform == "AgX"
    # a file saved with the engine chosen (before this add-on switched views) opens with its view
    scene.xscale.view_transform_set = False
    blend = tmp_path / "old.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    scene = bpy.context.scene
    scene.frame_set(2)
    bpy.context.view_layer.update()
    assert scene.render.engine == ENGINE and scene.view_settings.view_transform == "AgX"
    assert button()[0] == ["Use Standard"]


# --- Render Camera Path's strip: not in the shot's sequencer ---------------------------------------

def test_the_strip_does_not_hijack_f12_and_shows_what_f12_shows(engine_scene, bpy_module, tmp_path):
    """After Render Camera Path the shot's F12 still renders the model (its Depth pass is there,
    which a sequencer strip does not have), and the strip's own scene renders the frames with
    F12's colours."""
    from xscale_blender import sequencer
    bpy = bpy_module
    scene = engine_scene
    scene.xscale.render_dir = str(tmp_path / "frames")
    assert bpy.ops.xscale.render_path() == {"FINISHED"}        # the real `backend render` (PNG)
    edit = scene.xscale.strip_scene
    assert edit is not None and edit != scene and sequencer.all_strips(scene) == []
    assert [st.name for st in sequencer.all_strips(edit)] == ["XScale shot"]
    scene.frame_set(2)
    scene.render.filepath = str(tmp_path / "f12.exr")
    assert bpy.ops.render.render(write_still=True) == {"FINISHED"}
    assert "ViewLayer.Depth.Z" in read_layers(tmp_path / "f12.exr")
    f12 = f12_png(bpy, scene, tmp_path / "f12.png")
    edit.frame_set(2)
    assert covered_difference(f12_png(bpy, edit, tmp_path / "edit.png"), f12) <= DITHER
    assert covered_difference(read_png(tmp_path / "frames" / "frame_000002.png"), f12) <= DITHER
