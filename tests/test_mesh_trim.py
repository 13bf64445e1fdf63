"""Peeling the lip a Poisson mesh grows past its points (backend/prepare/mesh_trim.py): a plane
meshed further than its points reach loses the part past them, unless a depth map sees it, and
never gets a hole where its points are sparse inside."""
from __future__ import annotations

import numpy as np
import pytest

from backend.meshio import Mesh
from backend.prepare.mesh_trim import nearest, peel_overhang, point_spacing, smooth_boundary

STEP = 0.02        # the points' spacing


def plane(width: float, height: float, n: int) -> Mesh:
    """A z = 0 grid of (n + 1) x ~(n * height / width + 1) vertices over [0, width] x [0, height]."""
    m = max(1, round(n * height / width))
    xs, ys = np.meshgrid(np.linspace(0, width, n + 1), np.linspace(0, height, m + 1), indexing="ij")
    v = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], 1).astype(np.float32)
    i = (np.arange(n)[:, None] * (m + 1) + np.arange(m)[None]).ravel()
    faces = np.concatenate([np.stack([i, i + m + 1, i + 1], 1), np.stack([i + 1, i + m + 1, i + m + 2], 1)])
    return Mesh(v, faces.astype(np.int32))


def points_on(x_max: float, hole=None) -> np.ndarray:
    """Points every STEP on [0, x_max] x [0, 1] (jittered a little), none inside `hole` (a box)."""
    xs, ys = np.meshgrid(np.arange(0, x_max + 1e-9, STEP), np.arange(0, 1 + 1e-9, STEP), indexing="ij")
    p = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], 1)
    p[:, :2] += np.random.default_rng(0).uniform(-0.002, 0.002, (len(p), 2))
    if hole is not None:
        (x0, y0), (x1, y1) = hole
        p = p[~((p[:, 0] > x0) & (p[:, 0] < x1) & (p[:, 1] > y0) & (p[:, 1] < y1))]
    return p


def centroids(mesh: Mesh) -> np.ndarray:
    return mesh.vertices[mesh.faces].mean(1)


def test_nearest_is_the_brute_force_answer():
    rng = np.random.default_rng(1)
    p, q = rng.random((4000, 3)), rng.random((700, 3)) * 1.4 - 0.2
    d, i = nearest(q, p, 0.06)
    full = np.linalg.norm(q[:, None] - p[None], axis=2)
    within = full.min(1) <= 0.06
    assert within.any() and (~within).any()
    assert np.allclose(d[within], full.min(1)[within]) and np.array_equal(i[within], full.argmin(1)[within])
    assert np.isinf(d[~within]).all() and (i[~within] == -1).all()
    own, _ = nearest(p[:300], p, 0.2, skip_self=True)                 # a point is not its own neighbour
    np.fill_diagonal(full := np.linalg.norm(p[:300, None] - p[None], axis=2), np.inf)
    assert np.allclose(own, full.min(1))


def test_point_spacing_of_a_grid():
    assert point_spacing(points_on(1.0)) == pytest.approx(STEP, rel=0.15)


def test_the_lip_past_the_points_is_peeled_and_sparse_inside_stays():
    mesh = plane(2.0, 1.0, 200)                                      # the mesh reaches x = 2
    hole = ((0.4, 0.4), (0.6, 0.6))                                  # no points here, inside the surface
    peeled, removed = peel_overhang(mesh, points_on(1.5, hole))       # the points end at x = 1.5
    c = centroids(peeled)
    assert removed > 0.2 * len(mesh.faces) and c[:, 0].max() < 1.5 + 3 * STEP
    before = centroids(mesh)
    assert (c[:, 0] < 1.5 - STEP).sum() == (before[:, 0] < 1.5 - STEP).sum()      # nothing inside went
    in_hole = lambda cc: ((cc[:, 0] > 0.4) & (cc[:, 0] < 0.6) & (cc[:, 1] > 0.4) & (cc[:, 1] < 0.6)).sum()  # noqa: E731
    assert in_hole(c) == in_hole(before) > 0
    assert len(peeled.vertices) == len(np.unique(peeled.faces))                    # no loose vertices
    assert peel_overhang(peeled, points_on(1.5, hole))[1] == 0                      # peeling again: nothing


def test_surface_a_depth_map_sees_stays():
    """Past the points but seen as surface by a photo's depth map (fewer photos than fusion asks
    for saw it): kept. A map that sees nothing there (the photographed surface ends): peeled."""
    mesh, pts = plane(2.0, 1.0, 100), points_on(1.5)
    K = np.array([[250.0, 0, 100], [0, 250, 100], [0, 0, 1]])
    cam_from_world = np.array([[1.0, 0, 0, -1], [0, -1, 0, 0.5], [0, 0, -1, 3]])   # 3 above (1, 0.5), looking down
    seen = np.full((200, 200), 3.0, np.float32)
    assert peel_overhang(mesh, pts, [(K, cam_from_world, seen)])[1] == 0
    off = np.full((200, 200), 3.5, np.float32)                                       # something farther behind
    assert peel_overhang(mesh, pts, [(K, cam_from_world, off)])[1] == peel_overhang(mesh, pts)[1] > 0


def test_a_mesh_mostly_off_its_points_is_left_as_it_is():
    """Points on a third of the surface (another frame's points, or a broken cloud): not a lip, so
    nothing is peeled rather than most of the mesh."""
    mesh = plane(3.0, 1.0, 150)
    assert peel_overhang(mesh, points_on(1.0)) == (mesh, 0)


def test_a_staircase_boundary_is_smoothed_and_the_inside_stays():
    mesh = plane(2.0, 1.0, 100)                                      # triangles 0.02 wide
    c = centroids(mesh)
    stair = 1.0 + 0.04 * (np.floor(c[:, 1] / 0.06) % 2)              # cut at x = 1.00 or 1.04 by bands
    cut = Mesh(mesh.vertices, mesh.faces[c[:, 0] < stair])
    smooth = smooth_boundary(cut)
    used = np.unique(cut.faces)
    rows = np.round(cut.vertices[used, 1] / 0.02).astype(int)

    def edge_x(m: Mesh) -> np.ndarray:             # the boundary's x in each row of vertices, ends left out
        x = m.vertices[used, 0]
        return np.array([x[rows == r].max() for r in range(3, 48)])
    assert np.std(edge_x(smooth)) < 0.4 * np.std(edge_x(cut)), (np.std(edge_x(smooth)), np.std(edge_x(cut)))
    assert np.array_equal(smooth.faces, cut.faces) and np.allclose(smooth.vertices[:, 2], 0)    # on its plane
    v = cut.vertices
    inside = (v[:, 0] > 0.001) & (v[:, 0] < 0.9) & (v[:, 1] > 0.001) & (v[:, 1] < 0.999)
    straight = (v[:, 0] == 0) & (v[:, 1] > 0.2) & (v[:, 1] < 0.8)      # a straight stretch of boundary
    assert np.array_equal(smooth.vertices[inside | straight], v[inside | straight])
    x, y = smooth.vertices[used, 0], smooth.vertices[used, 1]
    assert x.max() <= 1.04 + 1e-6 and y.min() >= 0 and y.max() <= 1              # no vertex leaves the cut
