"""Unmodelled occluders: a pole or a box between one photo's camera and the scene, present in that
photo only (never in the mesh)."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..cameras import Camera
from ..meshio import Mesh
from . import procedural as P

OCCLUDER_ID = 4                  # object id of an occluder in a photo's scene
OCCLUDER_COLOURS = {"pole": ([0.70, 0.70, 0.66], [0.20, 0.20, 0.22]),
                    "box": ([0.55, 0.12, 0.45], [0.10, 0.35, 0.12])}


def closed_box(centre, size, angle: float = 0.0) -> Mesh:
    """Six-sided box rotated about z; faces have their own vertices (sharp normals)."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    h = np.asarray(size, float) / 2
    vs, fs, off = [], [], 0
    for ax in range(3):
        for sign in (-1.0, 1.0):
            o = -h.copy()
            o[ax] = sign * h[ax]
            ea, eb = np.zeros(3), np.zeros(3)
            ea[(ax + 1) % 3] = 2 * h[(ax + 1) % 3]
            eb[(ax + 2) % 3] = 2 * h[(ax + 2) % 3]
            v, f = P._patch(o, ea, eb, 1)
            vs.append(v)
            fs.append(f + off)
            off += len(v)
    v = np.concatenate(vs)
    f = P._orient(v, np.concatenate(fs), np.zeros(3))
    return Mesh((v @ rot.T + np.asarray(centre, float)).astype(np.float32), f.astype(np.int32))


def make_occluder(cam: Camera, points: np.ndarray, depth: np.ndarray, kind: str,
                  rng: np.random.Generator) -> tuple[Mesh, dict]:
    """A pole (vertical, spanning the frame) or a floating box between the camera and the scene,
    at 35-60 % of the depth of a surface point seen near the middle of the photo."""
    uv, _ = cam.project(points)
    central = (np.abs(uv[:, 0] / cam.width - 0.5) < 0.3) & (np.abs(uv[:, 1] / cam.height - 0.5) < 0.25)
    idx = np.nonzero(central)[0] if central.any() else np.arange(len(points))
    k = int(rng.choice(idx))
    frac = rng.uniform(0.35, 0.6)
    q = cam.center + frac * (points[k] - cam.center)
    z = frac * depth[k]
    px = z / cam.fx                                             # world size of one pixel there
    if kind == "pole":
        w = rng.uniform(0.04, 0.07) * cam.width * px
        length = 2.0 * cam.height * z / cam.fy + 2.0
        mesh = closed_box(q, (w, w, length), rng.uniform(0, math.pi))
    else:
        s = rng.uniform(0.10, 0.20) * cam.width * px
        mesh = closed_box(q, (s, s * rng.uniform(0.7, 1.3), s * rng.uniform(0.7, 1.3)), rng.uniform(0, math.pi))
    return mesh, {"kind": kind, "centre": q.tolist(), "depth_fraction": float(frac)}


def with_mesh(spec: P.SceneSpec, mesh: Mesh, colour_a, colour_b) -> P.SceneSpec:
    """spec plus an extra object (id OCCLUDER_ID) with its own colours and sharp normals."""
    n0 = len(spec.mesh.vertices)
    ca = np.concatenate([spec.colour_a[:OCCLUDER_ID], [colour_a]])
    cb = np.concatenate([spec.colour_b[:OCCLUDER_ID], [colour_b]])
    return replace(spec, mesh=Mesh(np.concatenate([spec.mesh.vertices, mesh.vertices]).astype(np.float32),
                                   np.concatenate([spec.mesh.faces, mesh.faces + n0]).astype(np.int32)),
                   normals=np.concatenate([spec.normals, mesh.vertex_normals().astype(np.float64)]),
                   face_object=np.concatenate([spec.face_object, np.full(len(mesh.faces), OCCLUDER_ID, np.int32)]),
                   colour_a=ca, colour_b=cb)
