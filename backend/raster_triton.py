"""The GPU rasterizer with no compiler step: visibility (the nearest triangle per sample) in Triton.

Triton compiles its kernels at run time from the wheel alone (no nvcc, ninja or MSVC), on Linux
(`triton`, shipped with torch's CUDA wheels) and Windows (`triton-windows`). What it finds is the
candidate triangle per sample; backend.raster_resolve then computes the exact float64 surface
point, as it does for nvdiffrast's answer, so the two paths give the same surface.

How a sample is tested: in camera space (x right, y down, z forward) a sample is the ray
r = ((sx + 0.5 - cx) / fx, (sy + 0.5 - cy) / fy, 1). It passes through triangle (p0, p1, p2)
when the three edge values e_ab = (p_a x p_b) . r share a sign (either winding: the mesh is
two-sided), and hits it at camera depth z = det(p0, p1, p2) / (e01 + e12 + e20). This is
homogeneous rasterization: triangles that cross the camera plane need no clipping (the hit must
lie in front of the near plane), and each edge's normal is computed from its two vertices in
index order, so the two triangles sharing an edge see exactly opposite values: no sample between
them is missed (a sample on the edge is in both; the depth test keeps one).

Two passes, no tiling of the image and no limit on the number of triangles (the id is 32 bits):
- `_small_kernel`, one lane per triangle: the triangle's box of samples (of its part in front of
  the near plane); boxes of at most 4 x 4 samples are tested there and then (most triangles of a
  photogrammetry mesh cover a pixel or less), larger ones are counted in tiles for the next pass;
- `_tile_kernel`, one program per triangle and run of TILE_RUN tiles of 32 x 8 samples.
Each covered sample does one 64-bit atomic min of (float32 depth bits << 32 | triangle id): the
nearest triangle wins, the lowest id on equal depth (as backend.raster_cpu breaks ties).
Runs on CPU tensors under TRITON_INTERPRET=1 (the tests drive it that way).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .cameras import Camera
from .raster_resolve import camera_params

EMPTY = torch.iinfo(torch.int64).max      # key of a sample no triangle covers
SMALL = 4                                 # boxes up to SMALL x SMALL samples: tested in the first pass
TILE_W, TILE_H = 32, 8                    # samples of one tile of the second pass
TILE_RUN = 16                             # tiles one program of the second pass walks through
BLOCK_V = 512                             # vertices per program of the transform
BLOCK_T = 64                              # triangles per program of the first pass
BOX_EPS = tl.constexpr(1e-3)              # box grown by this many samples: float32 rounding never
                                          # drops a sample on the triangle's extreme vertex


@triton.jit
def _transform_kernel(v_ptr, prm_ptr, out_ptr, V, BLOCK: tl.constexpr):
    """World vertices (float64, georeferenced coordinates lose centimetres in float32) -> camera
    space, stored as float32: only differences of nearby camera-space points are taken later."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < V
    x = tl.load(v_ptr + 3 * i, m)
    y = tl.load(v_ptr + 3 * i + 1, m)
    z = tl.load(v_ptr + 3 * i + 2, m)
    for r in tl.static_range(3):
        c = (tl.load(prm_ptr + 3 * r) * x + tl.load(prm_ptr + 3 * r + 1) * y + tl.load(prm_ptr + 3 * r + 2) * z
             + tl.load(prm_ptr + 9 + r))
        tl.store(out_ptr + 3 * i + r, c.to(tl.float32), m)


@triton.jit
def _load_triangle(tri, m, f_ptr, pc_ptr):
    """Vertex ids and camera-space corners of triangle(s) `tri`."""
    ia = tl.load(f_ptr + 3 * tri, m, 0)
    ib = tl.load(f_ptr + 3 * tri + 1, m, 0)
    ic = tl.load(f_ptr + 3 * tri + 2, m, 0)
    ax, ay, az = tl.load(pc_ptr + 3 * ia, m, 0.0), tl.load(pc_ptr + 3 * ia + 1, m, 0.0), tl.load(pc_ptr + 3 * ia + 2, m, 0.0)
    bx, by, bz = tl.load(pc_ptr + 3 * ib, m, 0.0), tl.load(pc_ptr + 3 * ib + 1, m, 0.0), tl.load(pc_ptr + 3 * ib + 2, m, 0.0)
    cx, cy, cz = tl.load(pc_ptr + 3 * ic, m, 0.0), tl.load(pc_ptr + 3 * ic + 1, m, 0.0), tl.load(pc_ptr + 3 * ic + 2, m, 0.0)
    return ia, ib, ic, ax, ay, az, bx, by, bz, cx, cy, cz


