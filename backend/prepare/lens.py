"""Lens distortion of perspective cameras and the pinhole camera of an undistorted photo (numpy only).

One model covers every supported parameterisation. Normalised image coordinates (x, y) = (X/Z, Y/Z)
of a camera-space point are distorted by

    r2     = x^2 + y^2
    radial = (1 + k1 r2 + k2 r2^2 + k3 r2^3 + k4 r2^4) / (1 + d1 r2 + d2 r2^2 + d3 r2^3)
    t      = 1 + p3 r2 + p4 r2^2
    xd     = x radial + (2 p1 x y + p2 (r2 + 2 x^2)) t
    yd     = y radial + (p1 (r2 + 2 y^2) + 2 p2 x y) t

and land on the photo at u = fx xd + skew yd + cx, v = fy yd + cy, in continuous pixel coordinates
(the image spans [0, W] x [0, H], pixel (i, j) has its centre at (i + 0.5, j + 0.5); COLMAP and
Metashape both use this convention). p1/p2 are in OpenCV's order.

Parameterisations mapped onto it:
  COLMAP SIMPLE_RADIAL (f, cx, cy, k)              k1 = k
  COLMAP RADIAL (f, cx, cy, k1, k2)
  COLMAP OPENCV (fx, fy, cx, cy, k1, k2, p1, p2)   OpenCV's model, same p1/p2
  COLMAP FULL_OPENCV (fx, fy, cx, cy, k1, k2, p1, p2, k3, k4, k5, k6)
                                                   OpenCV's rational model: d1..d3 = k4..k6
  Metashape frame (f, cx, cy, b1, b2, k1..k4, p1..p4), from Agisoft's manual (appendix "Camera
  models"):  x' = x(1 + K1 r2 + K2 r2^2 + K3 r2^3 + K4 r2^4) + (P1 (r2 + 2x^2) + 2 P2 x y)(1 + P3 r2 + P4 r2^2)
             y' = y(1 + ...)                      + (P2 (r2 + 2y^2) + 2 P1 x y)(1 + P3 r2 + P4 r2^2)
             u = w/2 + cx + x'(f + B1) + y' B2,  v = h/2 + cy + y' f
  so fx = f + b1, fy = f, skew = b2, cx/cy are offsets from the image centre, and Metashape's P1
  is OpenCV's p2 (and P2 is p1): the two swap.

The undistorted photo is a pinhole photo with the source's focal lengths (fx, fy: the scale at the
principal point is kept, nothing is shrunk) and no skew, on a canvas just large enough to hold the
undistorted image of every source pixel: the principal point moves by a whole number of pixels so
the canvas starts at the leftmost/topmost undistorted source point. No source pixel is lost; output
pixels whose ray falls outside the source photo (or beyond the radius where the model folds over)
are invalid and get marked in a mask, never filled in.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

_R_SCAN = 20.0          # normalised radius scanned for the fold (tan(87 deg)); wider lenses are fisheyes
MAX_CANVAS_GROWTH = 4   # refuse an undistorted canvas more than this many times the photo's side
MAX_SIDE = 32766        # OpenCV's remap limit on image sides


@dataclass(frozen=True)
class Lens:
    """A distorted perspective camera (see the module doc). Hashable: photos sharing a lens share
    one undistortion map."""
    model: str                                  # for reports: "COLMAP OPENCV", "Metashape frame"
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    skew: float = 0.0
    k: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)    # radial numerator, r2 .. r2^4
    d: tuple[float, float, float] = (0.0, 0.0, 0.0)                # radial denominator, r2 .. r2^3
    p1: float = 0.0
    p2: float = 0.0
    p3: float = 0.0
    p4: float = 0.0
    params: tuple[tuple[str, float], ...] = field(default=(), compare=False)   # as the source names them

    # --- the model ------------------------------------------------------------------------
    @property
    def is_pinhole(self) -> bool:
        """True when photos of this lens need no resampling (no distortion, no skew)."""
        return not (any(self.k) or any(self.d) or self.p1 or self.p2 or self.skew)

    @property
    def terms(self) -> list[str]:
        """Names of the non-zero distortion parameters, as the source names them."""
        return [n for n, v in self.params if v != 0]

    def describe(self) -> str:
        t = self.terms
        return f"{self.model} ({', '.join(t)})" if t else self.model

    def distort(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised undistorted (x, y) -> normalised distorted (xd, yd)."""
        r2 = x * x + y * y
        k1, k2, k3, k4 = self.k
        radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
        if any(self.d):
            d1, d2, d3 = self.d
            radial = radial / (1.0 + r2 * (d1 + r2 * (d2 + r2 * d3)))
        xy = x * y
        tx = 2.0 * self.p1 * xy + self.p2 * (r2 + 2.0 * x * x)
        ty = self.p1 * (r2 + 2.0 * y * y) + 2.0 * self.p2 * xy
        if self.p3 or self.p4:
            t = 1.0 + r2 * (self.p3 + r2 * self.p4)
            tx, ty = tx * t, ty * t
        return x * radial + tx, y * radial + ty

    def to_pixels(self, xd: np.ndarray, yd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised distorted coordinates -> continuous pixel coordinates of the source photo."""
        return self.fx * xd + self.skew * yd + self.cx, self.fy * yd + self.cy

    def from_pixels(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous source pixel coordinates -> normalised distorted coordinates."""
        yd = (v - self.cy) / self.fy
        return (u - self.cx - self.skew * yd) / self.fx, yd

    def project(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised undistorted (x, y) -> where the source photo shows that ray (pixels)."""
        return self.to_pixels(*self.distort(x, y))

    def jacobian(self, x: np.ndarray, y: np.ndarray, h: float = 1e-6):
        """d(xd, yd)/d(x, y) by central differences: (a, b, c, e) = (dxd/dx, dxd/dy, dyd/dx, dyd/dy)."""
        xp, yp = self.distort(x + h, y)
        xm, ym = self.distort(x - h, y)
        a, c = (xp - xm) / (2 * h), (yp - ym) / (2 * h)
        xp, yp = self.distort(x, y + h)
        xm, ym = self.distort(x, y - h)
        return a, (xp - xm) / (2 * h), c, (yp - ym) / (2 * h)

    def undistort(self, xd: np.ndarray, yd: np.ndarray, iters: int = 60,
                  tol: float = 1e-12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised distorted -> undistorted by Newton's method started at the distorted point
        (the branch nearest the centre). Returns x, y and whether it converged onto a ray of the
        model's valid region (see `fold_radius`)."""
        xd, yd = np.asarray(xd, np.float64), np.asarray(yd, np.float64)
        x, y = xd.copy(), yd.copy()
        for _ in range(iters):
            ex, ey = self.distort(x, y)
            ex, ey = ex - xd, ey - yd
            if np.nanmax(np.abs(ex) + np.abs(ey), initial=0.0) < tol:
                break
            a, b, c, e = self.jacobian(x, y)
            det = a * e - b * c
            with np.errstate(divide="ignore", invalid="ignore"):
                dx, dy = (e * ex - b * ey) / det, (a * ey - c * ex) / det
            # Damped steps keep Newton from jumping across the fold onto another branch.
            step = np.hypot(dx, dy)
            scale = np.minimum(1.0, 0.25 * (1.0 + np.hypot(x, y)) / np.maximum(step, 1e-300))
            x, y = x - dx * scale, y - dy * scale
        ex, ey = self.distort(x, y)
        ok = (np.abs(ex - xd) + np.abs(ey - yd) < 1e-9) & self.valid_rays(x, y)
        return x, y, ok

    def fold_radius(self) -> float:
        """Normalised radius where the radial part stops growing (the model folds back onto itself
        beyond it, or its denominator vanishes); inf when it grows over the whole scanned range."""
        if not (any(self.k) or any(self.d)):
            return float("inf")
        r = np.linspace(0.0, _R_SCAN, 400_001)
        r2 = r * r
        k1, k2, k3, k4 = self.k
        d1, d2, d3 = self.d
        den = 1.0 + r2 * (d1 + r2 * (d2 + r2 * d3))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            g = r * (1.0 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))) / den
        bad = np.flatnonzero((np.diff(g) <= 0) | (den[1:] <= 0) | ~np.isfinite(g[1:]))
        return float(r[bad[0]]) if len(bad) else float("inf")

    def valid_rays(self, x: np.ndarray, y: np.ndarray, xd: np.ndarray | None = None,
                   yd: np.ndarray | None = None) -> np.ndarray:
        """Rays inside the fold radius where the model is locally one-to-one (Jacobian > 0).
        Given the distorted (xd, yd) of (x, y), one-sided differences save two evaluations."""
        rf = self._fold
        if xd is None or yd is None:
            a, b, c, e = self.jacobian(x, y)
        else:
            h = 1e-6
            xp, yp = self.distort(x + h, y)
            xq, yq = self.distort(x, y + h)
            a, c, b, e = (xp - xd) / h, (yp - yd) / h, (xq - xd) / h, (yq - yd) / h
        with np.errstate(invalid="ignore"):
            ok = (a * e - b * c > 0) & np.isfinite(x) & np.isfinite(y)
        if np.isfinite(rf):
            ok &= x * x + y * y < rf * rf
        return ok

    @property
    def _fold(self) -> float:
        cached = self.__dict__.get("_fold_cache")
        if cached is None:
            cached = self.fold_radius()
            object.__setattr__(self, "_fold_cache", cached)
        return cached


