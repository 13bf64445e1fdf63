"""The viewport's background renderer (standard library and numpy, no bpy): a thread that renders
the latest view the viewport asked for, so drawing never waits for the render server.

The viewport posts its view on every redraw (`post`, cheap). While the view keeps changing the
thread renders at 1/`divisor` of the resolution; once the view has rested for `idle_s` it renders
it at full resolution. When a full-resolution frame takes no longer than `budget_s`, reduced
frames would not come sooner on screen than full ones, so the view is rendered at full
resolution straight away. After each frame `on_frame()` runs (the engine's tag_redraw), and the
viewport draws `latest()`.

A slow full-resolution frame (seconds on a CPU) is asked for in bands of rows of about `band_s`
each, and a view change cancels it between two bands: the new view's reduced frame comes next
instead of the old view's full one. Each request's time per pixel sizes the next band; a frame
known to be fast (a GPU) is one request.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import numpy as np

BAND_S = 0.25          # a slow full-resolution frame is asked for in bands of about this long
FIRST_BANDS_FROM = 4   # before any full frame was timed: bands when it may take this many band_s
CANCELLED = "cancelled"


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

    def band(self, top: int, rows: int) -> "View":
        """Image rows top..top+rows-1 of this view (rows counted from the top, at full resolution):
        the same camera, its principal point moved up by `top`."""
        K = [list(row) for row in self.K]
        K[1][2] -= top
        return replace(self, height=rows, K=tuple(tuple(row) for row in K))


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
                 budget_s: float = 1 / 30, band_s: float = BAND_S):
        self._render, self._on_frame = render, on_frame
        self.divisor, self.idle_s, self.budget_s, self.band_s = divisor, idle_s, budget_s, band_s
        self._cond = threading.Condition()
        self._want: Optional[View] = None
        self._done_full: Optional[View] = None
        self._done_low: Optional[View] = None
        self._closed = False
        self._shown: Optional[Shown] = None
        self._seq = 0
        self.full_seconds: Optional[float] = None     # the last full-resolution round trip
        self.pixel_seconds: Optional[float] = None    # the last full-resolution request's time per pixel
        self.status = ""                               # an error to show, '' when fine
        self.busy = False
        self.full_done: Optional[float] = None        # share of the full-resolution frame in flight
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
            low_s = None
            if d > 1 and not fast and view != self._done_low:
                t0 = time.perf_counter()
                rgba = self._call(view, d)
                if rgba is not None:
                    low_s = time.perf_counter() - t0
                    self._show(rgba, view, d, low_s)
                    self._done_low = view
                    with self._cond:          # still moving? then the next reduced frame
                        if self._cond.wait_for(lambda: self._closed or self._want != view, timeout=self.idle_s):
                            continue
                else:
                    self._mark_done(view)
                    continue
            if self._full_frame(view, low_s, d) is CANCELLED:
                continue                      # a newer view is waiting: its reduced frame comes first
            self._mark_done(view)

    def _mark_done(self, view: View) -> None:
        with self._cond:
            self._done_full = view    # also after an error: tried again when the view changes
            self._cond.notify_all()

    def _full_frame(self, view: View, low_s: Optional[float], d: int):
        """The view at full resolution, in bands of rows when it is slow; CANCELLED when the view
        changed between two bands, else whether it was shown."""
        guess_s = low_s * d * d if low_s is not None else None     # the reduced frame, scaled up
        t0 = time.perf_counter()
        bands: list[np.ndarray] = []
        top = 0
        try:
            while top < view.height:
                rows = min(self._band_rows(view, guess_s), view.height - top)
                part = view if rows == view.height else view.band(top, rows)
                t1 = time.perf_counter()
                rgba = self._call(part, 1)
                if rgba is None:
                    return False
                self.pixel_seconds = (time.perf_counter() - t1) / (view.width * rows)
                bands.append(rgba)
                top += rows
                self.full_done = top / view.height
                if top < view.height:
                    if self._closed or self._want != view:
                        return CANCELLED
                    self._notify()            # the status line shows how far the frame is
        finally:
            self.full_done = None
        # bands come top first; each is bottom-up, as the whole frame is
        rgba = bands[0] if len(bands) == 1 else np.concatenate(bands[::-1], axis=0)
        self.full_seconds = time.perf_counter() - t0
        self._show(rgba, view, 1, self.full_seconds)
        return True

    def _band_rows(self, view: View, guess_s: Optional[float]) -> int:
        """Rows of the next band: about band_s of work at the last request's time per pixel.
        Before any was timed, the whole frame unless the guess says it is slow."""
        per_pixel = self.pixel_seconds
        if per_pixel is None:
            if guess_s is None or guess_s < FIRST_BANDS_FROM * self.band_s:
                return view.height
            per_pixel = guess_s / (view.width * view.height)
        return max(1, min(view.height, int(self.band_s / max(per_pixel * view.width, 1e-12))))

    def _call(self, view: View, divisor: int) -> Optional[np.ndarray]:
        """render() of the view at 1/divisor; None after an error (then shown as `status`)."""
        self.busy = True
        try:
            rgba = self._render(view, divisor, lambda: self._closed)
        except Exception as e:  # shown in the viewport; the next view change tries again
            self.status = str(e) or type(e).__name__
            return None
        finally:
            self.busy = False
        self.status = ""
        return rgba

    def _show(self, rgba: np.ndarray, view: View, divisor: int, seconds: float) -> None:
        self._seq += 1
        self._shown = Shown(rgba, view, divisor, self._seq, seconds)
        self._notify()

    def _notify(self) -> None:
        try:
            self._on_frame()
        except ReferenceError:      # the engine is gone (viewport closed or shading changed)
            self.close()
