"""The XScale-NVS render engine: F12, Ctrl+F12 (and `blender -b -a`) and the viewport's Rendered
shading draw the trained model through the render server (render_server, `backend serve`).

F12 and animation frames: the scene camera (camera_convert, exactly as a camera path export maps
it: resolution and percentage, pixel aspect, lens, sensor fit, shift, all animated) is rendered
and written into Blender's render result, with the passes of backend/passes.py the view layer
asks for, as Cycles writes them: Combined (linear RGBA, premultiplied; alpha = mesh coverage when
Film > Transparent is on, else the covered pixels over the world colour with alpha 1), Depth (Z:
distance along the camera's view axis, DEPTH_MISS where the mesh is not seen, as Cycles writes
for the background), Normal and Position (world space, 0 off the mesh). The compositor and
Blender's output settings take it from there.

Viewport: view_draw posts the region's view (camera view or a free perspective view) to a
preview.Preview thread and draws the latest frame it has; the thread talks to the server and
asks for a redraw when a frame arrives, so the UI never waits for the GPU.

The engine's panels in the Properties editor are render_panels.
"""
from __future__ import annotations

import threading
import time
import weakref
from typing import Callable, Optional

import bpy
import numpy as np
from bpy.app.handlers import persistent

from . import campath_export, preferences
from .backend_link import passes, pythonpath
from .core import camera_convert as cc
from .core import ENGINE_ID, jobs, render_server    # ENGINE_ID: our bl_idname, also imported from here
from .core.preview import Preview, View
from .properties import SCENE_OPTIONS, run_folder

DEPTH_MISS = 1.0e10          # Z of uncovered pixels (Cycles' background depth)
SERVER_START_TIMEOUT_S = 900.0   # a first start on a new machine compiles nvdiffrast
NOTICE_S = 8.0               # how long the viewport shows a notice (a restarted server)


class EngineError(Exception):
    """Something the user can fix (no run folder, no checkpoint, no camera)."""


# --- what to ask the server -------------------------------------------------------------------

def server_for(scene) -> tuple[tuple, Callable[[], tuple[list[str], dict]]]:
    """(key, argv) of the render server for the scene's run: the key changes, and so the server
    is replaced, when the run, the device, the backend interpreter or the checkpoint change.
    Reads settings here (on the caller's thread); `argv()` only uses what it captured."""
    s = scene.xscale
    run = run_folder(s)
    if run is None:
        raise EngineError("set the Run Folder in Render Properties > XScale-NVS")
    try:
        st = run.latest.stat()
    except OSError:
        raise EngineError(f"no trained model in '{run.root}': train it first (Cache + Train)") from None
    python = preferences.backend_python()
    root, device, path = str(run.root), s.device, pythonpath()
    key = (python, path, root, device, st.st_mtime_ns, st.st_size)

    def argv():
        return jobs.backend_argv(python, "serve", "--run", root, "--device", device), jobs.backend_env(path)
    return key, argv


def world_colour(scene) -> tuple[float, float, float]:
    """The world's background colour (linear RGB): its Background node's colour x strength when
    that node feeds the world output directly, else the world's viewport colour; black without a
    world."""
    world = scene.world
    if world is None:
        return (0.0, 0.0, 0.0)
    tree = world.node_tree
    if tree is not None:
        outs = [n for n in tree.nodes if n.bl_idname == "ShaderNodeOutputWorld"]
        out = next((n for n in outs if n.is_active_output), outs[0] if outs else None)
        links = out.inputs["Surface"].links if out is not None else ()
        node = links[0].from_node if links else None
        if node is not None and node.bl_idname == "ShaderNodeBackground":
            colour, strength = node.inputs["Color"], node.inputs["Strength"]
            if not colour.is_linked and not strength.is_linked:
                k = float(strength.default_value)
                return tuple(float(c) * k for c in colour.default_value[:3])
    return tuple(float(c) for c in world.color[:3])


def frame_options(scene, ss: Optional[int]) -> dict:
    """Render request options shared by F12 and the viewport (serve_protocol.render_request)."""
    s = scene.xscale
    return {"ss": ss, "exposure": SCENE_OPTIONS["exposure"].value(s.exposure) or "mean",
            "alpha": "premultiplied", "rows": "bottom_up",
            "background": None if scene.render.film_transparent else world_colour(scene)}