@triton.jit
def _edge(ia, ib, ax, ay, az, bx, by, bz):
    """p_a x p_b, computed as lo x hi of the two vertices in index order and negated when a > b:
    the triangle on the other side of the edge gets bit-for-bit the opposite normal."""
    swap = ia > ib
    lx, ly, lz = tl.where(swap, bx, ax), tl.where(swap, by, ay), tl.where(swap, bz, az)
    hx, hy, hz = tl.where(swap, ax, bx), tl.where(swap, ay, by), tl.where(swap, az, bz)
    s = tl.where(swap, -1.0, 1.0)
    return s * (ly * hz - lz * hy), s * (lz * hx - lx * hz), s * (lx * hy - ly * hx)


@triton.jit
def _project_into(px, py, pz, ok, fx, fy, cx, cy, ulo, uhi, vlo, vhi):
    """Grow the box [ulo, uhi] x [vlo, vhi] (pixel coordinates) by point p where `ok`."""
    u = fx * px / pz + cx
    v = fy * py / pz + cy
    return (tl.where(ok, tl.minimum(ulo, u), ulo), tl.where(ok, tl.maximum(uhi, u), uhi),
            tl.where(ok, tl.minimum(vlo, v), vlo), tl.where(ok, tl.maximum(vhi, v), vhi))


@triton.jit
def _crossing(ax, ay, az, bx, by, bz, near, fx, fy, cx, cy, ulo, uhi, vlo, vhi):
    """Grow the box by the point where edge a-b crosses the near plane, if it does."""
    ok = (az < near) != (bz < near)
    t = tl.where(ok, (near - az) / (bz - az), 0.0)
    return _project_into(ax + t * (bx - ax), ay + t * (by - ay), tl.zeros_like(az) + near, ok,
                         fx, fy, cx, cy, ulo, uhi, vlo, vhi)


@triton.jit
def _box(ax, ay, az, bx, by, bz, cx_, cy_, cz, near, fx, fy, cx, cy, W, H):
    """First and last sample column and row of the triangle's part in front of the near plane
    (x1 < x0 or y1 < y0: no sample). Sample k sits at pixel coordinate k + 0.5."""
    inf = float("inf")
    ulo = tl.zeros_like(az) + inf
    uhi = tl.zeros_like(az) - inf
    vlo = tl.zeros_like(az) + inf
    vhi = tl.zeros_like(az) - inf
    ulo, uhi, vlo, vhi = _project_into(ax, ay, az, az >= near, fx, fy, cx, cy, ulo, uhi, vlo, vhi)
    ulo, uhi, vlo, vhi = _project_into(bx, by, bz, bz >= near, fx, fy, cx, cy, ulo, uhi, vlo, vhi)
    ulo, uhi, vlo, vhi = _project_into(cx_, cy_, cz, cz >= near, fx, fy, cx, cy, ulo, uhi, vlo, vhi)
    ulo, uhi, vlo, vhi = _crossing(ax, ay, az, bx, by, bz, near, fx, fy, cx, cy, ulo, uhi, vlo, vhi)
    ulo, uhi, vlo, vhi = _crossing(bx, by, bz, cx_, cy_, cz, near, fx, fy, cx, cy, ulo, uhi, vlo, vhi)
    ulo, uhi, vlo, vhi = _crossing(cx_, cy_, cz, ax, ay, az, near, fx, fy, cx, cy, ulo, uhi, vlo, vhi)
    # Clamp in float before converting: a vertex just in front of the near plane projects far out.
    x0 = tl.minimum(tl.maximum(tl.ceil(ulo - 0.5 - BOX_EPS), 0.0), W * 1.0)
    x1 = tl.maximum(tl.minimum(tl.floor(uhi - 0.5 + BOX_EPS), W - 1.0), -1.0)
    y0 = tl.minimum(tl.maximum(tl.ceil(vlo - 0.5 - BOX_EPS), 0.0), H * 1.0)
    y1 = tl.maximum(tl.minimum(tl.floor(vhi - 0.5 + BOX_EPS), H - 1.0), -1.0)
    return x0.to(tl.int32), x1.to(tl.int32), y0.to(tl.int32), y1.to(tl.int32)


