"""Mesh rasterization for the pipeline: surface samples of a camera as torch tensors.

CUDA: nvdiffrast (RasterizeCudaContext) finds the visible triangle per sample, in tiles (a tile
is the same camera with a shifted principal point), and the kernels of raster_triton cull what
each tile cannot see and compute the exact surface. CPU: the exact software rasterizer (raster_cpu).
Both sample rays at continuous pixel coordinates k + 0.5 of `camera.scaled(ss)`; sub-samples are
grouped per output pixel as (H, W, ss*ss) with sub-sample index a + ss*b (Camera.sample_coords).
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch.profiler import record_function

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


def tiles(cam: Camera) -> list[tuple[int, int, Camera]]:
    """`cam` split into a grid of near-equal tiles of at most MAX_TILE x MAX_TILE: (x0, y0, tile
    camera), the tile being the same camera with a shifted principal point; one tile when it fits."""
    nx, ny = -(-cam.width // MAX_TILE), -(-cam.height // MAX_TILE)
    tw, th = -(-cam.width // nx), -(-cam.height // ny)
    out = []
    for y0 in range(0, cam.height, th):
        for x0 in range(0, cam.width, tw):
            K = cam.K.copy()
            K[0, 2] -= x0
            K[1, 2] -= y0
            out.append((x0, y0, Camera(min(tw, cam.width - x0), min(th, cam.height - y0), K, cam.world_to_camera)))
    return out


@dataclass
class Surface:
    mask: torch.Tensor     # (H, W, S) bool, sub-sample hits the mesh
    xyz: torch.Tensor      # (H, W, S, 3) float32 world-space surface points (0 where no hit)
    normal: torch.Tensor | None   # (H, W, 3) float32 unit normal averaged over the hit sub-samples
    depth: torch.Tensor    # (H, W) float32 mean camera z over hit sub-samples (inf: no hit)


def kernels():
    """backend.raster_triton, the CUDA path's kernels, imported on first use: importing Triton
    takes ~1 s, which every CPU command would otherwise pay."""
    try:
        from . import raster_triton
    except ImportError as e:
        raise DeviceError("rendering on CUDA needs Triton, which this torch build lacks: "
                          "pip install triton (or a torch build from pytorch.org that ships it).") from e
    return raster_triton


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
        lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
        self.corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])],
                                dtype=np.float64)
        if device.type == "cuda":
            kernels()                   # fail here, with the fix, rather than at the first frame
            self.dr = load_nvdiffrast()
            self.ctx = self.dr.RasterizeCudaContext(device=device)
            self.to(device)

    def to(self, device: torch.device) -> "Rasterizer":
        """Mesh buffers of the CUDA path on `device` (tests drive that path on CPU tensors)."""
        self.v = torch.as_tensor(self.mesh.vertices, dtype=torch.float64, device=device).contiguous()
        self.f = torch.as_tensor(self.mesh.faces, dtype=torch.int32, device=device).contiguous()
        self.vn = torch.as_tensor(self.normals_np, dtype=torch.float32, device=device).contiguous()
        return self

    @property
    def _gpu(self) -> bool:
        return hasattr(self, "dr")

    # --- CPU: exact software rasterizer --------------------------------------------------
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

    # --- CUDA: nvdiffrast finds the visible triangle, raster_triton.resolve the exact surface --
    def _depth_range(self, cam: Camera) -> tuple[float, float]:
        """Near and far plane from the mesh's bounding box (no GPU round trip). The near plane is
        close to the camera (surfaces may come arbitrarily close in a flythrough); depth-buffer
        ties this causes are settled by the exact intersection."""
        E = cam.world_to_camera
        zmax = max(float((self.corners @ E[2, :3] + E[2, 3]).max()), 1e-3) * 1.01 + 1e-3
        return zmax * 1e-5, zmax

    def _triangle_ids(self, cam: Camera) -> torch.Tensor:
        """(H, W) int32 id of the nearest triangle per sample as nvdiffrast sees it, -1 where none.
        nvdiffrast's output row 0 is clip y = -1, which is our image row 0: no flip needed."""
        zmin, zmax = self._depth_range(cam)
        ids = torch.empty(cam.height, cam.width, dtype=torch.int32, device=self.v.device)
        for x0, y0, t in tiles(cam):
            with record_function("raster.cull"):
                # Triangles wholly outside one clip plane are not handed over: a tile or a
                # close-up sees a small part of a large mesh, and nvdiffrast sets up every
                # triangle it is given.
                pos, code = kernels().clip_codes(self.v, t, zmin, zmax)
                keep = kernels().keep_faces(self.f, code)
            with record_function("raster.nvdiffrast"):
                ids[y0:y0 + t.height, x0:x0 + t.width] = self._nearest(pos, keep, t.height, t.width)
        return ids

    def _nearest(self, pos: torch.Tensor, keep: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """nvdiffrast over the triangles `keep`, MAX_TRIS per call, composited by NDC depth."""
        tri = best = None
        pos = pos[None]
        if len(keep) == 0:              # nothing in view (nvdiffrast refuses an empty call)
            return torch.full((H, W), -1, dtype=torch.int32, device=pos.device)
        for s in range(0, len(keep), MAX_TRIS):
            sel = keep[s:s + MAX_TRIS]
            rast, _ = self.dr.rasterize(self.ctx, pos, self.f[sel].contiguous(), (H, W))
            ids = rast[0, ..., 3].to(torch.int64) - 1
            hit = ids >= 0
            found = torch.where(hit, sel[ids.clamp_min(0)], -1).to(torch.int32)
            z = torch.where(hit, rast[0, ..., 2], torch.inf)          # NDC depth, monotone in z
            if tri is None:
                tri, best = found, z
            else:
                nearer = z < best
                tri, best = torch.where(nearer, found, tri), torch.where(nearer, z, best)
        return tri

    def _resolve(self, cam: Camera, **kw):
        ids = self._triangle_ids(cam)
        with record_function("raster.resolve"):
            return kernels().resolve(ids, self.v, self.f, self.vn, cam, **kw)

    # --- public ---------------------------------------------------------------------------
    def hits(self, cam: Camera):
        """Per sample of `cam` (H, W): triangle id (int64, -1: none), camera z, barycentrics b1, b2
        of the triangle's vertices 1 and 2 (vertex 0 has 1 - b1 - b2)."""
        return self._resolve(cam, hits=True) if self._gpu else self._hits_cpu(cam)

    def surface(self, cam: Camera, ss: int = 1, normals: bool = True) -> Surface:
        """Pixels of `cam` with ss x ss sub-samples each (`normals`=False: Surface.normal is None)."""
        big = cam.scaled(ss) if ss > 1 else cam
        H, W = cam.height, cam.width
        if self._gpu:
            mask, xyz, nrm, depth = self._resolve(big, ss=ss, normals=normals)
        else:
            def group(a):   # (ss*H, ss*W, ...) -> (H, W, ss*ss, ...)
                r = a.reshape(H, ss, W, ss, *a.shape[2:]).transpose(1, 2)
                return r.reshape(H, W, ss * ss, *a.shape[2:])
            mask, xyz, nrm, depth = (group(a) for a in self._samples_cpu(big))
        n_hit = mask.sum(-1)
        if normals:
            nrm = (nrm * mask[..., None]).sum(2)
            nrm = nrm / nrm.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        else:
            nrm = None
        dep = torch.where(mask, depth, 0).sum(-1) / n_hit.clamp_min(1)
        dep = torch.where(n_hit > 0, dep, torch.inf)
        return Surface(mask, xyz, nrm, dep)
