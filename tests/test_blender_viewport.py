"""The XScale-NVS engine's viewport (Rendered shading): a slow full-resolution frame comes in bands of
rows (core/preview.py), which put together are the frame the server renders whole, and a view change
cancels it between two bands."""
from __future__ import annotations

import threading
import time

import numpy as np

from test_blender_engine import engine_scene  # noqa: F401 (fixture)


def test_full_frames_in_bands_are_the_whole_frame(engine_scene, bpy_module):  # noqa: F811
    """The viewport asks for a slow full-resolution frame in bands of rows (View.band): put
    together they are the frame the server renders whole."""
    from xscale_blender import engine
    from xscale_blender.core.preview import View
    scene = engine_scene
    cam = engine.render_camera(scene, scene.camera)
    key, argv = engine.server_for(scene)
    options = engine.frame_options(scene, 1)
    view = View(cam.width, cam.height, engine._tuple(cam.K), engine._tuple(cam.world_to_camera),
                settings=(key,), context=(argv, options))
    whole = engine._preview_frame(view, 1, lambda: False)
    bands = [engine._preview_frame(view.band(top, rows), 1, lambda: False) for top, rows in ((0, 7), (7, 16), (23, 7))]
    assert whole.shape == (30, 40, 4) and whole[..., 3].mean() > 0.2
    np.testing.assert_allclose(np.concatenate(bands[::-1]), whole, atol=1e-5)     # rows bottom-up


def test_a_view_change_cancels_the_slow_full_frame_in_flight():
    """A full frame that takes 1.2 s: the view changes while it renders; the new view's reduced
    frame comes within a band's time, and the old view's full frame is never shown."""
    from xscale_blender.core.preview import Preview, View
    row_s = 0.01                                  # a 120-row frame: 1.2 s, like a CPU's seconds
    lock, shown = threading.Lock(), []
    full_started = threading.Event()

    def render(view, divisor, abort):
        w, h, K = view.scaled(divisor)
        if divisor == 1 and view.world_to_camera[0][3] == 1.0:
            full_started.set()
        time.sleep(h * row_s)
        top = round(view.K[1][2] - K[1][2] * divisor) if divisor > 1 else round(60.0 - view.K[1][2])
        rows = np.arange(top, top + h, dtype=np.float32)[::-1]           # bottom-up
        return np.broadcast_to(rows[:, None, None], (h, w, 4)).copy()

    def on_frame():
        with lock:
            frame = p.latest()
            if not shown or shown[-1][0] is not frame:
                shown.append((frame, time.monotonic()))

    def view(k):
        return View(160, 120, ((100.0, 0, 80.0), (0, 100.0, 60.0), (0, 0, 1)), ((1.0, 0, 0, float(k)),))
    p = Preview(render, on_frame, divisor=4, idle_s=0.05, budget_s=0.0, band_s=0.1)
    try:
        p.post(view(0))
        assert p.wait_idle(20)
        whole = p.latest().rgba
        assert p.latest().divisor == 1
        np.testing.assert_array_equal(whole[:, 0, 0], np.arange(120, dtype=np.float32)[::-1])
        p.post(view(1))                               # then the full frame of view 1 starts ...
        assert full_started.wait(10)
        time.sleep(0.05)
        t_change = time.monotonic()
        p.post(view(2))                               # ... and the view changes
        assert p.wait_idle(20)
        with lock:
            after = [(f, t) for f, t in shown if t > t_change]
        assert after[0][0].view == view(2) and after[0][0].divisor == 4
        assert after[0][1] - t_change < 0.6           # a band and a reduced frame, not the 1.2 s frame
        assert all(f.view != view(1) for f, _t in after)
        assert after[-1][0].divisor == 1
        np.testing.assert_array_equal(after[-1][0].rgba, whole)
    finally:
        p.close()