@triton.jit
def _cover(keys_ptr, sx, sy, ok, tri, n01x, n01y, n01z, n12x, n12y, n12z, n20x, n20y, n20z, det,
           near, fx, fy, cx, cy, W):
    """Test samples (sx, sy) against the triangle and keep the nearest hit per sample."""
    dx = (sx.to(tl.float32) + 0.5 - cx) / fx
    dy = (sy.to(tl.float32) + 0.5 - cy) / fy
    e01 = n01x * dx + n01y * dy + n01z
    e12 = n12x * dx + n12y * dy + n12z
    e20 = n20x * dx + n20y * dy + n20z
    inside = ((e01 >= 0) & (e12 >= 0) & (e20 >= 0)) | ((e01 <= 0) & (e12 <= 0) & (e20 <= 0))
    z = det / (e01 + e12 + e20)
    hit = ok & inside & (z > near) & (z < float("inf"))
    key = (tl.where(hit, z, 1.0).to(tl.int32, bitcast=True).to(tl.int64) << 32) | tri.to(tl.int64)
    tl.atomic_min(keys_ptr + sy * W + sx, key, mask=hit, sem="relaxed")   # no ordering needed: a min


@triton.jit
def _setup(tri, m, f_ptr, pc_ptr):
    """Edge normals and det(p0, p1, p2) of triangle(s) `tri`, plus the corners (for the box)."""
    ia, ib, ic, ax, ay, az, bx, by, bz, cx_, cy_, cz = _load_triangle(tri, m, f_ptr, pc_ptr)
    n01x, n01y, n01z = _edge(ia, ib, ax, ay, az, bx, by, bz)
    n12x, n12y, n12z = _edge(ib, ic, bx, by, bz, cx_, cy_, cz)
    n20x, n20y, n20z = _edge(ic, ia, cx_, cy_, cz, ax, ay, az)
    det = ax * n12x + ay * n12y + az * n12z
    return (n01x, n01y, n01z, n12x, n12y, n12z, n20x, n20y, n20z, det,
            ax, ay, az, bx, by, bz, cx_, cy_, cz)


