"""backend/prepare/mesh_frame.py: whether structure from motion's 3-D points lie on a mesh (the mesh
is in the cameras' frame) or not (a mesh of another reconstruction: other scale, rotation, offset)."""
from __future__ import annotations

import numpy as np
import pytest

from backend.meshio import Mesh
from backend.prepare.mesh_frame import frame_agreement
from backend.synthetic import procedural as P


def _points_on(mesh: Mesh, n: int, noise: float, rng) -> np.ndarray:
    """Points on the mesh's triangles (as many per triangle as its share of the area) with noise."""
    v = mesh.vertices.astype(np.float64)
    a, b, c = (v[mesh.faces[:, k]] for k in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    f = rng.choice(len(area), n, p=area / area.sum())
    w = rng.dirichlet([1, 1, 1], n)
    return w[:, :1] * a[f] + w[:, 1:2] * b[f] + w[:, 2:] * c[f] + rng.normal(0, noise, (n, 3))


def _moved(mesh: Mesh, how: str) -> Mesh:
    v = mesh.vertices.astype(np.float64)
    centre = (v.min(0) + v.max(0)) / 2
    if how == "scaled by 3":
        v = centre + 3 * (v - centre)
    elif how == "y up instead of z up":                  # 90 degrees about x
        v = centre + (v - centre) @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0.0]]).T
    elif how == "shifted by its extent":
        v = v + np.ptp(v, axis=0)
    return Mesh(v.astype(np.float32), mesh.faces)


@pytest.fixture(scope="module")
def scene():
    mesh = P.make_spec(0).mesh
    diag = float(np.linalg.norm(np.ptp(mesh.vertices, axis=0)))
    rng = np.random.default_rng(3)
    on = _points_on(mesh, 3000, 0.003 * diag, rng)
    # a cropped mesh: a third of the points on things around it that the mesh leaves out
    away = rng.uniform(-1, 1, (1500, 3)) * diag * 2
    return mesh, np.concatenate([on, away])


def test_points_on_the_mesh_agree_even_with_background_points_around_it(scene):
    mesh, points = scene
    fit = frame_agreement(mesh, points)
    assert fit.agrees and fit.on_surface > 0.8 and fit.seen > 0.8 and fit.points == 4500, fit


@pytest.mark.parametrize("how", ["scaled by 3", "y up instead of z up", "shifted by its extent"])
def test_a_mesh_in_another_frame_does_not_agree(scene, how):
    mesh, points = scene
    fit = frame_agreement(_moved(mesh, how), points)
    assert not fit.agrees and (fit.on_surface < 0.2 or fit.seen < 0.3), fit


def test_a_mesh_of_a_third_of_the_size_does_not_agree(scene):
    mesh, points = scene
    v = mesh.vertices.astype(np.float64)
    centre = (v.min(0) + v.max(0)) / 2
    assert not frame_agreement(Mesh((centre + (v - centre) / 3).astype(np.float32), mesh.faces), points).agrees


def test_a_dense_mesh_is_sampled_within_its_budget():
    """A mesh far finer than the cells: the samples stay capped and the points still agree."""
    mesh = P.make_spec(0, detail=4).mesh
    rng = np.random.default_rng(0)
    fit = frame_agreement(mesh, _points_on(mesh, 2000, 0.0, rng))
    assert fit.agrees and fit.on_surface > 0.95, fit


def test_a_mesh_scaled_about_a_point_of_its_ground_spreads_beyond_the_points(scene):
    """The ground plane still holds the points on it; the rest of the surface has none nearby."""
    mesh, points = scene
    v = mesh.vertices.astype(np.float64)
    fit = frame_agreement(Mesh((3 * v).astype(np.float32), mesh.faces), points)     # about (0, 0, 0), on the ground
    assert fit.on_surface > 0.5 and not fit.agrees, fit            # refused by the surface the points miss