def render_camera(scene, camera_obj):
    """backend.cameras.Camera of the (evaluated) camera object for the scene's render size."""
    if camera_obj is None:
        raise EngineError("the scene has no camera")
    try:
        return campath_export.opencv_camera(scene, camera_obj)
    except ValueError as e:
        raise EngineError(str(e)) from None


def wanted_passes(view_layer) -> list:
    """The render passes (backend/passes.py) the view layer asks for: Combined always, the others
    when their toggle (View Layer > Passes) is on."""
    return [p for p in passes.PASSES.values()
            if p.blender_toggle is None or (view_layer is not None and getattr(view_layer, p.blender_toggle))]


def report_notices(sink) -> None:
    for message in render_server.take_notices():
        sink({"WARNING"}, f"XScale-NVS: {message}")


# --- the engine -------------------------------------------------------------------------------

class XScaleRenderEngine(bpy.types.RenderEngine):
    bl_idname = ENGINE_ID
    bl_label = "XScale-NVS"
    bl_use_preview = False            # no material previews: the model is not a shader
    bl_use_postprocess = True         # compositor and sequencer run on the result
    bl_use_eevee_viewport = True      # Material Preview shading uses EEVEE
    bl_use_shading_nodes_custom = False

    # Final renders (F12, animation frames, `blender -b -a`) ----------------------------------
    def update_render_passes(self, scene=None, renderlayer=None):
        for p in wanted_passes(renderlayer):
            self.register_pass(scene, renderlayer, p.blender_pass, p.channels, p.blender_channels, p.blender_type)

    def render(self, depsgraph):
        scene, view_layer = depsgraph.scene_eval, depsgraph.view_layer_eval
        try:
            cam = render_camera(scene, self.camera_override or scene.camera)
            key, argv = server_for(scene)
            wanted = [p.name for p in wanted_passes(view_layer)]
            options = frame_options(scene, SCENE_OPTIONS["render_supersample"].value(scene.xscale.render_supersample))
            if render_server.current() is None or render_server.current().key != key:
                self.update_stats("", "XScale-NVS: starting the render server")

            def request(srv):       # the frame is copied into the result before the next request
                return srv.render(cam.width, cam.height, cam.K, cam.world_to_camera, passes=wanted,
                                  depth_miss=DEPTH_MISS, abort=self.test_break, recycle=True, **options)
            frame = render_server.call(key, argv, request, abort=self.test_break, timeout=SERVER_START_TIMEOUT_S)
        except render_server.Cancelled:
            return
        except (EngineError, preferences.BackendNotConfigured, render_server.ServerError) as e:
            report_notices(self.report)
            self.report({"ERROR"}, f"XScale-NVS: {e}")
            return
        report_notices(self.report)
        result = self.begin_result(0, 0, cam.width, cam.height, layer=view_layer.name)
        try:
            layer = result.layers[0]
            for name, pixels in frame.passes.items():
                blender_pass = passes.PASSES[name].blender_pass
                if blender_pass in layer.passes:
                    layer.passes[blender_pass].rect.foreach_set(pixels.reshape(-1))
        finally:
            self.end_result(result)
        sec = frame.meta.get("seconds", {})
        self.update_stats("", f"XScale-NVS: {cam.width}x{cam.height}, ss {frame.meta.get('ss')}, "
                              f"{1000 * sec.get('render', 0):.0f} ms on the server")

    # Viewport (Rendered shading) -----------------------------------------------------------
    def view_update(self, context, depsgraph):
        """Settings and the view are read on every draw; a scene edit only needs a redraw."""
        self.tag_redraw()

    def view_draw(self, context, depsgraph):
        scene = depsgraph.scene
        s = scene.xscale
        region, rv3d = context.region, context.region_data
        preview = self._preview(s)
        problem = ""
        try:
            key, argv = server_for(scene)
            K, E = cc.view_to_opencv(np.array(rv3d.view_matrix), np.array(rv3d.window_matrix),
                                     region.width, region.height)
            options = frame_options(scene, s.preview_supersample)
            view = View(region.width, region.height, _tuple(K), _tuple(E),
                        settings=(key, tuple(sorted((k, _hashable(v)) for k, v in options.items()))),
                        context=(argv, options))
            preview.post(view, s.preview_divisor)
        except (EngineError, preferences.BackendNotConfigured, ValueError) as e:
            problem = str(e)
        shown = preview.latest()
        if shown is not None and not problem:
            self._draw(scene, shown, region.width, region.height)
        notices = render_server.take_notices()
        if notices:
            self._xs_notice = (time.monotonic() + NOTICE_S, notices[-1])
            _redraw_later(self, self._xs_notice[0])
        until, notice = getattr(self, "_xs_notice", (0.0, ""))
        if time.monotonic() > until:
            notice = ""
        status = problem or preview.status or notice or _progress(preview, shown)
        self.update_stats("", f"XScale-NVS: {status}" if status else "XScale-NVS")

    def _preview(self, s) -> Preview:
        p = getattr(self, "_xs_preview", None)
        if p is None or p.closed:
            ref = weakref.ref(self)

            def redraw():
                engine = ref()
                if engine is None:
                    raise ReferenceError("engine freed")
                engine.tag_redraw()
            p = Preview(_preview_frame, redraw, divisor=s.preview_divisor)
            self._xs_preview = p
        return p

    def _draw(self, scene, shown, width: int, height: int) -> None:
        import gpu
        from gpu_extras.presets import draw_texture_2d
        if getattr(self, "_xs_seq", None) != shown.seq:
            h, w = shown.rgba.shape[:2]
            data = gpu.types.Buffer("FLOAT", w * h * 4, np.ascontiguousarray(shown.rgba).reshape(-1))
            self._xs_texture = gpu.types.GPUTexture((w, h), format="RGBA32F", data=data)
            self._xs_seq = shown.seq
        gpu.state.blend_set("ALPHA_PREMULT")
        self.bind_display_space_shader(scene)
        draw_texture_2d(self._xs_texture, (0, 0), width, height)
        self.unbind_display_space_shader()
        gpu.state.blend_set("NONE")

    def __del__(self):
        try:
            p = self.__dict__.get("_xs_preview")
        except ReferenceError:
            return
        if p is not None:
            p.close()


