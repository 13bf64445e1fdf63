"""The exact render of the true scene, culled to the camera's frustum first (the same pixels as
procedural.reference_render, faster on close views), and the surface points a camera sees."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..cameras import Camera
from ..meshio import Mesh
from ..raster_cpu import NEAR, interpolate, rasterize
from . import procedural as P


def frustum_faces(mesh: Mesh, cam: Camera, margin: float = 2.0) -> np.ndarray:
    """Bool (F,): triangles not entirely outside one of the camera's frustum planes (image
    borders widened by `margin` pixels, and the near plane). The others can hit no sample, so
    dropping them changes no pixel; it spares the CPU rasterizer full-image passes for
    triangles that cross the camera plane beside the view (close-ups over the ground)."""
    V = cam.to_camera(mesh.vertices.astype(np.float64))
    x, y, z = V[:, 0], V[:, 1], V[:, 2]
    outside = [z <= NEAR,
               cam.fx * x < (-margin - cam.cx) * z, cam.fx * x > (cam.width + margin - cam.cx) * z,
               cam.fy * y < (-margin - cam.cy) * z, cam.fy * y > (cam.height + margin - cam.cy) * z]
    keep = np.ones(len(mesh.faces), bool)
    for o in outside:
        keep &= ~o[mesh.faces].all(1)
    return keep


def culled(spec: P.SceneSpec, cam: Camera) -> P.SceneSpec:
    k = frustum_faces(spec.mesh, cam)
    return replace(spec, mesh=Mesh(spec.mesh.vertices, spec.mesh.faces[k]), face_object=spec.face_object[k])


def render_clean(spec: P.SceneSpec, cam: Camera, ss: int) -> tuple[np.ndarray, np.ndarray]:
    """procedural.reference_render (linear RGB, alpha), the same pixels, faster on close views."""
    return P.reference_render(culled(spec, cam), cam, ss)


def surface_samples(spec: P.SceneSpec, cam: Camera, max_side: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Surface points (N, 3) visible at the pixel centres of a low-resolution copy of `cam`, and
    those pixels' camera depth (N,)."""
    f = min(1.0, max_side / max(cam.width, cam.height))
    small = cam.scaled(f)
    c = culled(spec, small)
    r = rasterize(c.mesh, small)
    x = interpolate(r, c.mesh.faces, c.mesh.vertices)[r.mask]
    return x, r.depth[r.mask].astype(np.float64)
