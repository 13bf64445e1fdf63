"""Manual check of the sidebar tab and the preferences in a real Blender with a window (not run
by pytest): the XScale tab at the sidebar's default width with a job running, long paths and a
long message, for screenshots.

    XS_SCENE=/path/to/mvsnet_scene XS_OUT=/tmp/xs_ui blender --python tests/real/sidebar_ui.py

The extension is installed and enabled. The script imports the scene, sets a run folder with a
long path, makes a stand-in job (a sleeping process) the running job with a long log message,
selects a photo camera and opens the 3D view's sidebar (XS_NOJOB=1: no job). It writes XS_OUT/regions.json (the
sidebar's window position and size, the UI scale) so a driver can click the XScale tab with
xdotool and take screenshots. XS_STATE=failed shows a failed job instead; XS_PREFS=1 opens the
preferences on the add-on instead; XS_SETUP=1 then presses Set Up Backend; XS_TRAIN=1 presses Cache + Train.
"""
import json
import os
import sys

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_blender import addon  # noqa: E402

OUT = os.environ.get("XS_OUT", "/tmp/xs_ui")
os.makedirs(OUT, exist_ok=True)


def setup():
    scene_dir = os.environ.get("XS_SCENE")
    numpy_ok = not getattr(addon("core.deps"), "missing", lambda: {})() if _has("core.deps") else True
    if scene_dir and numpy_ok:
        bpy.ops.import_scene.xscale_mvsnet(directory=scene_dir, show_photos=False, check_scene=False)
    s = bpy.context.scene.xscale
    s.run_dir = os.environ.get("XS_RUN", "/home/artist/projects/2026_castle_survey/xscale_runs/castle_full_res_ss2/")
    cam = bpy.data.objects.get("view_001")
    if cam is not None:
        bpy.context.view_layer.objects.active = cam
        cam.select_set(True)
    jobs = addon("core.jobs")
    if os.environ.get("XS_NOJOB"):
        return _open_windows()
    job = jobs.Job([sys.executable, "-c", "import time; time.sleep(600)"], label="train").start()
    st = job.state
    st.stage, st.step, st.total, st.loss, st.psnr, st.eta_s = "train", 1200, 30000, 0.0312, 27.41, 410.0
    st.message = ("ray cache is up to date; skipping the cache step; training on cuda:0 with the reference "
                  "preset (16 levels, 2^22 entries) from /home/artist/projects/2026_castle_survey/xscale_runs/"
                  "castle_full_res_ss2/cache")
    if os.environ.get("XS_STATE") == "failed":
        job.kill()
        job.wait(timeout=10)
        st.status, st.error = jobs.FAILED, ("/home/artist/projects/2026_castle_survey/scene/cams/"
                                            "DSC_0042_cam.txt: malformed camera file (line 3: expected 4 "
                                            "numbers); fix or delete it and import again")
        st.message = st.error
    jobs.set_active(job)
    return _open_windows()


def _open_windows():
    regions = []
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.spaces[0].show_region_ui = True
                for r in area.regions:
                    regions.append({"type": r.type, "x": r.x, "y": r.y, "width": r.width, "height": r.height})
    if os.environ.get("XS_PREFS"):
        name = next((m for m in bpy.context.preferences.addons.keys() if m.endswith("xscale_nvs")), None)
        bpy.context.preferences.active_section = "ADDONS"
        bpy.context.window_manager.addon_search = "XScale"
        if name:
            bpy.ops.preferences.addon_expand(module=name)
        bpy.ops.screen.userpref_show()
    if os.environ.get("XS_TRAIN"):       # press Cache + Train (invoke, as the button does)
        bpy.app.timers.register(_press_train, first_interval=3.0)
    if os.environ.get("XS_SETUP"):       # press Set Up Backend (as the button does: execute, UI mode)
        kwargs = json.loads(os.environ.get("XS_SETUP_ARGS", "{}"))   # e.g. {"torch_index_url": "none"}
        bpy.app.timers.register(lambda: print("sidebar_ui: setup", bpy.ops.xscale.setup_backend(**kwargs),
                                              flush=True) and None, first_interval=3.0)
    info = {"regions": regions, "ui_scale": bpy.context.preferences.system.ui_scale,
            "window": [bpy.context.window_manager.windows[0].width, bpy.context.window_manager.windows[0].height]}
    with open(os.path.join(OUT, "regions.json"), "w") as f:
        json.dump(info, f)
    print("sidebar_ui: ready", json.dumps(info), flush=True)
    return None


def _press_train():
    window = bpy.context.window_manager.windows[0]
    area = next(a for a in window.screen.areas if a.type == "VIEW_3D")
    region = next(r for r in area.regions if r.type == "UI")
    with bpy.context.temp_override(window=window, area=area, region=region):
        print("sidebar_ui: train", bpy.ops.xscale.train("INVOKE_DEFAULT"), flush=True)
    return None


def _has(name):
    try:
        addon(name)
        return True
    except ImportError:
        return False


bpy.app.timers.register(setup, first_interval=2.0)
