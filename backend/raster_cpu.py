"""Exact software rasterizer (numpy only): the CPU path and the reference for the CUDA path.

Every sample is a ray through a continuous pixel coordinate (pixel centre at +0.5, see
backend.cameras); the visible triangle, its perspective-correct barycentrics and the camera
depth come from an exact ray/triangle intersection, which is what nvdiffrast computes at
pixel centres. Supersampling by s is rasterization of `camera.scaled(s)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cameras import Camera
from .meshio import Mesh

NEAR = 1e-4


@dataclass
class Raster:
    tri: np.ndarray     # (H, W) int32 triangle id, -1 where no triangle is hit
    bary: np.ndarray    # (H, W, 2) float32 barycentrics (b1, b2) of vertices 1 and 2; b0 = 1 - b1 - b2
    depth: np.ndarray   # (H, W) float32 camera-space z, inf where nothing is hit

    @property
    def mask(self) -> np.ndarray:
        return self.tri >= 0


def interpolate(r: Raster, faces: np.ndarray, attr: np.ndarray) -> np.ndarray:
    """Interpolate per-vertex attributes (V, C) at every sample -> (H, W, C) (zero where no hit)."""
    t = np.where(r.tri >= 0, r.tri, 0)
    f = faces[t]                                              # (H, W, 3)
    b1, b2 = r.bary[..., 0:1].astype(np.float64), r.bary[..., 1:2].astype(np.float64)
    a = attr.astype(np.float64)
    out = (1 - b1 - b2) * a[f[..., 0]] + b1 * a[f[..., 1]] + b2 * a[f[..., 2]]
    return np.where(r.mask[..., None], out, 0.0)


def _intersect(P0, E1, E2, dx, dy):
    """Moller-Trumbore for camera-space triangles (origin at the camera) against rays (dx, dy, 1).
    P0, E1, E2: (..., 3); dx, dy: (...). Returns t (= z depth), b1, b2."""
    r = np.stack([dx, dy, np.ones_like(dx)], -1)
    p = np.cross(r, E2)
    det = np.einsum("...k,...k->...", E1, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / det
        tv = -P0
        b1 = np.einsum("...k,...k->...", tv, p) * inv
        q = np.cross(tv, E1)
        b2 = np.einsum("...k,...k->...", r, q) * inv
        t = np.einsum("...k,...k->...", E2, q) * inv
    return t, b1, b2


def rasterize(mesh: Mesh, cam: Camera, chunk: int = 4096) -> Raster:
    W, H = cam.width, cam.height
    if abs(cam.K[0, 1]) > 0:
        raise ValueError("skewed intrinsics are not supported by the rasterizer")
    V = cam.to_camera(mesh.vertices.astype(np.float64))
    F = mesh.faces
    zbuf = np.full(H * W, np.inf)
    tri = np.full(H * W, -1, np.int32)
    bary = np.zeros((H * W, 2))

    z = V[F][..., 2]                                          # (F, 3)
    front = (z > NEAR).all(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = cam.fx * V[:, 0] / V[:, 2] + cam.cx
        v = cam.fy * V[:, 1] / V[:, 2] + cam.cy
    uf, vf = u[F], v[F]
    # Sample k along x has centre k + 0.5: it is inside [lo, hi] when ceil(lo - 0.5) <= k <= floor(hi - 0.5).
    x0 = np.where(front, np.ceil(uf.min(1) - 0.5), 0)
    x1 = np.where(front, np.floor(uf.max(1) - 0.5), W - 1)
    y0 = np.where(front, np.ceil(vf.min(1) - 0.5), 0)
    y1 = np.where(front, np.floor(vf.max(1) - 0.5), H - 1)
    x0, x1 = np.clip(x0, 0, W), np.clip(x1, -1, W - 1)
    y0, y1 = np.clip(y0, 0, H), np.clip(y1, -1, H - 1)
    visible = (z > NEAR).any(1) & (x1 >= x0) & (y1 >= y0)
    bw = (x1 - x0 + 1).astype(np.int64)
    bh = (y1 - y0 + 1).astype(np.int64)

    def resolve(ids, samples, t, b1, b2):
        with np.errstate(invalid="ignore"):
            hit = (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1) & (t > NEAR)
        ids, samples, t, b1, b2 = ids[hit], samples[hit], t[hit], b1[hit], b2[hit]
        if len(t) == 0:
            return
        order = np.lexsort((ids, t, samples))                 # per sample: nearest, then lowest id
        s_sorted = samples[order]
        first = np.ones(len(order), bool)
        first[1:] = s_sorted[1:] != s_sorted[:-1]
        sel = order[first]
        s = samples[sel]
        better = (t[sel] < zbuf[s]) | ((t[sel] == zbuf[s]) & (ids[sel] < tri[s]))
        s, sel = s[better], sel[better]
        zbuf[s] = t[sel]
        tri[s] = ids[sel]
        bary[s, 0], bary[s, 1] = b1[sel], b2[sel]

    P0 = V[F[:, 0]]
    E1 = V[F[:, 1]] - P0
    E2 = V[F[:, 2]] - P0
    # Small triangles: batched with a fixed candidate window per size class.
    small = visible & (bw <= 32) & (bh <= 32)
    for wcls in (1, 2, 4, 8, 16, 32):
        for hcls in (1, 2, 4, 8, 16, 32):
            sel = np.nonzero(small & (bw <= wcls) & (bw > wcls // 2 if wcls > 1 else True)
                             & (bh <= hcls) & (bh > hcls // 2 if hcls > 1 else True))[0]
            if len(sel) == 0:
                continue
            oy, ox = np.meshgrid(np.arange(hcls), np.arange(wcls), indexing="ij")
            ox, oy = ox.ravel(), oy.ravel()
            step = max(1, chunk * 16 // (wcls * hcls))
            for k in range(0, len(sel), step):
                ids = sel[k:k + step]
                px = x0[ids, None] + ox[None]
                py = y0[ids, None] + oy[None]
                ok = (px <= x1[ids, None]) & (py <= y1[ids, None])
                pxo, pyo = px + 0.5, py + 0.5
                dx = (pxo - cam.cx) / cam.fx
                dy = (pyo - cam.cy) / cam.fy
                t, b1, b2 = _intersect(P0[ids, None], E1[ids, None], E2[ids, None], dx, dy)
                t = np.where(ok, t, -1.0)
                samples = (py * W + px).astype(np.int64)
                idb = np.broadcast_to(ids[:, None], samples.shape)
                resolve(idb.ravel(), np.where(ok, samples, 0).ravel(), t.ravel(), b1.ravel(), b2.ravel())
    # Large triangles (and those crossing the near plane): one at a time over their box.
    for i in np.nonzero(visible & ~small)[0]:
        ys = np.arange(int(y0[i]), int(y1[i]) + 1)
        xs = np.arange(int(x0[i]), int(x1[i]) + 1)
        py, px = np.meshgrid(ys, xs, indexing="ij")
        dx = (px + 0.5 - cam.cx) / cam.fx
        dy = (py + 0.5 - cam.cy) / cam.fy
        t, b1, b2 = _intersect(P0[i], E1[i], E2[i], dx, dy)
        samples = (py * W + px).ravel()
        resolve(np.full(samples.shape, i, np.int64), samples, t.ravel(), b1.ravel(), b2.ravel())

    return Raster(tri.reshape(H, W), bary.reshape(H, W, 2).astype(np.float32),
                  zbuf.reshape(H, W).astype(np.float32))


def supersample_view(a: np.ndarray, ss: int) -> np.ndarray:
    """(ss*H, ss*W, ...) samples of camera.scaled(ss) -> (H, W, ss*ss, ...), sub-sample index a + ss*b
    (a along x, b along y), matching Camera.sample_coords."""
    Hs, Ws = a.shape[:2]
    H, W = Hs // ss, Ws // ss
    r = a.reshape(H, ss, W, ss, *a.shape[2:])
    r = np.moveaxis(r, 2, 1)                                  # (H, W, ss_y, ss_x, ...)
    return r.reshape(H, W, ss * ss, *a.shape[2:])
