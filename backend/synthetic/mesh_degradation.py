"""The photogrammetry-like mesh of a capture: the true mesh simplified by vertex clustering,
displaced by a smooth field, with holes cut and floating blobs added (`degrade_mesh`)."""
from __future__ import annotations

import math

import numpy as np

from ..meshio import Mesh
from . import procedural as P
from .capture_settings import CaptureParams
from .geometry import in_looked_at_region, point_mesh_distance, random_surface_points


def weld(mesh: Mesh, tol: float = 1e-6) -> Mesh:
    """Merge vertices closer than `tol` (the procedural objects have per-face vertices)."""
    key = np.round(mesh.vertices.astype(np.float64) / tol).astype(np.int64)
    _, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
    f = inv.reshape(-1)[mesh.faces]
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])
    return Mesh(mesh.vertices[first], f[ok].astype(np.int32))


def compact(v: np.ndarray, f: np.ndarray) -> Mesh:
    """Drop degenerate and repeated triangles and unused vertices."""
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]
    _, first = np.unique(np.sort(f, 1), axis=0, return_index=True)
    f = f[np.sort(first)]
    used, inv = np.unique(f, return_inverse=True)
    return Mesh(np.asarray(v)[used].astype(np.float32), inv.reshape(f.shape).astype(np.int32))


def cluster_simplify(mesh: Mesh, cell: float, offset: np.ndarray) -> Mesh:
    """Vertex clustering on a grid of `cell` (shifted by `offset`): all vertices of a cell merge
    into one at the point minimising the summed squared distances to their faces' planes
    (area-weighted quadrics, lightly regularised to the cluster mean, clamped to the cluster's
    bounding box), so flat parts stay flat and sharp edges stay sharp."""
    v = mesh.vertices.astype(np.float64)
    f = mesh.faces
    _, cl = np.unique(np.floor((v - offset) / cell).astype(np.int64), axis=0, return_inverse=True)
    cl = cl.reshape(-1)
    nc = int(cl.max()) + 1
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    area = np.linalg.norm(n, axis=1) / 2
    nu = n / np.maximum(2 * area, 1e-300)[:, None]
    d = np.einsum("ij,ij->i", nu, v[f[:, 0]])
    Af = area[:, None, None] * nu[:, :, None] * nu[:, None, :]
    bf = (area * d)[:, None] * nu
    A = np.zeros((nc, 3, 3))
    b = np.zeros((nc, 3))
    for k in range(3):
        np.add.at(A, cl[f[:, k]], Af)
        np.add.at(b, cl[f[:, k]], bf)
    cnt = np.bincount(cl, minlength=nc).astype(np.float64)
    mean = np.zeros((nc, 3))
    np.add.at(mean, cl, v)
    mean /= cnt[:, None]
    lo = np.full((nc, 3), np.inf)
    hi = np.full((nc, 3), -np.inf)
    np.minimum.at(lo, cl, v)
    np.maximum.at(hi, cl, v)
    lam = 1e-3 * np.trace(A, axis1=1, axis2=2) / 3 + 1e-12
    x = np.linalg.solve(A + lam[:, None, None] * np.eye(3), (b + lam[:, None] * mean)[..., None])[..., 0]
    x = np.clip(x, lo, hi)
    return compact(x, cl[f])


def edge_use(faces: np.ndarray) -> np.ndarray:
    """How many triangles use each undirected edge (one entry per distinct edge)."""
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1)
    return np.unique(e, axis=0, return_counts=True)[1]


def boundary_edges(mesh: Mesh) -> int:
    return int((edge_use(mesh.faces) == 1).sum())


