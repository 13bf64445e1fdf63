"""Manual check of the render engine's viewport in a real Blender with a window (not run by pytest):

    XSCALE_BACKEND_PYTHON=/path/to/venv/bin/python XS_OUT=/tmp/xs_viewport \\
        blender shot.blend --python tests/real/engine_viewport.py

`shot.blend` has the XScale-NVS engine selected, a run folder set and a scene camera; the
extension is installed and enabled. The script switches the 3D view to Rendered shading and then,
a phase of XS_PHASE_S seconds each (default 60): camera view; a free perspective view; the render
server killed and the view moved (a short phase: the viewport reports the dead server and starts
a new one); the new server's frame.
A screenshot ends each phase (XS_OUT/viewport_N_PHASE.png; XS_SHOT_CMD to take it with another
tool). XS_OUT/viewport.log records, for every phase, how long the engine's view_draw calls took
(they must never wait for the server), the server's process and the number of starts. Blender
quits at the end.
"""
import os
import signal
import sys
import time

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_blender import addon, logger  # noqa: E402

OUT = os.environ.get("XS_OUT", "/tmp/xs_viewport")
PHASE_S = float(os.environ.get("XS_PHASE_S", "60"))
say = logger(OUT, "viewport.log", "engine_viewport")
draw_ms: list[float] = []


def instrument() -> None:
    """Time every view_draw of the engine (wraps the class's method)."""
    cls = addon("engine").XScaleRenderEngine
    original = cls.view_draw

    def timed(self, context, depsgraph):
        t0 = time.perf_counter()
        try:
            original(self, context, depsgraph)
        finally:
            draw_ms.append(1000 * (time.perf_counter() - t0))
    cls.view_draw = timed


def view3d():
    for win in bpy.context.window_manager.windows:
        for area in win.screen.areas:
            if area.type == "VIEW_3D":
                region = next(r for r in area.regions if r.type == "WINDOW")
                return win, area, region
    raise RuntimeError("no 3D view")


def screenshot(name: str) -> None:
    """Blender's own screenshot, or XS_SHOT_CMD (e.g. "import -window root {path}": under Xvfb
    with software OpenGL Blender's screenshot can come out black)."""
    path = os.path.join(OUT, f"{name}.png")
    cmd = os.environ.get("XS_SHOT_CMD")
    if cmd:
        import shlex
        import subprocess
        subprocess.run([part.replace("{path}", path) for part in shlex.split(cmd)], check=False)
    else:
        win, _area, _region = view3d()
        with bpy.context.temp_override(window=win):
            bpy.ops.screen.screenshot(filepath=path, check_existing=False)
    say("screenshot", path)


def report(phase: str) -> None:
    rs = addon("core.render_server")
    srv = rs.current()
    ms = sorted(draw_ms)
    worst = ms[-1] if ms else 0.0
    median = ms[len(ms) // 2] if ms else 0.0
    say(f"{phase}: view_draw calls {len(ms)}, median {median:.1f} ms, max {worst:.1f} ms; "
        f"server {srv.pid if srv else None} ({srv.info.get('device') if srv else '-'}), starts {rs.starts}")
    draw_ms.clear()


def camera_view() -> None:
    win, area, region = view3d()
    space = area.spaces.active
    space.shading.type = "RENDERED"
    space.region_3d.view_perspective = "CAMERA"
    with bpy.context.temp_override(window=win, area=area, region=region):
        bpy.ops.view3d.view_center_camera()
    for a in win.screen.areas:
        if a.type == "PROPERTIES":
            a.spaces.active.context = "RENDER"


def free_view() -> None:
    import mathutils
    _win, area, _region = view3d()
    r3d = area.spaces.active.region_3d
    cam = bpy.context.scene.camera
    r3d.view_perspective = "PERSP"
    r3d.view_rotation = mathutils.Quaternion((0.0, 0.0, 1.0), 0.35) @ cam.matrix_world.to_quaternion()
    r3d.view_distance = 1.0
    r3d.view_location = cam.matrix_world.translation - r3d.view_rotation @ mathutils.Vector((0.0, 0.0, 1.0))


def kill_server_and_move() -> None:
    import mathutils
    srv = addon("core.render_server").current()
    if srv is not None:
        os.kill(srv.pid, signal.SIGKILL)
        say("killed the render server", srv.pid)
    _win, area, _region = view3d()
    r3d = area.spaces.active.region_3d
    r3d.view_rotation = mathutils.Quaternion((0.0, 0.0, 1.0), -0.1) @ r3d.view_rotation


# (name, what starts the phase, its length in phases): the third is short, to show the notice.
PHASES = [("1_camera_view", camera_view, 1.0), ("2_free_view", free_view, 1.0),
          ("3_server_killed", kill_server_and_move, 0.1), ("4_restarted", lambda: None, 1.0)]


def run_phase(k: int = 0):
    if k > 0:
        name = PHASES[k - 1][0]
        screenshot(f"viewport_{name}")
        report(name)
    if k == len(PHASES):
        bpy.ops.wm.quit_blender()
        return None
    name, start, length = PHASES[k]
    say("phase", name)
    start()
    bpy.app.timers.register(lambda: run_phase(k + 1), first_interval=max(3.0, PHASE_S * length))
    return None


instrument()
bpy.app.timers.register(run_phase, first_interval=3.0)
