"""Mesh rasterization for the pipeline: surface samples of a camera as torch tensors.

CUDA: nvdiffrast (RasterizeCudaContext). CPU: the exact software rasterizer (raster_cpu).
Both sample rays at continuous pixel coordinates k + 0.5 of `camera.scaled(ss)`; sub-samples are
regrouped per output pixel as (H, W, ss*ss) with sub-sample index a + ss*b (Camera.sample_coords).
Large images are rasterized in tiles (a tile is the same camera with a shifted principal point).
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

import numpy as np
import torch

from .cameras import Camera
from .errors import DeviceError
from .meshio import Mesh
from . import raster_cpu

# nvdiffrast 0.3.3 splits a call taller than 2048 px into sub-viewports and offsets the second
# row by an uninitialised stride (fixed upstream in 0.3.5): 3840 x 2160 calls crashed the process
# in our runs. Larger images are rasterized here in tiles of at most this size.
MAX_TILE = 2048
# Triangles per nvdiffrast call; larger meshes are rasterized in chunks, composited by depth.
# nvdiffrast returns the triangle id as float32 (exact up to 2^24) and holds at most 2^24
# triangles per call after clipping.
MAX_TRIS = 1 << 23


def tile_cameras(cam: Camera) -> list[Camera]:
    """`cam` split into row-major tiles of at most MAX_TILE x MAX_TILE (the same camera with a
    shifted principal point); one tile when it fits."""
    if cam.width <= MAX_TILE and cam.height <= MAX_TILE:
        return [cam]
    tiles = []
    for y0 in range(0, cam.height, MAX_TILE):
        for x0 in range(0, cam.width, MAX_TILE):
            K = cam.K.copy()
            K[0, 2] -= x0
            K[1, 2] -= y0
            tiles.append(Camera(min(MAX_TILE, cam.width - x0), min(MAX_TILE, cam.height - y0), K,
                                cam.world_to_camera))
    return tiles


@dataclass
class Surface:
    mask: torch.Tensor     # (H, W, S) bool, sub-sample hits the mesh
    xyz: torch.Tensor      # (H, W, S, 3) float32 world-space surface points (0 where no hit)
    normal: torch.Tensor   # (H, W, 3) float32 unit normal averaged over the hit sub-samples
    depth: torch.Tensor    # (H, W) float32 mean camera z over hit sub-samples (inf: no hit)


def load_nvdiffrast():
    """Import nvdiffrast.torch and JIT-build its plugin. With torch >= 2.11 the plugin's build
    folder is no longer put on sys.path by the loader, so add it before the first call."""
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _arch_list())
    import nvdiffrast
    import nvdiffrast.torch as dr
    import torch.utils.cpp_extension as ext
    name = re.sub(r"[^0-9a-zA-Z_]+", "_", f"nvdiffrast_plugin_{nvdiffrast.__version__}_torch{torch.__version__}")
    build_dir = ext._get_build_directory(name, False)
    if build_dir not in sys.path:
        sys.path.insert(0, build_dir)
    return dr


def _arch_list() -> str:
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    return ""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda was asked for but no CUDA GPU is available to torch "
                              f"(torch {torch.__version__}); install a CUDA build of torch or use --device cpu.")
        return torch.device(device)
    return torch.device("cpu")


def pixel_directions(cam: Camera, ii: torch.Tensor, jj: torch.Tensor) -> torch.Tensor:
    """Unit world-space view directions through pixel centres (ii + 0.5, jj + 0.5), on ii's device
    (the torch twin of Camera.directions, for millions of pixels)."""
    dev = ii.device
    y = (jj.double() + 0.5 - cam.cy) / cam.fy
    x = (ii.double() + 0.5 - cam.cx - cam.K[0, 1] * y) / cam.fx
    d = torch.stack([x, y, torch.ones_like(x)], -1) @ torch.as_tensor(cam.R, device=dev)
    return (d / d.norm(dim=-1, keepdim=True)).float()


class Rasterizer:
    def __init__(self, mesh: Mesh, device: torch.device):
        self.mesh, self.device = mesh, device
        self.normals_np = mesh.vertex_normals()
        if device.type == "cuda":
            self.dr = load_nvdiffrast()
            self.ctx = self.dr.RasterizeCudaContext(device=device)
            self.v = torch.as_tensor(mesh.vertices, dtype=torch.float64, device=device)
            self.f = torch.as_tensor(mesh.faces, dtype=torch.int32, device=device)
            self.f_long = self.f.long()
            self.vn = torch.as_tensor(self.normals_np, device=device)

    # --- one camera at sample resolution -------------------------------------------------
    def _samples_cpu(self, cam: Camera):
        r = raster_cpu.rasterize(self.mesh, cam)
        xyz = raster_cpu.interpolate(r, self.mesh.faces, self.mesh.vertices)
        nrm = raster_cpu.interpolate(r, self.mesh.faces, self.normals_np)
        return (torch.from_numpy(r.mask), torch.from_numpy(xyz.astype(np.float32)),
                torch.from_numpy(nrm.astype(np.float32)), torch.from_numpy(r.depth))

    def _hits_cpu(self, cam: Camera):
        r = raster_cpu.rasterize(self.mesh, cam)
        return (torch.from_numpy(r.tri.astype(np.int64)), torch.from_numpy(r.depth.astype(np.float64)),
                torch.from_numpy(r.bary[..., 0]), torch.from_numpy(r.bary[..., 1]))

    def _hits_cuda(self, cam: Camera):
        """nvdiffrast finds the visible triangle per sample; the surface point is then recomputed
        by an exact float64 ray/triangle intersection (nvdiffrast snaps vertices to 1/16 pixel and
        returns float32 barycentrics, up to ~0.2 px off at grazing angles). Samples it leaves
        uncovered inside a surface (pinholes along shared edges of large, clipped triangles) are
        filled by intersecting their neighbours' triangles."""
        W, H = cam.width, cam.height
        vc, clip = self._clip(cam)
        tri = self._triangle_ids(clip, H, W)
        f = self.f_long

        def hit(pix: torch.Tensor, t_ids: torch.Tensor):
            """Exact intersection of the rays of flat sample indices `pix` with triangles `t_ids`."""
            dx = ((pix % W).double() + 0.5 - cam.cx) / cam.fx
            dy = ((pix // W).double() + 0.5 - cam.cy) / cam.fy
            fa = f[t_ids]
            p0 = vc[fa[:, 0]]
            e1, e2 = vc[fa[:, 1]] - p0, vc[fa[:, 2]] - p0
            r = torch.stack([dx, dy, torch.ones_like(dx)], -1)
            p = torch.cross(r, e2, dim=-1)
            det = (e1 * p).sum(-1)
            inv = 1.0 / torch.where(det.abs() > 1e-30, det, torch.full_like(det, 1e-30))
            q = torch.cross(-p0, e1, dim=-1)
            return (e2 * q).sum(-1) * inv, (-p0 * p).sum(-1) * inv, (r * q).sum(-1) * inv

        tri = tri.reshape(-1)
        t = torch.full(tri.shape, torch.inf, dtype=torch.float64, device=self.device)
        b1, b2 = torch.zeros_like(t), torch.zeros_like(t)
        cov = torch.nonzero(tri >= 0).squeeze(1)
        t[cov], b1[cov], b2[cov] = hit(cov, tri[cov])
        eps = 1e-7
        # A sample whose exact ray misses nvdiffrast's (snapped) triangle is not covered by it;
        # the neighbour pass below may still find the triangle it does hit.
        miss = ~((b1 >= -eps) & (b2 >= -eps) & (b1 + b2 <= 1 + eps) & (t > 0))
        tri[miss] = -1
        t[miss] = torch.inf
        # Pinhole fill: an uncovered sample takes the nearest neighbouring triangle its ray hits.
        grid = tri.reshape(H, W)
        empty = torch.nonzero(grid.reshape(-1) < 0).squeeze(1)
        ey, ex = empty // W, empty % W
        for dj in (-1, 0, 1):
            for di in (-1, 0, 1):
                if di == 0 and dj == 0:
                    continue
                ny, nx = ey + dj, ex + di
                inside = (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
                nb = torch.full_like(empty, -1)
                nb[inside] = grid[ny[inside], nx[inside]]
                sel = nb >= 0
                if not bool(sel.any()):
                    continue
                pix, cand = empty[sel], nb[sel]
                tn, c1, c2 = hit(pix, cand)
                ok = (c1 >= -eps) & (c2 >= -eps) & (c1 + c2 <= 1 + eps) & (tn > 0) & (tn < t[pix])
                pix, cand = pix[ok], cand[ok]
                tri[pix], t[pix], b1[pix], b2[pix] = cand, tn[ok], c1[ok], c2[ok]
        return tuple(a.reshape(H, W) for a in (tri, t, b1, b2))

    def _samples_cuda(self, cam: Camera):
        tri, t, b1, b2 = self._hits_cuda(cam)
        mask = tri >= 0
        fa = self.f_long[tri.clamp_min(0)]
        w1, w2 = b1[..., None], b2[..., None]
        pts = (1 - w1 - w2) * self.v[fa[..., 0]] + w1 * self.v[fa[..., 1]] + w2 * self.v[fa[..., 2]]
        nrm = ((1 - w1 - w2) * self.vn[fa[..., 0]] + w1 * self.vn[fa[..., 1]] + w2 * self.vn[fa[..., 2]]).float()
        pts = torch.where(mask[..., None], pts, 0).float()
        return mask, pts, torch.where(mask[..., None], nrm, 0), torch.where(mask, t.float(), torch.inf)

    def _clip(self, cam: Camera) -> tuple[torch.Tensor, torch.Tensor]:
        """Vertices in camera space (float64) and in nvdiffrast's clip space (float32)."""
        W, H = cam.width, cam.height
        E = torch.as_tensor(cam.world_to_camera, device=self.device)
        vc = self.v @ E[:3, :3].T + E[:3, 3]
        z = vc[:, 2]
        zmax = float(z.max().clamp_min(1e-3)) * 1.01 + 1e-3
        # A near plane close to the camera (surfaces may come arbitrarily close in a flythrough);
        # depth-buffer ties this causes are settled by the exact intersection.
        zmin = zmax * 1e-5
        clip = torch.stack([cam.fx * 2 / W * vc[:, 0] + (2 * cam.cx / W - 1) * z,
                            cam.fy * 2 / H * vc[:, 1] + (2 * cam.cy / H - 1) * z,
                            (zmax + zmin) / (zmax - zmin) * z - 2 * zmax * zmin / (zmax - zmin),
                            z], 1).float()
        return vc, clip

    def _triangle_ids(self, clip: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """(H, W) int64 id of the nearest triangle per sample, -1 where none. nvdiffrast's output
        row 0 is clip y = -1, which is our image row 0: no flip needed."""
        # Cull triangles wholly outside one clip plane (all three vertices share an outcode bit):
        # a tile or a close-up sees a small part of a large mesh, and nvdiffrast sets up every
        # triangle it is given.
        x, y, z, w = clip.unbind(-1)
        code = ((x > w).to(torch.uint8) | (x < -w).to(torch.uint8) << 1 | (y > w).to(torch.uint8) << 2
                | (y < -w).to(torch.uint8) << 3 | (z < -w).to(torch.uint8) << 4 | (z > w).to(torch.uint8) << 5)
        c = code[self.f_long]
        keep = torch.nonzero((c[:, 0] & c[:, 1] & c[:, 2]) == 0).squeeze(1)
        tri = torch.full((H, W), -1, dtype=torch.int64, device=clip.device)
        best = torch.full((H, W), torch.inf, device=clip.device)
        pos = clip[None].contiguous()
        for s in range(0, len(keep), MAX_TRIS):
            sel = keep[s:s + MAX_TRIS]
            rast, _ = self.dr.rasterize(self.ctx, pos, self.f[sel].contiguous(), (H, W))
            ids = rast[0, ..., 3].to(torch.int64) - 1
            z = torch.where(ids >= 0, rast[0, ..., 2], torch.inf)   # NDC depth, monotone in z
            nearer = z < best
            tri = torch.where(nearer, sel[ids.clamp_min(0)], tri)
            best = torch.where(nearer, z, best)
        return tri

    def hits(self, cam: Camera):
        """Per sample of `cam` (H, W): triangle id (int64, -1: none), camera z, barycentrics b1, b2
        of the triangle's vertices 1 and 2 (vertex 0 has 1 - b1 - b2); tiled when large."""
        return self._tiled(self._hits_cuda if self.device.type == "cuda" else self._hits_cpu, cam)

    def samples(self, cam: Camera):
        """Raw per-sample buffers of `cam` at its own resolution, tiled when large."""
        return self._tiled(self._samples_cuda if self.device.type == "cuda" else self._samples_cpu, cam)

    @staticmethod
    def _tiled(fn, cam: Camera):
        cols = -(-cam.width // MAX_TILE)
        parts = [fn(t) for t in tile_cameras(cam)]
        rows = [[torch.cat(p, 1) for p in zip(*parts[r:r + cols])] for r in range(0, len(parts), cols)]
        return tuple(torch.cat(p, 0) for p in zip(*rows))

    # --- pixels with ss x ss sub-samples ----------------------------------------------------
    def surface(self, cam: Camera, ss: int = 1) -> Surface:
        mask, xyz, nrm, depth = self.samples(cam.scaled(ss) if ss > 1 else cam)
        H, W = cam.height, cam.width

        def group(a):   # (ss*H, ss*W, ...) -> (H, W, ss*ss, ...)
            r = a.reshape(H, ss, W, ss, *a.shape[2:]).transpose(1, 2)
            return r.reshape(H, W, ss * ss, *a.shape[2:])

        mask, xyz, nrm, depth = group(mask), group(xyz), group(nrm), group(depth)
        n_hit = mask.sum(-1)
        nrm = (nrm * mask[..., None]).sum(2)
        nrm = nrm / nrm.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        dep = torch.where(mask, depth, 0).sum(-1) / n_hit.clamp_min(1)
        dep = torch.where(n_hit > 0, dep, torch.inf)
        return Surface(mask, xyz, nrm, dep)