def smooth_field(points: np.ndarray, freq: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth scalar field in [-1, 1]: the mean of three sinusoids of about `freq` cycles per
    unit in random directions."""
    dirs = rng.normal(size=(3, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    fr = freq * rng.uniform(0.7, 1.3, 3)
    ph = rng.uniform(0, 2 * math.pi, 3)
    return np.sin(2 * math.pi * (points @ dirs.T) * fr + ph).mean(1)


def lumpy_sphere(centre, r: float, rng: np.random.Generator) -> Mesh:
    v, f = P._sphere(np.zeros(3), 1.0, 8, 5)
    v = v * (r * rng.uniform(0.75, 1.25, len(v)))[:, None] + np.asarray(centre)
    return Mesh(v.astype(np.float32), P._orient(v, f, np.asarray(centre)).astype(np.int32))


def degrade_mesh(spec: P.SceneSpec, p: CaptureParams, rng: np.random.Generator) -> tuple[Mesh, dict]:
    """The photogrammetry-like mesh of the true scene and statistics of what was done."""
    true = spec.mesh
    welded = weld(true)
    simple = cluster_simplify(welded, p.cluster_cell, rng.uniform(0, p.cluster_cell, 3))
    v = simple.vertices.astype(np.float64)
    disp = p.displacement * smooth_field(v, p.displacement_freq, rng)
    v = v + disp[:, None] * simple.vertex_normals().astype(np.float64)
    faces = simple.faces
    boundary_before = boundary_edges(Mesh(v.astype(np.float32), faces))
    # Holes: faces whose centroid lies within ~hole_radius of points on the objects' surfaces.
    objects = np.nonzero(spec.face_object > 0)[0]
    centroids = v[faces].mean(1)
    holes, keep = [], np.ones(len(faces), bool)
    for _ in range(1000 * max(p.holes, 1)):
        if len(holes) >= p.holes:
            break
        c, _ = random_surface_points(true, objects, 1, rng)
        r = p.hole_radius * rng.uniform(0.7, 1.3)
        cut = np.linalg.norm(centroids - c[0], axis=1) < r
        if cut.sum() >= 2 and (cut & keep).sum() == cut.sum():
            keep &= ~cut
            holes.append({"centre": c[0].tolist(), "radius": float(r), "faces": int(cut.sum())})
    faces = faces[keep]
    body = compact(v, faces)
    boundary_after = boundary_edges(body)
    # Blobs: small closed shapes hovering in front of the walls (normals mostly horizontal).
    normals = spec.normals
    walls = objects[np.abs(normals[true.faces[objects]].mean(1)[:, 2]) < 0.6]
    blobs, parts = [], [body]
    for _ in range(1000 * max(p.blobs, 1)):
        if len(blobs) >= p.blobs:
            break
        c, fid = random_surface_points(true, walls, 1, rng)
        if not in_looked_at_region(c)[0]:
            continue
        n = normals[true.faces[fid[0]]].mean(0)
        n /= np.linalg.norm(n)
        r = rng.uniform(*p.blob_radius)
        centre = c[0] + n * (r + rng.uniform(*p.blob_offset))
        if centre[2] < 1.3 * r or point_mesh_distance(centre[None], true)[0] < r * 1.25 + 0.02:
            continue
        if any(np.linalg.norm(centre - np.array(b["centre"])) < 0.3 for b in blobs):
            continue
        blobs.append({"centre": centre.tolist(), "radius": float(r)})
        parts.append(lumpy_sphere(centre, r, rng))
    n_body_v, n_body_f = len(body.vertices), len(body.faces)
    off, vs, fs = 0, [], []
    for m in parts:
        vs.append(m.vertices)
        fs.append(m.faces + off)
        off += len(m.vertices)
    mesh = Mesh(np.concatenate(vs).astype(np.float32), np.concatenate(fs).astype(np.int32))
    # Deviation of the body from the true surface (a sample of its vertices).
    sample = rng.choice(n_body_v, min(n_body_v, 3000), replace=False)
    dev = point_mesh_distance(body.vertices[sample], true)
    stats = {"true_triangles": len(true.faces), "simplified_triangles": len(simple.faces),
             "triangles": len(mesh.faces), "body_vertices": n_body_v, "body_triangles": n_body_f,
             "boundary_edges_before_holes": boundary_before, "boundary_edges": boundary_after,
             "holes": holes, "blobs": blobs,
             "displacement_max": float(np.abs(disp).max()), "displacement_rms": float(np.sqrt(np.mean(disp ** 2))),
             "deviation_rms": float(np.sqrt(np.mean(dev ** 2))), "deviation_p99": float(np.quantile(dev, 0.99)),
             "deviation_max": float(dev.max())}
    return mesh, stats
