"""The nvdiffrast rasterizer's path on CPU tensors: its Triton kernels (cull, tiles) and the exact
resolve under Triton's interpreter, nvdiffrast replaced by an exact stand-in. Collected only through
test_raster.py::test_gpu_paths_in_triton_interpreter, which sets TRITON_INTERPRET=1."""
import numpy as np
import torch

import backend.raster_nvdiffrast as R
from backend.cameras import Camera
from backend.meshio import Mesh
from backend.raster import Rasterizer
from backend.raster_nvdiffrast import NvdiffrastIds
from backend.raster_cpu import rasterize
from helpers import grid_plane, odd_camera, uv_sphere


class FakeNvdiffrast:
    """Rasterizes exactly the triangles it is handed (raster_cpu on that subset) for the tile its
    clip-space positions describe; returns their ids + 1 and a depth that grows with camera z."""

    def __init__(self, mesh: Mesh, cam: Camera, edit=None):
        self.mesh, self.cam, self.edit, self.calls = mesh, cam, edit, []

    def _tile(self, clip: torch.Tensor, res) -> Camera:
        # A tile is the camera with a shifted principal point: recover the shift from a vertex in
        # front of the camera (full-image pixel - tile pixel).
        uv, z = self.cam.project(self.mesh.vertices.astype(np.float64))
        k = int(np.argmax(z))
        H, W = res
        c = clip[0, k].double().numpy()
        x0 = round(uv[k, 0] - (c[0] / c[3] + 1) * W / 2)
        y0 = round(uv[k, 1] - (c[1] / c[3] + 1) * H / 2)
        K = self.cam.K.copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        return Camera(W, H, K, self.cam.world_to_camera)

    def rasterize(self, ctx, clip, faces, res):
        if faces.shape[0] == 0:
            raise RuntimeError("tri must have shape [>0, 3]")     # as nvdiffrast does
        sub = Mesh(self.mesh.vertices, faces.numpy().reshape(-1, 3))
        self.calls.append(len(sub.faces))
        r = rasterize(sub, self._tile(clip, res))
        out = torch.zeros(1, *res, 4)
        out[0, ..., 2] = torch.from_numpy(np.where(r.mask, 1 - 1 / r.depth, 0))
        out[0, ..., 3] = torch.from_numpy(r.tri).float() + 1
        if self.edit:
            self.edit(out, faces)
        return out, None


def stand_in(mesh: Mesh, fake: FakeNvdiffrast) -> Rasterizer:
    """A GPU rasterizer on CPU tensors whose candidates come from nvdiffrast's path with `fake`."""
    rast = Rasterizer(mesh, torch.device("cpu"), "triton")
    rast.triangle_ids = NvdiffrastIds(torch.device("cpu"), dr=fake)
    return rast


def exact(mesh: Mesh, cam: Camera, ss: int):
    return Rasterizer(mesh, torch.device("cpu")).surface(cam, ss)


def assert_same_surface(got, ref, tol=1e-6):
    assert torch.equal(got.mask, ref.mask)
    assert (got.xyz - ref.xyz).abs().max().item() < tol
    assert torch.equal(torch.isinf(got.depth), torch.isinf(ref.depth))
    fin = torch.isfinite(ref.depth)
    assert torch.allclose(got.depth[fin], ref.depth[fin], rtol=1e-6)
    assert (got.normal - ref.normal).abs().max().item() < 1e-5


def test_resolve_is_exact_and_fills_pinholes():
    """nvdiffrast's answer with holes punched in and a wrong id at a silhouette: the exact
    intersection drops the overreach, the neighbour pass fills the holes."""
    mesh = uv_sphere(30)
    cam = odd_camera(120, 90, eye=(0.3, -3.2, 0.9))
    truth = rasterize(mesh, cam)
    outside = np.argwhere(~truth.mask)
    edge = next((j, i) for j, i in outside if 0 < i < 119 and truth.mask[j, i - 1])

    def edit(out, faces):
        row = {tuple(f): k for k, f in enumerate(faces.reshape(-1, 3).tolist())}
        tri = out[0, ..., 3]
        tri[40, 50] = tri[41, 50] = tri[60, 30] = 0                # pinholes inside the sphere
        tri[edge] = float(row[tuple(mesh.faces[truth.tri[edge[0], edge[1] - 1]].tolist())] + 1)  # a snapped triangle's overreach
        out[0, ..., 2][edge] = out[0, edge[0], edge[1] - 1, 2]

    rast = stand_in(mesh, FakeNvdiffrast(mesh, cam, edit))
    assert_same_surface(rast.surface(cam, 1), exact(mesh, cam, 1))
    tri, z, b1, b2 = rast.hits(cam)
    ref = Rasterizer(mesh, torch.device("cpu")).hits(cam)
    assert torch.equal(tri, ref[0])
    hit = tri >= 0
    assert torch.allclose(z[hit], ref[1][hit], rtol=1e-6)       # the CPU path keeps float32 depth
    assert (b1 - ref[2])[hit].abs().max().item() < 1e-6 and (b2 - ref[3])[hit].abs().max().item() < 1e-6


def test_supersampled_samples_are_grouped_per_pixel():
    """ss = 2 and 3: the kernel writes sub-sample a + ss*b of pixel (j, i) where the CPU path's
    reshape puts it; normals and depth averaged the same way."""
    mesh = uv_sphere(24)
    cam = odd_camera(50, 34, eye=(0.3, -3.2, 0.9))
    for ss in (2, 3):
        rast = stand_in(mesh, FakeNvdiffrast(mesh, cam.scaled(ss)))
        assert_same_surface(rast.surface(cam, ss), exact(mesh, cam, ss))
        assert rast.surface(cam, ss, normals=False).normal is None


def test_culled_and_chunked_calls_composite_by_depth(monkeypatch):
    """Off-screen triangles are never handed to nvdiffrast, and a mesh split over several calls
    keeps the nearest surface: a sphere in front of a plane, chunked 150 triangles per call."""
    a, b = uv_sphere(16), grid_plane(12)
    verts = np.concatenate([a.vertices * 0.5, b.vertices * 3 + [0, 1.5, 0]]).astype(np.float32)
    plane = b.faces[:, [0, 2, 1]] + len(a.vertices)
    mesh = Mesh(verts, np.concatenate([plane, a.faces]).astype(np.int32))   # plane first: far chunks before near
    cam = odd_camera(96, 72, eye=(0.2, -3.0, 0.4))
    fake = FakeNvdiffrast(mesh, cam)
    rast = stand_in(mesh, fake)
    monkeypatch.setattr(R, "MAX_TRIS", 150)
    assert_same_surface(rast.surface(cam, 1), exact(mesh, cam, 1))
    assert len(fake.calls) >= 3 and max(fake.calls) <= 150
    assert sum(fake.calls) < len(mesh.faces)          # the plane's off-screen part was culled


def test_tiles_reassemble(monkeypatch):
    """Tiles of at most 48 x 48 (uneven: 200 x 140 samples -> 5 x 3): same surface as one call,
    each tile handed only the triangles it can see."""
    mesh = uv_sphere(20)
    cam = odd_camera(100, 70, eye=(0.3, -3.2, 0.9))
    monkeypatch.setattr(R, "MAX_TILE", 48)
    assert len(R.tiles(cam.scaled(2))) == 5 * 3
    fake = FakeNvdiffrast(mesh, cam.scaled(2))
    rast = stand_in(mesh, fake)
    assert_same_surface(rast.surface(cam, 2), exact(mesh, cam, 2))
    assert 0 < len(fake.calls) < 15 and max(fake.calls) < len(mesh.faces)   # corner tiles see nothing: no call
