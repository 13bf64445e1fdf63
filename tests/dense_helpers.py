"""A stand-in for COLMAP's patch-match stereo (CUDA only) for the dense tests (test_prepare_dense.py):
the depth and normal maps it writes, made from the true mesh carried into the workspace's frame, in
COLMAP's dense map format, so that the real fusion and Poisson meshing run on the CPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from backend.cameras import Camera
from backend.meshio import Mesh
from backend.raster_cpu import rasterize
from benchmarks.camera_alignment import fit_similarity_robust, recovered_cameras


def write_dense_map(path: Path, values: np.ndarray) -> None:
    """COLMAP's depth/normal map file: the text header `width&height&channels&`, then float32
    little-endian values channel by channel, each channel row by row (an (H, W, C) array read in
    Fortran order as (W, H, C), which is how COLMAP's own reader script reads it)."""
    a = np.asarray(values, np.float32)
    a = a[..., None] if a.ndim == 2 else a
    h, w, c = a.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(f"{w}&{h}&{c}&".encode("ascii"))
        f.write(np.ascontiguousarray(a.transpose(2, 0, 1)).astype("<f4").tobytes())


def workspace_cameras(pycolmap, workspace: Path) -> list[Camera]:
    """The undistorted (pinhole) cameras of a dense workspace, named by their photo. COLMAP's dense
    stages put pixel (col, row)'s centre at (col, row) where its sparse models use (col + 0.5, row
    + 0.5): the principal point is moved half a pixel so that the rasterizer's rays are patch match's."""
    model = pycolmap.Reconstruction(workspace / "sparse")
    cams = []
    for image in model.images.values():
        K = np.array(model.cameras[image.camera_id].calibration_matrix(), np.float64)
        K[0, 2] += 0.5
        K[1, 2] += 0.5
        E = np.eye(4)
        E[:3] = np.asarray(image.cam_from_world().matrix())
        cam = model.cameras[image.camera_id]
        cams.append(Camera(cam.width, cam.height, K, E, image.name))
    return cams


def true_mesh_in(model_dir: Path, mesh: Mesh, true_centres: dict[str, np.ndarray]) -> Mesh:
    """The true mesh carried into a COLMAP model's frame by the similarity that best carries the true
    camera centres onto the recovered ones (fit_similarity_robust: not pulled by a wrong camera)."""
    rec = recovered_cameras(model_dir)
    names = sorted(set(rec) & set(true_centres))
    to_rec = fit_similarity_robust(np.array([true_centres[n] for n in names]), np.array([rec[n][1] for n in names]))
    return Mesh(to_rec.apply(mesh.vertices).astype(np.float32), mesh.faces)


def surface_maps(mesh: Mesh, cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Depth (camera z, 0 where no surface) and unit normals in the camera frame, turned towards the
    camera as patch match keeps them (zero where no surface), at every pixel of `cam`."""
    r = rasterize(mesh, cam)
    v = mesh.vertices.astype(np.float64)
    f = mesh.faces
    face_n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    face_n /= np.maximum(np.linalg.norm(face_n, axis=1, keepdims=True), 1e-30)
    n = face_n[np.where(r.mask, r.tri, 0)] @ cam.R.T                    # (H, W, 3), camera frame
    jj, ii = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
    ray = np.stack([(jj - cam.cx) / cam.fx, (ii - cam.cy) / cam.fy, np.ones_like(jj)], -1)
    n = np.where((np.einsum("hwk,hwk->hw", n, ray) > 0)[..., None], -n, n)
    depth = np.where(r.mask, r.depth, 0.0)
    return depth.astype(np.float32), np.where(r.mask[..., None], n, 0.0).astype(np.float32)


def patch_match_standin(mesh: Mesh, true_centres: dict[str, np.ndarray], calls: list | None = None):
    """A replacement for backend.prepare.sfm.stereo: the geometric depth and normal maps of every
    photo of the workspace, from the true mesh; `calls` collects the workspaces it ran on."""
    def stereo(pycolmap, workspace: Path, token) -> dict:
        if calls is not None:
            calls.append(workspace)
        moved = true_mesh_in(workspace / "sparse", mesh, true_centres)
        for cam in workspace_cameras(pycolmap, workspace):
            depth, normal = surface_maps(moved, cam)
            write_dense_map(workspace / "stereo" / "depth_maps" / f"{cam.name}.geometric.bin", depth)
            write_dense_map(workspace / "stereo" / "normal_maps" / f"{cam.name}.geometric.bin", normal)
        return {"depth_maps": len(list((workspace / "stereo" / "depth_maps").glob("*.geometric.bin")))}
    return stereo


def distances_to_mesh(points: np.ndarray, mesh: Mesh, chunk: int = 256) -> np.ndarray:
    """Exact distance of each point to the nearest triangle of `mesh` (numpy, O(points x triangles))."""
    v = mesh.vertices.astype(np.float64)
    a, b, c = (v[mesh.faces[:, k]] for k in range(3))
    n = np.cross(b - a, c - a)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)
    out = np.empty(len(points))
    for s in range(0, len(points), chunk):
        p = np.asarray(points[s:s + chunk], np.float64)[:, None]          # (P, 1, 3)
        h = np.einsum("pfk,fk->pf", p - a, n)                            # signed height over the plane
        q = p - h[..., None] * n                                         # the projection onto it
        inside = np.ones(h.shape, bool)
        for u, w in ((a, b), (b, c), (c, a)):                           # same side of every edge
            inside &= np.einsum("pfk,fk->pf", np.cross(w - u, q - u), n) >= 0
        d = np.where(inside, np.abs(h), np.inf)
        for u, w in ((a, b), (b, c), (c, a)):                           # else the nearest edge
            e = w - u
            t = np.clip(np.einsum("pfk,fk->pf", p - u, e) / np.maximum((e * e).sum(1), 1e-30), 0, 1)
            d = np.minimum(d, np.linalg.norm(p - u - t[..., None] * e, axis=-1))
        out[s:s + chunk] = d.min(1)
    return out