@triton.jit
def _small_kernel(f_ptr, pc_ptr, keys_ptr, tiles_ptr, F, W, H, near, fx, fy, cx, cy,
                  BLOCK: tl.constexpr, SMALL: tl.constexpr, TILE_W: tl.constexpr, TILE_H: tl.constexpr):
    tri = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = tri < F
    (n01x, n01y, n01z, n12x, n12y, n12z, n20x, n20y, n20z, det,
     ax, ay, az, bx, by, bz, cx_, cy_, cz) = _setup(tri, m, f_ptr, pc_ptr)
    front = (az >= near) | (bz >= near) | (cz >= near)
    x0, x1, y0, y1 = _box(ax, ay, az, bx, by, bz, cx_, cy_, cz, near, fx, fy, cx, cy, W, H)
    some = m & front & (x1 >= x0) & (y1 >= y0)
    small = some & (x1 - x0 < SMALL) & (y1 - y0 < SMALL)
    big = some & ~small
    ntiles = ((x1 - x0 + TILE_W) // TILE_W) * ((y1 - y0 + TILE_H) // TILE_H)
    tl.store(tiles_ptr + tri, tl.where(big, ntiles, 0), m)
    k = tl.arange(0, SMALL * SMALL)
    sx = x0[:, None] + (k % SMALL)[None, :]
    sy = y0[:, None] + (k // SMALL)[None, :]
    ok = small[:, None] & (sx <= x1[:, None]) & (sy <= y1[:, None])
    _cover(keys_ptr, sx, sy, ok, tri[:, None], n01x[:, None], n01y[:, None], n01z[:, None],
           n12x[:, None], n12y[:, None], n12z[:, None], n20x[:, None], n20y[:, None], n20z[:, None],
           det[:, None], near, fx, fy, cx, cy, W)


@triton.jit
def _tile_kernel(work_tri_ptr, work_first_ptr, f_ptr, pc_ptr, keys_ptr, W, H, near, fx, fy, cx, cy,
                 TILE_W: tl.constexpr, TILE_H: tl.constexpr, TILE_RUN: tl.constexpr):
    p = tl.program_id(0)
    tri = tl.load(work_tri_ptr + p)
    first = tl.load(work_first_ptr + p)
    (n01x, n01y, n01z, n12x, n12y, n12z, n20x, n20y, n20z, det,
     ax, ay, az, bx, by, bz, cx_, cy_, cz) = _setup(tri, tri >= 0, f_ptr, pc_ptr)
    x0, x1, y0, y1 = _box(ax, ay, az, bx, by, bz, cx_, cy_, cz, near, fx, fy, cx, cy, W, H)
    ntx = (x1 - x0 + TILE_W) // TILE_W
    ntiles = ntx * ((y1 - y0 + TILE_H) // TILE_H)
    ox = tl.arange(0, TILE_W)[None, :]
    oy = tl.arange(0, TILE_H)[:, None]
    for t in range(first, tl.minimum(first + TILE_RUN, ntiles)):
        sx = x0 + (t % ntx) * TILE_W + ox
        sy = y0 + (t // ntx) * TILE_H + oy
        ok = (sx <= x1) & (sy <= y1)
        _cover(keys_ptr, sx, sy, ok, tri, n01x, n01y, n01z, n12x, n12y, n12z, n20x, n20y, n20z, det,
               near, fx, fy, cx, cy, W)


def camera_space(v: torch.Tensor, cam: Camera) -> torch.Tensor:
    """World vertices (V, 3) float64 -> camera-space (V, 3) float32."""
    n = v.shape[0]
    out = torch.empty(n, 3, dtype=torch.float32, device=v.device)
    _transform_kernel[(triton.cdiv(n, BLOCK_V),)](v, camera_params(cam, v.device), out, n, BLOCK=BLOCK_V)
    return out


def triangle_ids(v: torch.Tensor, f: torch.Tensor, cam: Camera, near: float, far: float = float("inf")) -> torch.Tensor:
    """(H, W) int32: the nearest triangle of f (F, 3) int32 over v (V, 3) float64 at every sample
    (pixel centre k + 0.5) of `cam`, hit in front of camera depth `near`; -1 where none. (`far`
    is not needed: nothing is clipped there, and depth keeps its float32 precision at any range.)"""
    W, H = cam.width, cam.height
    if W * H >= 2**31:
        raise ValueError(f"{W} x {H} samples is more than one frame can hold (2^31)")
    dev = v.device
    pc = camera_space(v, cam)
    keys = torch.full((H * W,), EMPTY, dtype=torch.int64, device=dev)
    F = f.shape[0]
    tiles = torch.empty(F, dtype=torch.int32, device=dev)
    shape = dict(near=float(near), fx=cam.fx, fy=cam.fy, cx=cam.cx, cy=cam.cy)
    if F:
        _small_kernel[(triton.cdiv(F, BLOCK_T),)](f, pc, keys, tiles, F, W, H, **shape, BLOCK=BLOCK_T,
                                                  SMALL=SMALL, TILE_W=TILE_W, TILE_H=TILE_H)
        big = torch.nonzero(tiles).squeeze(1)
        if len(big):
            # One work item per run of TILE_RUN tiles of each large triangle.
            runs = (tiles[big].to(torch.int64) + TILE_RUN - 1) // TILE_RUN
            work_tri = torch.repeat_interleave(big.to(torch.int32), runs)
            start = torch.cumsum(runs, 0) - runs
            k = torch.arange(len(work_tri), device=dev) - torch.repeat_interleave(start, runs)
            work_first = (k * TILE_RUN).to(torch.int32)
            _tile_kernel[(len(work_tri),)](work_tri, work_first, f, pc, keys, W, H, **shape,
                                           TILE_W=TILE_W, TILE_H=TILE_H, TILE_RUN=TILE_RUN)
    ids = torch.where(keys == EMPTY, -1, keys & 0xFFFFFFFF).to(torch.int32)
    return ids.view(H, W)
