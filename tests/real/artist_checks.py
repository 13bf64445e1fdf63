"""Manual checks in a real Blender with a window (not run by pytest): what an artist sees of the
view transform, the Auto settings, the strip scene, the preferences and quitting while a job runs.

    XS_SCENE=/path/to/mvsnet_scene XS_RUN=/path/to/trained_run XS_OUT=/tmp/xs_artist XS_MODE=colour \\
        XSCALE_BACKEND_PYTHON=/path/to/venv/bin/python blender -p 0 0 1920 1080 --python tests/real/artist_checks.py

Blender starts from its own defaults (the startup file: AgX). The script runs under Blender's
event loop (timers) and takes screenshots with ImageMagick's `import` of the X display
(XS_OUT/NAME.png); it clicks with xdotool (sidebar tabs, keys). XS_MODE:

- colour: import the capture, choose the XScale-NVS engine, look through the first photo in
  Rendered shading, Render Properties open; F12 saved to XS_OUT/f12_SHOT.png; screenshots
  colour_engine.png (as the engine was chosen) and colour_back.png (after the panel's way back).
- labels: the XScale tab's Training and Render Camera Path panels with settings left to the
  backend (labels_sidebar.png; XS_DEVICE=auto shows the GPU preset's), then the preferences with a long Backend Python and a Check
  (labels_prefs.png).
- strip: Render Camera Path over frames 1-2, then F12 of the scene as a multilayer EXR: XS_OUT/strip.json
  says where the strip went; XS_OUT/strip_f12.exr holds a Depth layer when F12 rendered the model
  (a sequencer strip has none).
- viewport: Rendered shading through the photo; the view turns while the full-resolution frame
  renders in bands: XS_OUT/viewport.log says when frames of the new view show and whether the old
  view's full frame ever does.
- quit: a training job runs; Ctrl Q asks (quit_ask.png); XS_QUIT_CONFIRM=1 confirms: the job stops
  and Blender quits (XS_OUT/quit_pid names the trainer, to check that it saved and ended).
- note: the next session on that run folder (XS_RUN=OUT/quit_run): the XScale tab (quit_note.png).
XS_SHOW=1 leaves Blender open at the end.
"""
import json
import os
import subprocess
import sys
import time

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_blender import addon, logger  # noqa: E402

OUT = os.environ.get("XS_OUT", "/tmp/xs_artist")
MODE = os.environ.get("XS_MODE", "colour")
say = logger(OUT, f"{MODE}.log", "artist_checks")


def window_top() -> int:
    """The main window's top on the X screen (Blender places windows from the screen's bottom)."""
    win = bpy.context.window_manager.windows[0]
    out = subprocess.run(["xdotool", "getdisplaygeometry"], capture_output=True, text=True).stdout.split()
    return (int(out[1]) if len(out) == 2 else win.height) - win.height      # -p 0 0: at the bottom


def shot(name: str) -> None:
    path = os.path.join(OUT, f"{name}.png")
    win = bpy.context.window_manager.windows[0]
    subprocess.run(["import", "-window", "root", "-crop", f"{win.width}x{win.height}+{win.x}+{window_top()}",
                    path], check=False)
    say("screenshot", path)


def xdo(*args) -> None:
    subprocess.run(["xdotool", *map(str, args)], check=False)


def area(kind: str):
    win = bpy.context.window_manager.windows[0]
    for a in win.screen.areas:
        if a.type == kind:
            return win, a
    return win, None


def show_xscale_tab() -> None:
    """Click the 3D view sidebar's XScale tab: the fourth in its right edge, below Item, Tool and
    View (measured on Blender 4.3's default layout: its centre 169 px below the region's top).
    A click while the splash screen is up only closes it: clicked three times."""
    win, a = area("VIEW_3D")
    region = next(r for r in a.regions if r.type == "UI")
    scale = bpy.context.preferences.system.ui_scale
    top = window_top() + win.height - (region.y + region.height)       # X11 counts from the top
    x, y = region.x + region.width - int(10 * scale), top + int(169 * scale)
    say("click the XScale tab at", x, y)
    xdo("mousemove", x, y, "click", 1)
    for k in (1, 2):               # again, in case the splash screen took one
        bpy.app.timers.register(lambda k=k: xdo("mousemove", x, y + k, "click", 1), first_interval=0.8 * k)


def schedule(steps, k=0):
    """Run steps[k] (a function returning the seconds until the next one, or minus the seconds until
    it runs again), then the rest."""
    if k == len(steps):
        if not os.environ.get("XS_SHOW"):
            bpy.ops.wm.quit_blender()
        return None
    try:
        wait = steps[k]() or 1.0
        if wait < 0:                 # not yet: the same step again
            bpy.app.timers.register(lambda: schedule(steps, k), first_interval=-wait)
            return None
    except Exception as e:          # a check that breaks says so and ends the run
        import traceback
        say("FAILED", steps[k].__name__, repr(e), traceback.format_exc())
        wait = 1.0
        steps = steps[:k + 1]
    bpy.app.timers.register(lambda: schedule(steps, k + 1), first_interval=wait)
    return None


