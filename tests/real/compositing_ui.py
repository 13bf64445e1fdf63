"""Manual check of Mix CG into Capture in a real Blender with a window (not run by pytest), for
screenshots:

    XSCALE_BACKEND_PYTHON=/path/to/venv/bin/python XS_OUT=/tmp/xs_cg blender shot.blend \\
        --python tests/real/compositing_ui.py

`shot.blend` holds a capture with its trained run and CG objects, set up with Mix with Cycles (or
not: XS_MIX=1 presses it first); the extension is installed and enabled. The script walks through
phases, each ending in XS_OUT/N_PHASE.ready and waiting for XS_OUT/N_PHASE.done (a driver takes
the screenshot meanwhile): `sidebar` (3D view in camera view with the sidebar open: the driver
clicks the XScale tab, whose position is in XS_OUT/regions.json), `properties` (Render
Properties: the XScale-NVS panel and its CG Objects), `render` (F12's render window once the
render is done), `compositor` (the scene's compositor nodes over the backdrop of that render).
Blender quits at the end.
"""
import json
import os

import bpy

OUT = os.environ.get("XS_OUT", "/tmp/xs_cg")
os.makedirs(OUT, exist_ok=True)
PHASES = ("sidebar", "properties", "render", "compositor")
state = {"phase": -1, "rendered": False}


def areas(kind):
    window = bpy.context.window_manager.windows[0]
    return window, [a for a in window.screen.areas if a.type == kind]


def largest(*kinds):
    window = bpy.context.window_manager.windows[0]
    found = [a for a in window.screen.areas if a.type in kinds]
    return window, max(found, key=lambda a: a.width * a.height)


def show(phase: str) -> None:
    window, view = largest("VIEW_3D", "IMAGE_EDITOR")     # F12 shows its render in that area
    if phase == "sidebar":
        space = view.spaces[0]
        space.show_region_ui = True
        space.region_3d.view_perspective = "CAMERA"
        space.shading.type = "SOLID"
        regions = [{"type": r.type, "x": r.x, "y": r.y, "width": r.width, "height": r.height}
                   for r in view.regions]
        with open(os.path.join(OUT, "regions.json"), "w") as f:
            json.dump({"regions": regions, "ui_scale": bpy.context.preferences.system.ui_scale,
                       "window": [window.width, window.height]}, f)
    elif phase == "properties":
        for area in areas("PROPERTIES")[1]:
            area.spaces[0].context = "RENDER"
    elif phase == "compositor":
        for other in list(bpy.context.window_manager.windows)[1:]:     # the render window
            with bpy.context.temp_override(window=other):
                bpy.ops.wm.window_close()
        view.type = "NODE_EDITOR"
        view.ui_type = "CompositorNodeTree"
        view.spaces[0].show_region_ui = False
        state["frame"] = (window, view)
    elif phase == "render":
        bpy.context.preferences.view.render_display_type = "AREA"    # the render in the 3D view's area
        bpy.app.handlers.render_complete.append(lambda *_: state.update(rendered=True))
        with bpy.context.temp_override(window=window):
            bpy.ops.render.render("INVOKE_DEFAULT")


def tick():
    k = state["phase"]
    if k >= 0:
        name = f"{k}_{PHASES[k]}"
        if PHASES[k] == "render" and not state["rendered"]:
            return 1.0
        if not os.path.exists(os.path.join(OUT, name + ".ready")):
            if state.pop("frame", None):        # once the nodes are drawn: all of them in view
                window, view = largest("NODE_EDITOR")
                region = next(r for r in view.regions if r.type == "WINDOW")
                with bpy.context.temp_override(window=window, area=view, region=region):
                    bpy.ops.node.view_all()
                tree = view.spaces[0].edit_tree          # composite again: the viewer's backdrop
                tree.nodes.active = next(n for n in tree.nodes if n.bl_idname == "CompositorNodeViewer")
                return 5.0
            open(os.path.join(OUT, name + ".ready"), "w").close()
            print("compositing_ui: ready", name, flush=True)
        if not os.path.exists(os.path.join(OUT, name + ".done")):
            return 1.0
    state["phase"] = k = k + 1
    if k == len(PHASES):
        bpy.ops.wm.quit_blender()
        return None
    show(PHASES[k])
    return 3.0


def start():
    if os.environ.get("XS_MIX"):
        print("compositing_ui: mix", bpy.ops.xscale.mix_cg(engine="CYCLES"), flush=True)
    return tick()


bpy.app.timers.register(start, first_interval=3.0)
