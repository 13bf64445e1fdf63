"""Peel the lip a Poisson mesh grows past its points (numpy only).

Poisson meshing fits a closed surface and the density trim then cuts it where the points thin out,
but the cut lies a few point spacings beyond the last points: where the photographed surface ends
(the edge of a ground plane, the top of a wall against the sky) the mesh keeps a lip that no photo
saw as surface. Training paints that lip with whatever lies behind it in the photos, so renders
show a fringe of background colour along such edges (on the capture scene: 0.5 % of a view's
pixels, a quarter of its squared error). `peel_overhang` removes faces on the mesh's open boundary
that have a vertex farther than OVERHANG point spacings from every point and that no depth map sees
as surface, again and again, until the boundary lies on the points or on surface the photos saw.
Only the boundary is peeled, so a stretch of sparse points inside the surface keeps its faces (no
holes); the depth maps keep the surface that fewer photos saw than fusion asks for (without them,
the edges of the test's ground plane lost 2.6 % of each view). `smooth_boundary` then straightens
the staircase that cutting along whole triangles leaves, which renders as a jagged edge.
"""
from __future__ import annotations

from typing import Iterable, Tuple

import numpy as np

from ..meshio import Mesh

# Point spacings (median nearest-neighbour distance of the points) beyond which a boundary vertex
# is off the points. Measured on the capture scene's fused cloud with Poisson depth 10, trim 7:
# the lip's vertices lie within 3 spacings of the points, 86 % of them beyond 1.5; of the vertices
# on the true surface 0.24 % lie beyond 1.5 (and only those on the boundary can go).
OVERHANG = 1.5
SPACING_SAMPLE = 5000      # points whose nearest neighbour estimates the spacing
# A vertex off the points stays where this many depth maps see surface at its depth (within
# DEPTH_TOL): fusion keeps what 5 photos see, so the surface seen by fewer is off the points, yet
# real (the edges of a ground plane); where the photographed surface ends, the maps see past the lip.
# One map is enough: on the 8-photo arc test, 2 peeled 0.3 % more of the true surface than 1.
MIN_SUPPORT = 1
DEPTH_TOL = 0.02
MAX_PEELED = 0.5           # share of the faces beyond which the mesh is left as it is (not a lip)
# Passes of smoothing along the boundary: on the capture scene 10 left a straight edge (3: still
# jagged), and the coverage beyond the true surface unchanged (0.23 % of each view).
BOUNDARY_SMOOTHING = 10
DepthView = Tuple[np.ndarray, np.ndarray, np.ndarray]    # K (3, 3), cam_from_world (3, 4), depth (H, W), 0: none


def _keys(cells: np.ndarray) -> np.ndarray:
    c = cells.astype(np.int64) + 2                   # cells are >= -1 from the grid's corner
    return (c[:, 0] << 42) | (c[:, 1] << 21) | c[:, 2]


