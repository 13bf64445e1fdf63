"""The viewport's background renderer (standard library and numpy, no bpy): a thread that renders
the latest view the viewport asked for, so drawing never waits for the render server.

The viewport posts its view on every redraw (`post`, cheap). While the view keeps changing the
thread renders at 1/`divisor` of the resolution; once the view has rested for `idle_s` it renders
it at full resolution. When a full-resolution frame takes no longer than `budget_s`, reduced
frames would not come sooner on screen than full ones, so the view is rendered at full
resolution straight away. After each frame `on_frame()` runs (the engine's tag_redraw), and the
viewport draws `latest()`.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np


@dataclass(frozen=True)
class View:
    """What the viewport shows: region size, camera (OpenCV K and world_to_camera as tuples) and
    the settings the frame depends on (`settings`: hashable, e.g. ss, exposure, the server key)."""
    width: int
    height: int
    K: tuple
    world_to_camera: tuple
    settings: Any = ()
    context: Any = field(default=None, compare=False, hash=False)   # passed on to render(), not compared

    def scaled(self, divisor: int) -> tuple[int, int, np.ndarray]:
        """(width, height, K) of this view at 1/divisor of the resolution (the same frustum)."""
        K = np.array(self.K, dtype=np.float64)
        if divisor <= 1:
            return self.width, self.height, K
        w, h = max(1, round(self.width / divisor)), max(1, round(self.height / divisor))
        K[0] *= w / self.width
        K[1] *= h / self.height
        return w, h, K


@dataclass
class Shown:
    """A finished frame for the viewport to draw."""
    rgba: np.ndarray           # (h, w, 4) float32, rows bottom-up (OpenGL texture order)
    view: View
    divisor: int
    seq: int                   # increases with every frame
    seconds: float             # request to pixels


class Preview:
    """`render(view, divisor, abort)` returns an (h, w, 4) array for the view at 1/divisor of its
    resolution; it may raise, and the message becomes `status`."""

    def __init__(self, render: Callable[[View, int, Callable[[], bool]], np.ndarray],
                 on_frame: Callable[[], None], *, divisor: int = 4, idle_s: float = 0.2,
                 budget_s: float = 1 / 30):
        self._render, self._on_frame = render, on_frame
        self.divisor, self.idle_s, self.budget_s = divisor, idle_s, budget_s
        self._cond = threading.Condition()
        self._want: Optional[View] = None
        self._done_full: Optional[View] = None
        self._done_low: Optional[View] = None
        self._closed = False
        self._shown: Optional[Shown] = None
        self._seq = 0
        self.full_seconds: Optional[float] = None     # the last full-resolution round trip
        self.status = ""                               # an error to show, '' when fine
        self.busy = False
        self._thread = threading.Thread(target=self._run, name="xscale-preview", daemon=True)
        self._thread.start()

    # --- the viewport's side ------------------------------------------------------------------
    def post(self, view: View, divisor: Optional[int] = None) -> None:
        with self._cond:
            if divisor is not None:
                self.divisor = divisor
            if view != self._want:
                self._want = view
                self._cond.notify_all()

    def latest(self) -> Optional[Shown]:
        return self._shown

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Until the latest view is shown at full resolution (tests)."""
        t_end = time.monotonic() + timeout
        with self._cond:
            while not self._closed and (self._want is None or self._want != self._done_full):
                left = t_end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    # --- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or (self._want is not None and self._want != self._done_full))
                if self._closed:
                    return
                view = self._want
                d = self.divisor
            fast = self.full_seconds is not None and self.full_seconds <= self.budget_s
            ok = True
            if d > 1 and not fast and view != self._done_low:
                ok = self._frame(view, d)
                if ok:
                    self._done_low = view
                    with self._cond:          # still moving? then the next reduced frame
                        if self._cond.wait_for(lambda: self._closed or self._want != view, timeout=self.idle_s):
                            continue
            if ok:
                t0 = time.perf_counter()
                ok = self._frame(view, 1)
                if ok:
                    self.full_seconds = time.perf_counter() - t0
            with self._cond:
                self._done_full = view    # also after an error: tried again when the view changes
                self._cond.notify_all()

    def _frame(self, view: View, divisor: int) -> bool:
        t0 = time.perf_counter()
        self.busy = True
        try:
            rgba = self._render(view, divisor, lambda: self._closed)
        except Exception as e:  # shown in the viewport; the next view change tries again
            self.status = str(e) or type(e).__name__
            return False
        finally:
            self.busy = False
        self.status = ""
        self._seq += 1
        self._shown = Shown(rgba, view, divisor, self._seq, time.perf_counter() - t0)
        try:
            self._on_frame()
        except ReferenceError:      # the engine is gone (viewport closed or shading changed)
            self.close()
        return True