# --- the undistorted pinhole camera ------------------------------------------------------

@dataclass(frozen=True)
class Canvas:
    """The pinhole camera of an undistorted photo: K (no skew) and size, plus the whole-pixel
    offset of its principal point from the source's (ox = cx_source - cx_new)."""
    K: np.ndarray
    width: int
    height: int
    ox: int
    oy: int
    outline_lost: float = 0.0    # fraction of the photo's outline beyond the model's fold (not undistortable)


def pinhole_canvas(lens: Lens, multiple: int = 1) -> Canvas:
    """Smallest canvas (see the module doc) holding the undistorted image of every source pixel,
    its sides rounded up to a multiple of `multiple` (padding right/bottom, so that downsampling
    by that factor crops nothing)."""
    W, H = lens.width, lens.height
    # The source photo's outline, every half pixel; its undistorted image bounds the content
    # wherever the model is one-to-one over the photo.
    n_u, n_v = 2 * W + 1, 2 * H + 1
    u = np.concatenate([np.linspace(0, W, n_u), np.full(n_v, float(W)), np.linspace(0, W, n_u), np.zeros(n_v)])
    v = np.concatenate([np.zeros(n_u), np.linspace(0, H, n_v), np.full(n_u, float(H)), np.linspace(0, H, n_v)])
    x, y, ok = lens.undistort(*lens.from_pixels(u, v))
    xs, ys = [x[ok]], [y[ok]]
    rf = lens._fold
    if not ok.all() and np.isfinite(rf):
        # Part of the outline lies beyond the fold: the content there ends on the fold circle.
        th = np.linspace(0, 2 * np.pi, 7201)
        cx_, cy_ = rf * (1 - 1e-6) * np.cos(th), rf * (1 - 1e-6) * np.sin(th)
        pu, pv = lens.project(cx_, cy_)
        inside = (pu >= 0) & (pu <= W) & (pv >= 0) & (pv <= H)
        xs.append(cx_[inside])
        ys.append(cy_[inside])
    x, y = np.concatenate(xs), np.concatenate(ys)
    if not len(x):
        raise InputError(f"{lens.model} lens ({lens.describe()}): no pixel of the {W}x{H} photo can be "
                         "undistorted; the distortion parameters do not describe this photo.")
    pu, pv = lens.fx * x + lens.cx, lens.fy * y + lens.cy
    eps = 1e-6                       # an undistorted outline on a whole pixel stays on it
    x0, y0 = int(np.floor(pu.min() + eps)), int(np.floor(pv.min() + eps))
    w, h = int(np.ceil(pu.max() - eps)) - x0, int(np.ceil(pv.max() - eps)) - y0
    w, h = -(-w // multiple) * multiple, -(-h // multiple) * multiple
    if w > MAX_CANVAS_GROWTH * W or h > MAX_CANVAS_GROWTH * H or max(w, h) > MAX_SIDE:
        raise InputError(f"{lens.model} lens ({lens.describe()}): the undistorted {W}x{H} photo would need a "
                         f"{w}x{h} pinhole canvas; the field of view is too wide for a pinhole photo (a fisheye "
                         "lens?). Undistort the photos with the reconstruction software (cropping to a "
                         "pinhole view) and prepare from its output.")
    K = np.array([[lens.fx, 0.0, lens.cx - x0], [0.0, lens.fy, lens.cy - y0], [0.0, 0.0, 1.0]])
    return Canvas(K, w, h, x0, y0, float(1.0 - ok.mean()))


def source_positions(lens: Lens, canvas: Canvas, u: np.ndarray, v: np.ndarray):
    """Continuous output pixel coordinates (u, v) on `canvas` -> where the source photo shows
    the same ray (su, sv), and whether the output pixel is valid: the ray lies in the model's
    valid region and lands within the source's pixel centres [0.5, W - 0.5] x [0.5, H - 0.5], so
    interpolation uses real pixels only."""
    K = canvas.K
    x, y = (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]
    xd, yd = lens.distort(x, y)
    su, sv = lens.to_pixels(xd, yd)
    ok = lens.valid_rays(x, y, xd, yd) & (su >= 0.5) & (su <= lens.width - 0.5) & (sv >= 0.5) & (sv <= lens.height - 0.5)
    return su, sv, ok


def undistort_maps(lens: Lens, canvas: Canvas, rows: int = 256):
    """Per output pixel: the source position in OpenCV's remap convention (pixel centres at
    integers, so continuous - 0.5), as float32 maps, the validity mask (bool), and the largest
    shift (pixels) between where the source shows a valid pixel's content and where the pinhole
    camera puts it (the lens distortion's size, skew included)."""
    W, H = canvas.width, canvas.height
    map_x = np.empty((H, W), np.float32)
    map_y = np.empty((H, W), np.float32)
    valid = np.empty((H, W), bool)
    shift = 0.0
    i = np.arange(W, dtype=np.float64) + 0.5
    for r0 in range(0, H, rows):
        r1 = min(H, r0 + rows)
        u, v = np.meshgrid(i, np.arange(r0, r1, dtype=np.float64) + 0.5)
        su, sv, ok = source_positions(lens, canvas, u, v)
        map_x[r0:r1], map_y[r0:r1], valid[r0:r1] = su - 0.5, sv - 0.5, ok
        if ok.any():
            d = np.hypot(su - (u + canvas.ox), sv - (v + canvas.oy))
            shift = max(shift, float(d[ok].max()))
    return map_x, map_y, valid, shift


# --- source parameterisations ------------------------------------------------------------

COLMAP_UNDISTORTABLE = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")
_COLMAP_NAMES = {
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "FULL_OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"),
}