def _redraw_later(engine, when: float) -> None:
    """Redraw once `when` has passed (a notice then leaves the viewport's status line)."""
    ref = weakref.ref(engine)

    def redraw():
        e = ref()
        if e is not None:
            try:
                e.tag_redraw()
            except ReferenceError:
                pass
    t = threading.Timer(max(0.0, when - time.monotonic()) + 0.05, redraw)
    t.daemon = True
    t.start()


def _tuple(m) -> tuple:
    return tuple(tuple(float(v) for v in row) for row in m)


def _hashable(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _progress(preview: Preview, shown) -> str:
    if shown is None:
        return "starting the render server" if render_server.starting() else "rendering"
    if preview.full_done is not None:          # a slow full frame, band by band
        return f"rendering full resolution, {preview.full_done:.0%}"
    if preview.busy:
        return "starting the render server" if render_server.starting() else "rendering"
    res = "full resolution" if shown.divisor == 1 else f"1/{shown.divisor} resolution"
    return f"{res}, {1000 * shown.seconds:.0f} ms"


def _preview_frame(view: View, divisor: int, abort) -> np.ndarray:
    """A viewport frame (the Preview thread): RGBA rows bottom-up, as textures want them."""
    key = view.settings[0]
    argv, options = view.context
    w, h, K = view.scaled(divisor)
    frame = render_server.call(
        key, argv, lambda srv: srv.render(w, h, K, view.world_to_camera, passes=("rgba",), abort=abort, **options),
        abort=abort, timeout=SERVER_START_TIMEOUT_S)
    return frame.passes["rgba"]


# --- the render server's lifetime ------------------------------------------------------------

class XSCALE_OT_stop_render_server(bpy.types.Operator):
    """Stop the render server and free its GPU memory (the next render starts it again)"""
    bl_idname = "xscale.stop_render_server"
    bl_label = "Stop Render Server"

    def execute(self, context):
        render_server.shutdown()
        return {"FINISHED"}


CLASSES = (XScaleRenderEngine, XSCALE_OT_stop_render_server)


@persistent
def _on_load_pre(*_args):
    render_server.shutdown()      # the next file may name another run (or none)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    if _on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_on_load_pre)


def unregister() -> None:
    render_server.shutdown()
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