def import_capture() -> None:
    s = bpy.context.scene
    say("before import: view transform", s.view_settings.view_transform)
    for ob in list(bpy.data.objects):       # the startup cube, light and camera
        bpy.data.objects.remove(ob)
    bpy.ops.import_scene.xscale_mvsnet(directory=os.environ["XS_SCENE"], check_scene=False)
    s.xscale.run_dir = os.environ.get("XS_RUN", "")
    s.xscale.device = "cpu"
    say("after import: view transform", s.view_settings.view_transform)


def look_through_photo(shading: str = "RENDERED") -> None:
    win, a = area("VIEW_3D")
    space = a.spaces.active
    space.shading.type = shading
    space.region_3d.view_perspective = "CAMERA"
    space.show_region_ui = True
    region = next(r for r in a.regions if r.type == "WINDOW")
    with bpy.context.temp_override(window=win, area=a, region=region):
        bpy.ops.view3d.view_center_camera()
    _, props = area("PROPERTIES")
    if props is not None:
        props.spaces.active.context = "RENDER"


# --- colour -----------------------------------------------------------------------------------

def f12(name: str) -> None:
    scene = bpy.context.scene
    scene.render.filepath = os.path.join(OUT, f"f12_{name}.png")
    scene.render.image_settings.file_format = "PNG"
    bpy.ops.render.render(write_still=True)
    say("F12", name, scene.view_settings.view_transform, scene.render.filepath)


def colour_steps():
    def start():
        import_capture()
        say("engine before", bpy.context.scene.render.engine)
        return 2.0

    def engine():
        bpy.context.scene.render.engine = "XSCALE_NVS"
        look_through_photo()
        return 2.0

    def after_engine():
        say("after choosing the engine: view transform", bpy.context.scene.view_settings.view_transform)
        show_xscale_tab()
        return 25.0                          # the server starts and the viewport renders

    def engine_shot():
        shot("colour_engine")
        f12("engine")
        return 2.0

    def back():
        s = bpy.context.scene
        before = s.xscale.view_transform_before if hasattr(s.xscale, "view_transform_before") else ""
        if before:
            bpy.ops.xscale.view_transform(transform=before, look=s.xscale.look_before or "None")
        else:
            s.view_settings.view_transform = "AgX"
        say("way back: view transform", s.view_settings.view_transform)
        return 25.0

    def back_shot():
        shot("colour_back")
        f12("back")
        return 1.0
    return [start, engine, after_engine, engine_shot, back, back_shot]


# --- labels -----------------------------------------------------------------------------------

def labels_steps():
    def start():
        import_capture()
        s = bpy.context.scene.xscale
        s.run_dir = os.environ.get("XS_RUN", "")
        s.device = os.environ.get("XS_DEVICE", s.device)      # auto: the GPU preset's Auto labels
        look_through_photo("SOLID")
        return 2.0

    def tab():
        show_xscale_tab()
        return 3.0

    def sidebar():
        shot("labels_sidebar")
        s = bpy.context.scene.xscale
        say("iterations", s.iterations, "level", s.level, "render_supersample", s.render_supersample)
        bpy.context.scene.render.engine = "XSCALE_NVS"
        return 3.0

    def render_props():
        shot("labels_render_props")
        return 1.0

    def prefs():
        prefs = bpy.context.preferences.addons["bl_ext.user_default.xscale_nvs"].preferences
        prefs.python = os.environ.get("XS_LONG_PYTHON", "/home/artist/.config/blender/4.3/datafiles/"
                                                        "xscale_nvs/venv/bin/python3.13")
        os.environ.pop("XSCALE_BACKEND_PYTHON", None) if os.environ.get("XS_NO_ENV") else None
        bpy.context.preferences.active_section = "ADDONS"
        bpy.context.window_manager.addon_search = "XScale"
        bpy.ops.preferences.addon_expand(module="bl_ext.user_default.xscale_nvs")
        xdo("mousemove", 700, 350)         # the preferences window opens around the pointer
        bpy.app.timers.register(lambda: bpy.ops.screen.userpref_show() and None, first_interval=0.5)
        bpy.ops.xscale.check_backend()     # the real `backend doctor` of XSCALE_BACKEND_PYTHON
        return 25.0

    def prefs_shot():
        shot("labels_prefs")
        return 1.0
    return [start, tab, sidebar, render_props, prefs, prefs_shot]


# --- strip --------------------------------------------------------------------------------------