def colmap_lens(model: str, params, width: int, height: int) -> Lens:
    """Lens of a COLMAP camera of one of COLMAP_UNDISTORTABLE (params in COLMAP's order)."""
    p = [float(x) for x in params]
    names = _COLMAP_NAMES[model]
    dist = tuple((n, v) for n, v in zip(names, p) if n not in ("f", "fx", "fy", "cx", "cy"))
    if model in ("SIMPLE_RADIAL", "RADIAL"):
        f, cx, cy = p[:3]
        ks = p[3:] + [0.0] * (4 - len(p[3:]))
        return Lens(f"COLMAP {model}", width, height, f, f, cx, cy, k=tuple(ks), params=dist)
    fx, fy, cx, cy, k1, k2, p1, p2 = p[:8]
    if model == "OPENCV":
        return Lens(f"COLMAP {model}", width, height, fx, fy, cx, cy, k=(k1, k2, 0.0, 0.0), p1=p1, p2=p2,
                    params=dist)
    k3, k4, k5, k6 = p[8:12]
    return Lens(f"COLMAP {model}", width, height, fx, fy, cx, cy, k=(k1, k2, k3, 0.0), d=(k4, k5, k6),
                p1=p1, p2=p2, params=dist)


METASHAPE_TERMS = ("b1", "b2", "k1", "k2", "k3", "k4", "p1", "p2", "p3", "p4")


def metashape_lens(width: int, height: int, fx: float, fy: float, cx: float, cy: float,
                   terms: dict[str, float]) -> Lens:
    """Lens of a Metashape frame camera: fx = f + b1, fy = f, absolute principal point (cx, cy) =
    (w/2 + cx, h/2 + cy) as in the XML's offsets, skew = b2; `terms` holds the XML's
    k1..k4, p1..p4, b2 (missing ones are 0). Metashape's p1/p2 swap into OpenCV's order."""
    g = {n: float(terms.get(n, 0.0)) for n in METASHAPE_TERMS}
    params = tuple((n, g[n]) for n in METASHAPE_TERMS if n != "b1")
    return Lens("Metashape frame", width, height, fx, fy, cx, cy, skew=g["b2"],
                k=(g["k1"], g["k2"], g["k3"], g["k4"]), p1=g["p2"], p2=g["p1"], p3=g["p3"], p4=g["p4"],
                params=params)
