"""Geometric queries of the capture generator: exact point-to-mesh distances, segments blocked by a
mesh, random surface points, and whether points are in a camera's frame or the part of the scene the
photos look at."""
from __future__ import annotations

import numpy as np

from ..cameras import Camera
from ..meshio import Mesh


def _seg_dist(p, a, b):
    ab = b - a
    t = np.clip(np.einsum("ij,ij->i", p - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-300), 0, 1)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1)


def point_triangle_distance(p, a, b, c) -> np.ndarray:
    """Exact distance from points p (N, 3) to triangles (a, b, c) (N, 3 each)."""
    n = np.cross(b - a, c - a)
    nn = np.einsum("ij,ij->i", n, n)
    s1 = np.einsum("ij,ij->i", np.cross(b - a, p - a), n)
    s2 = np.einsum("ij,ij->i", np.cross(c - b, p - b), n)
    s3 = np.einsum("ij,ij->i", np.cross(a - c, p - c), n)
    inside = (s1 >= 0) & (s2 >= 0) & (s3 >= 0) & (nn > 0)
    plane = np.abs(np.einsum("ij,ij->i", p - a, n)) / np.sqrt(np.maximum(nn, 1e-300))
    edges = np.minimum(np.minimum(_seg_dist(p, a, b), _seg_dist(p, b, c)), _seg_dist(p, c, a))
    return np.where(inside, plane, edges)


def point_mesh_distance(points: np.ndarray, mesh: Mesh, chunk: int = 256) -> np.ndarray:
    """Exact distance (N,) from points to the nearest triangle of `mesh` (bounding-sphere
    pruning, then exact point-triangle distances)."""
    v = mesh.vertices.astype(np.float64)
    A, B, C = v[mesh.faces[:, 0]], v[mesh.faces[:, 1]], v[mesh.faces[:, 2]]
    cen = (A + B + C) / 3
    rad = np.sqrt(np.max([((X - cen) ** 2).sum(1) for X in (A, B, C)], axis=0))
    pts = np.asarray(points, np.float64)
    out = np.empty(len(pts))
    c2 = (cen ** 2).sum(1)
    for i in range(0, len(pts), chunk):
        p = pts[i:i + chunk]
        D = np.sqrt(np.maximum((p ** 2).sum(1)[:, None] + c2[None] - 2 * p @ cen.T, 0.0))
        ub = (D + rad).min(1)
        pi, fi = np.nonzero(D - rad <= ub[:, None] + 1e-12)
        d = point_triangle_distance(p[pi], A[fi], B[fi], C[fi])
        res = np.full(len(p), np.inf)
        np.minimum.at(res, pi, d)
        out[i:i + chunk] = res
    return out


def random_surface_points(mesh: Mesh, faces: np.ndarray, n: int, rng: np.random.Generator):
    """n random points, area-weighted over the given faces: (points, face ids)."""
    v = mesh.vertices.astype(np.float64)
    f = mesh.faces[faces]
    area = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    pick = rng.choice(len(faces), n, p=area / area.sum())
    b = rng.dirichlet(np.ones(3), n)
    return np.einsum("nk,nkc->nc", b, v[f[pick]]), faces[pick]


def in_frame(cam: Camera, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Bool (N,): in front of the camera and inside the image, `margin` (a fraction of the size)
    away from its borders."""
    uv, z = cam.project(points)
    return (z > 0) & (uv[:, 0] > margin * cam.width) & (uv[:, 0] < (1 - margin) * cam.width) \
        & (uv[:, 1] > margin * cam.height) & (uv[:, 1] < (1 - margin) * cam.height)


def in_looked_at_region(points: np.ndarray) -> np.ndarray:
    """Points of the part of the scene the photos look at (the ground's rim is rarely seen)."""
    return np.abs(points[:, :2]).max(1) < 1.8


def segments_blocked(origins: np.ndarray, ends: np.ndarray, mesh: Mesh, tol: float = 0.02,
                     pairs: int = 1 << 20) -> np.ndarray:
    """Bool (N,): the segment origin -> end hits a triangle more than `tol` before its end."""
    v = mesh.vertices.astype(np.float64)
    P0 = v[mesh.faces[:, 0]]
    E1, E2 = v[mesh.faces[:, 1]] - P0, v[mesh.faces[:, 2]] - P0
    d = ends - origins
    L = np.linalg.norm(d, axis=1)
    d = d / L[:, None]
    out = np.zeros(len(origins), bool)
    step = max(1, pairs // max(len(P0), 1))
    for i in range(0, len(origins), step):
        o, r, lim = origins[i:i + step, None], d[i:i + step, None], L[i:i + step, None]
        p = np.cross(r, E2[None])
        det = np.einsum("nfk,nfk->nf", np.broadcast_to(E1[None], p.shape), p)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / det
            tv = o - P0[None]
            b1 = np.einsum("nfk,nfk->nf", tv, p) * inv
            q = np.cross(tv, E1[None])
            b2 = np.einsum("nfk,nfk->nf", np.broadcast_to(r, q.shape), q) * inv
            t = np.einsum("nfk,nfk->nf", np.broadcast_to(E2[None], q.shape), q) * inv
            hit = (np.abs(det) > 1e-14) & (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1) & (t > 1e-6) & (t < lim - tol)
        out[i:i + step] = hit.any(1)
    return out