def strip_steps():
    result = {}

    def start():
        import_capture()
        scene = bpy.context.scene
        scene.frame_start, scene.frame_end = 1, 2
        scene.render.engine = "XSCALE_NVS"
        scene.render.resolution_percentage = 50
        bpy.context.view_layer.use_pass_z = True
        result["render_path"] = sorted(bpy.ops.xscale.render_path(wait=True))
        seq = addon("sequencer")
        result["strips"] = {sc.name: [st.name for st in seq.all_strips(sc)] for sc in bpy.data.scenes}
        target = getattr(scene.xscale, "strip_scene", None)
        result["strip_scene"] = target.name if target else None
        result["view_transforms"] = {sc.name: sc.view_settings.view_transform for sc in bpy.data.scenes}
        return 1.0

    def render():
        scene = bpy.context.scene
        im = scene.render.image_settings
        im.file_format, im.color_depth = "OPEN_EXR_MULTILAYER", "32"
        scene.render.filepath = os.path.join(OUT, "strip_f12.exr")
        bpy.ops.render.render(write_still=True)          # the layers it holds: read outside Blender
        result["f12_file"] = scene.render.filepath
        with open(os.path.join(OUT, "strip.json"), "w") as f:
            json.dump(result, f, indent=1)
        say("strip", json.dumps(result))
        return 1.0
    return [start, render]


# --- quit ---------------------------------------------------------------------------------------

def quit_steps():
    def start():
        import_capture()
        s = bpy.context.scene.xscale
        s.run_dir = os.path.join(OUT, "quit_run")
        s.iterations, s.preset = 100000, "small"
        look_through_photo("SOLID")
        show_xscale_tab()
        bpy.ops.xscale.train()
        return 40.0                          # cache, then a few training steps

    def ask():
        job = addon("core.jobs").active()
        say("job", job.label, addon("core.jobs").describe(job.state), "pid", job.proc.pid)
        with open(os.path.join(OUT, "quit_pid"), "w") as f:
            f.write(str(job.proc.pid))
        win, a = area("VIEW_3D")
        region = next(r for r in a.regions if r.type == "WINDOW")
        xdo("mousemove", region.x + region.width // 2, window_top() + win.height - region.y - region.height // 2)
        xdo("key", "ctrl+q")
        return 2.0

    def ask_shot():
        shot("quit_ask")
        if os.environ.get("XS_QUIT_CONFIRM"):
            say("confirming")
            xdo("key", "Return")
        return 10.0
    return [start, ask, ask_shot]


def note_steps():
    """The next session on the run folder that quit mode left (XS_RUN=OUT/quit_run)."""
    def start():
        import_capture()
        look_through_photo("SOLID")
        show_xscale_tab()
        return 3.0

    def note_shot():
        shot("quit_note")
        return 1.0
    return [start, note_shot]


def viewport_steps():
    """Rendered shading through the photo camera; while the full-resolution frame renders, the view
    turns: how long until the new view shows, and whether the old view's full frame ever does."""
    engines = []
    cls = addon("engine").XScaleRenderEngine
    draw = cls.view_draw

    def spy(self, context, depsgraph):
        if not engines or engines[-1] is not self:
            engines.append(self)
        draw(self, context, depsgraph)
    cls.view_draw = spy
    state = {}

    def start():
        import_capture()
        bpy.context.scene.render.engine = "XSCALE_NVS"
        look_through_photo()
        return 1.0

    def wait_full():
        p = getattr(engines[-1], "_xs_preview", None) if engines else None
        low = p is not None and p.latest() is not None and p.latest().divisor > 1
        if low and "low" not in state:
            state["low"] = time.monotonic()
        # the reduced frame has been up for a second: the full one is on its way (also before bands)
        if not low or time.monotonic() - state["low"] < 1.0:
            if state.setdefault("t0", time.monotonic()) + 120 > time.monotonic():
                return -0.2
            say("no reduced frame within 120 s")
            return 0.1
        _win, a = area("VIEW_3D")
        r3d = a.spaces.active.region_3d
        r3d.view_perspective = "PERSP"
        import mathutils
        r3d.view_rotation = mathutils.Quaternion((0.0, 0.0, 1.0), 0.3) @ r3d.view_rotation
        state.update(changed=time.monotonic(), old=p.latest(), seen=[(p.latest(), 0.0)])
        say(f"view changed while the full frame was rendering ({getattr(p, 'full_done', None)} done)")
        return 0.05

    def watch():
        p = engines[-1]._xs_preview
        shown = p.latest()
        if shown is not None and (not state["seen"] or state["seen"][-1][0] is not shown):
            state["seen"].append((shown, time.monotonic() - state["changed"]))
            say(f"+{state['seen'][-1][1]:.2f} s: a frame at 1/{shown.divisor} of "
                f"{'the old' if shown.view == state['old'].view else 'the new'} view")
        return 0.05
    return [start] + [wait_full] + [watch] * int(20 * float(os.environ.get("XS_WATCH_S", "60")))


STEPS = {"viewport": viewport_steps, "colour": colour_steps, "labels": labels_steps, "strip": strip_steps, "quit": quit_steps,
         "note": note_steps}
bpy.app.timers.register(lambda: schedule(STEPS[MODE]()), first_interval=3.0)