def _nearest_in_cells(queries: np.ndarray, points: np.ndarray, radius: float,
                      skip_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """`nearest` for one radius: a grid of cells of that size, each query looking in its cell and
    the 26 around it (which hold every point within the radius)."""
    best, which = np.full(len(queries), np.inf), np.full(len(queries), -1, np.int64)
    if not len(points) or not len(queries):
        return best, which
    origin = points.min(0) - radius
    if np.ptp(points, axis=0).max() / radius > (1 << 20) - 8:
        raise ValueError(f"radius {radius:g} is too small for points spread over {np.ptp(points, axis=0).max():g}")
    keys = _keys(np.floor((points - origin) / radius))
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    home = np.floor((queries - origin) / radius).astype(np.int64)
    outside = (home < -1).any(1) | (home > (1 << 20) - 4).any(1)      # far off the grid: nothing near
    home[outside] = -1
    for offset in np.stack(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij"), -1).reshape(-1, 3):
        want = _keys(home + offset)
        lo, hi = np.searchsorted(keys, want, "left"), np.searchsorted(keys, want, "right")
        lo[outside] = hi[outside]
        count = hi - lo
        for j in range(int(count.max(initial=0))):       # the j-th point of each query's cell
            has = np.flatnonzero(count > j)
            idx = order[lo[has] + j]
            d = np.linalg.norm(points[idx] - queries[has], axis=1)
            if skip_self:
                d[d == 0] = np.inf
            closer = d < best[has]
            best[has[closer]], which[has[closer]] = d[closer], idx[closer]
    far = best > radius
    best[far], which[far] = np.inf, -1
    return best, which


def nearest(queries: np.ndarray, points: np.ndarray, radius: float, start: float | None = None,
            skip_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each query (Q, 3) to its nearest point of `points` (P, 3) and that point's
    index, or inf and -1 where none is within `radius`. `skip_self`: points at distance 0 do not
    count. Small cells first (`start`, default radius / 8; doubled for the queries not yet found),
    so that dense points do not make every query look through crowded cells."""
    best, which = np.full(len(queries), np.inf), np.full(len(queries), -1, np.int64)
    todo = np.arange(len(queries))
    r = min(start or radius / 8, radius)
    while len(todo):
        d, i = _nearest_in_cells(queries[todo], points, r, skip_self)
        found = np.isfinite(d)
        best[todo[found]], which[todo[found]] = d[found], i[found]
        todo = todo[~found]
        if r >= radius:
            break
        r = min(2 * r, radius)
    return best, which


def point_spacing(points: np.ndarray, seed: int = 0) -> float:
    """The median distance from a point to its nearest other point (a sample of them)."""
    n = len(points)
    if n < 2:
        return 0.0
    pick = np.random.default_rng(seed).choice(n, size=min(SPACING_SAMPLE, n), replace=False)
    radius = float(np.linalg.norm(np.ptp(points, axis=0))) / 256 or 1.0
    for _ in range(12):                           # widen until most of the sample finds a neighbour
        d = nearest(points[pick], points, radius, skip_self=True)[0]
        if np.isfinite(d).mean() > 0.9:
            break
        radius *= 4
    return float(np.median(d[np.isfinite(d)])) if np.isfinite(d).any() else 0.0


def supported(vertices: np.ndarray, views: Iterable[DepthView], tol: float = DEPTH_TOL) -> np.ndarray:
    """How many of the depth maps see each vertex (V, 3) as surface: it projects into the map at a
    depth within `tol` of the map's. A map of COLMAP's dense workspace puts pixel (col, row)'s
    centre at (col, row)."""
    count = np.zeros(len(vertices), np.int32)
    for K, cam_from_world, depth in views:
        x = vertices @ cam_from_world[:, :3].T + cam_from_world[:, 3]
        z = x[:, 2]
        ahead = z > 0
        h, w = depth.shape
        u = np.full(len(z), -1, np.int64)
        v = np.full(len(z), -1, np.int64)
        u[ahead] = np.rint(np.clip(K[0, 0] * x[ahead, 0] / z[ahead] + K[0, 2], -1, w)).astype(np.int64)
        v[ahead] = np.rint(np.clip(K[1, 1] * x[ahead, 1] / z[ahead] + K[1, 2], -1, h)).astype(np.int64)
        inside = ahead & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        d = depth[v[inside], u[inside]]
        count[inside] += (np.abs(d - z[inside]) <= tol * z[inside]).astype(np.int32)
    return count


def peel_overhang(mesh: Mesh, points: np.ndarray, views: Iterable[DepthView] = (),
                  spacings: float = OVERHANG) -> tuple[Mesh, int]:
    """The mesh without the lip past `points` (N, 3) that no depth map of `views` sees (see the
    module's doc), and how many faces went."""
    faces = np.asarray(mesh.faces, np.int64)
    points = np.asarray(points, np.float64)
    spacing = point_spacing(points)
    if not len(faces) or spacing <= 0:
        return mesh, 0
    off = ~np.isfinite(nearest(mesh.vertices.astype(np.float64), points, spacings * spacing)[0])
    if not off.any():                   # every vertex on the points: no depth map needs reading
        return mesh, 0
    far_vertex = off.copy()
    far_vertex[off] = supported(mesh.vertices[off].astype(np.float64), views) < MIN_SUPPORT
    candidates = np.flatnonzero(far_vertex[faces].any(1))
    if not len(candidates):
        return mesh, 0
    _, edge, uses = mesh.edges()        # each face's edges, and how many faces use each (1: boundary)
    alive = np.ones(len(faces), bool)
    while len(candidates):
        peel = (uses[edge[candidates]] == 1).any(1)
        if not peel.any():
            break
        gone = candidates[peel]
        alive[gone] = False
        np.subtract.at(uses, edge[gone].ravel(), 1)
        candidates = candidates[~peel]
    removed = int((~alive).sum())
    if not removed or removed > MAX_PEELED * len(faces):     # a lip is a thin band: more is not one
        return mesh, 0
    kept = faces[alive]
    used = np.unique(kept)
    remap = np.full(len(mesh.vertices), -1, np.int64)
    remap[used] = np.arange(len(used))
    return Mesh(mesh.vertices[used], remap[kept].astype(np.int32)), removed


def smooth_boundary(mesh: Mesh, iterations: int = BOUNDARY_SMOOTHING) -> Mesh:
    """The mesh with its open boundary smoothed along itself: each vertex on a boundary loop (two
    boundary edges) moves halfway to the middle of its two neighbours on the loop, `iterations`
    times. Peeling and Poisson's trim cut the surface along whole triangles, so the boundary is a
    staircase that renders as a jagged edge; this straightens it without moving the inside."""
    edges, _, uses = mesh.edges()
    rim = edges[uses == 1]
    if not len(rim):
        return mesh
    v = mesh.vertices.astype(np.float64)
    count = np.bincount(rim.ravel(), minlength=len(v))
    loop = count == 2                   # where boundaries meet (more edges) the vertex stays
    for _ in range(iterations):
        total = np.zeros_like(v)
        np.add.at(total, rim[:, 0], v[rim[:, 1]])
        np.add.at(total, rim[:, 1], v[rim[:, 0]])
        v[loop] = 0.5 * v[loop] + 0.25 * total[loop]
    return Mesh(v.astype(np.float32), mesh.faces)
