"""Whether a mesh is in the frame of cameras made by structure from motion (numpy only).

Structure from motion picks its own position, rotation and scale, so a mesh exported by another
reconstruction of the same photos lies elsewhere (another scale, rotation or offset): nothing says
so until training learns garbage. The 3-D points structure from motion triangulated lie on the
photographed surfaces, so a mesh in their frame passes through most of those inside its bounding
box, and most of its surface has points nearby; one in another frame passes through few of them, or
has none inside its box, or (scaled about a point of a large plane it shares with them) spreads far
beyond them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..meshio import Mesh

NEAR = 0.005           # of the mesh's bounding-box diagonal: the cell size of the surface's voxels
BOX_MARGIN = 0.05      # of the diagonal, around the mesh's bounding box
MIN_ON_SURFACE = 0.4   # share of the points inside the box that must lie on the surface
SEEN = 0.03            # of the diagonal: the cell size at which the surface must have points nearby
MIN_SEEN = 0.5         # share of the surface (by area) that must have points nearby
MIN_INSIDE = 20        # points that must lie inside the box
SAMPLES = 400_000      # surface samples at most (then the cells grow to hold them)


@dataclass
class FrameAgreement:
    points: int          # the 3-D points compared
    inside: int          # of them, inside the mesh's (slightly enlarged) bounding box
    on_surface: float    # share of those inside within a cell or two of the surface
    seen: float = 0.0    # share of the surface with points within a few % of the diagonal

    @property
    def agrees(self) -> bool:
        return self.inside >= MIN_INSIDE and self.on_surface >= MIN_ON_SURFACE and self.seen >= MIN_SEEN


def _surface_samples(v: np.ndarray, faces: np.ndarray, area: np.ndarray, spacing: float,
                     rng: np.random.Generator) -> np.ndarray:
    """The vertices and random points on the triangles, about one per spacing^2 of area."""
    a, b, c = (v[faces[:, k]] for k in range(3))
    n = min(SAMPLES, int(area.sum() / spacing ** 2) + 1)
    face = rng.choice(len(area), size=n, p=area / area.sum()) if area.sum() > 0 else np.zeros(0, int)
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)                                  # uniform on the triangle
    pts = (1 - s)[:, None] * a[face] + (s * (1 - r2))[:, None] * b[face] + (s * r2)[:, None] * c[face]
    return np.concatenate([v, pts])


def _keys(cells: np.ndarray) -> np.ndarray:
    c = cells.astype(np.int64) + (1 << 20)           # cells are within +-2^20 of the box's corner
    return (c[:, 0] << 42) | (c[:, 1] << 21) | c[:, 2]


def _near(points: np.ndarray, others: np.ndarray, origin: np.ndarray, cell: float) -> np.ndarray:
    """Whether each point has one of `others` in its cell or a neighbouring one."""
    occupied = np.unique(_keys(np.floor((others - origin) / cell)))
    home = np.floor((points - origin) / cell).astype(np.int64)
    near = np.zeros(len(points), bool)
    for offset in np.stack(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij"), -1).reshape(-1, 3):
        keys = _keys(home + offset)
        at = np.clip(np.searchsorted(occupied, keys), 0, len(occupied) - 1)
        near |= occupied[at] == keys
    return near


def frame_agreement(mesh: Mesh, points: np.ndarray, seed: int = 0) -> FrameAgreement:
    """How many of `points` (N, 3) lie inside the mesh's bounding box, which share of those lie on
    its surface (within about 1 % of its diagonal), and which share of the surface has one of them
    within a few % of its diagonal."""
    v = mesh.vertices.astype(np.float64)
    lo, hi = v.min(0), v.max(0)
    diag = float(np.linalg.norm(hi - lo)) or 1.0
    p = np.asarray(points, np.float64).reshape(-1, 3)
    p = p[np.isfinite(p).all(1)]
    margin = BOX_MARGIN * diag
    inside = p[((p >= lo - margin) & (p <= hi + margin)).all(1)]
    if len(inside) == 0:
        return FrameAgreement(len(p), 0, 0.0)
    f = mesh.faces
    area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    cell = max(NEAR * diag, 2 * np.sqrt(area.sum() / SAMPLES))   # a few samples in every cell the surface crosses
    origin = lo - margin
    samples = _surface_samples(v, f, area, cell / 2, np.random.default_rng(seed))
    on_surface = float(_near(inside, samples, origin, cell).mean())
    random = samples[len(v):]                        # area-weighted (the vertices are not)
    seen = float(_near(random, inside, origin, max(cell, SEEN * diag)).mean()) if len(random) else 0.0
    return FrameAgreement(len(p), len(inside), on_surface, seen)
