"""nvdiffrast as an optional GPU rasterizer (backend.raster's "nvdiffrast"): the candidate triangle
per sample, which backend.raster_resolve turns into the exact surface.

nvdiffrast (`pip install -e .[nvdiffrast]`) compiles itself on first use, which needs the CUDA
toolkit (nvcc, ninja; MSVC on Windows): it is never required, only used when asked for
(XSCALE_RASTERIZER=nvdiffrast). The Triton kernels here feed it: `clip_codes` transforms the
vertices to its clip space (in float64: georeferenced coordinates lose centimetres in float32) and
`keep_faces` drops triangles wholly outside one clip plane (a tile or a close-up sees a small part
of a large mesh, and nvdiffrast sets up every triangle it is given).
"""
from __future__ import annotations

import os
import re
import sys

import torch
import triton
import triton.language as tl
from torch.profiler import record_function

from .cameras import Camera
from .raster_resolve import _to_camera, camera_params

BLOCK = 256
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


def load():
    """Import nvdiffrast.torch and JIT-build its plugin. With torch >= 2.11 the plugin's build
    folder is no longer put on sys.path by the loader, so add it before the first call."""
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    import nvdiffrast
    import nvdiffrast.torch as dr
    import torch.utils.cpp_extension as ext
    name = re.sub(r"[^0-9a-zA-Z_]+", "_", f"nvdiffrast_plugin_{nvdiffrast.__version__}_torch{torch.__version__}")
    build_dir = ext._get_build_directory(name, False)
    if build_dir not in sys.path:
        sys.path.insert(0, build_dir)
    return dr


@triton.jit
def _clip_kernel(v_ptr, prm_ptr, nd_ptr, pos_ptr, code_ptr, V, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < V
    x, y, z = _to_camera(prm_ptr, tl.load(v_ptr + 3 * i, m), tl.load(v_ptr + 3 * i + 1, m),
                         tl.load(v_ptr + 3 * i + 2, m))
    # nd: x' = ax x + bx z, y' = ay y + by z, z' = az z + bz, w = z (pixel k + 0.5 -> NDC centre)
    X = (tl.load(nd_ptr + 0) * x + tl.load(nd_ptr + 1) * z).to(tl.float32)
    Y = (tl.load(nd_ptr + 2) * y + tl.load(nd_ptr + 3) * z).to(tl.float32)
    Z = (tl.load(nd_ptr + 4) * z + tl.load(nd_ptr + 5)).to(tl.float32)
    Wc = z.to(tl.float32)
    tl.store(pos_ptr + 4 * i, X, m)
    tl.store(pos_ptr + 4 * i + 1, Y, m)
    tl.store(pos_ptr + 4 * i + 2, Z, m)
    tl.store(pos_ptr + 4 * i + 3, Wc, m)
    code = ((X > Wc).to(tl.int32) | ((X < -Wc).to(tl.int32) << 1) | ((Y > Wc).to(tl.int32) << 2)
            | ((Y < -Wc).to(tl.int32) << 3) | ((Z < -Wc).to(tl.int32) << 4) | ((Z > Wc).to(tl.int32) << 5))
    tl.store(code_ptr + i, code.to(tl.uint8), m)


def clip_codes(v: torch.Tensor, cam: Camera, zmin: float, zmax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """World vertices v (V, 3) float64 -> clip-space positions (V, 4) float32 for a rasterizer of
    cam.width x cam.height whose output row 0 is our image row 0, and outcodes (V,) uint8."""
    W, H = cam.width, cam.height
    nd = torch.tensor([cam.fx * 2 / W, 2 * cam.cx / W - 1, cam.fy * 2 / H, 2 * cam.cy / H - 1,
                       (zmax + zmin) / (zmax - zmin), -2 * zmax * zmin / (zmax - zmin)],
                      dtype=torch.float64, device=v.device)
    n = v.shape[0]
    pos = torch.empty(n, 4, dtype=torch.float32, device=v.device)
    code = torch.empty(n, dtype=torch.uint8, device=v.device)
    _clip_kernel[(triton.cdiv(n, BLOCK),)](v, camera_params(cam, v.device), nd, pos, code, n, BLOCK=BLOCK)
    return pos, code


@triton.jit
def _keep_kernel(f_ptr, code_ptr, keep_ptr, F, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < F
    c = (tl.load(code_ptr + tl.load(f_ptr + 3 * i, m), m) & tl.load(code_ptr + tl.load(f_ptr + 3 * i + 1, m), m)
         & tl.load(code_ptr + tl.load(f_ptr + 3 * i + 2, m), m))
    tl.store(keep_ptr + i, (c == 0).to(tl.int8), m)


def keep_faces(f: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Indices (int64, ascending) of the triangles of f (F, 3) int32 with no outcode bit shared by
    all three vertices."""
    n = f.shape[0]
    keep = torch.empty(n, dtype=torch.int8, device=f.device)
    _keep_kernel[(triton.cdiv(n, BLOCK),)](f, code, keep, n, BLOCK=BLOCK)
    return torch.nonzero(keep).squeeze(1)


class NvdiffrastIds:
    """triangle_ids through nvdiffrast (`dr`: the nvdiffrast.torch module; tests hand a stand-in)."""

    def __init__(self, device: torch.device, dr=None):
        self.dr = dr or load()
        self.ctx = self.dr.RasterizeCudaContext(device=device) if dr is None else None

    def __call__(self, v: torch.Tensor, f: torch.Tensor, cam: Camera, near: float, far: float) -> torch.Tensor:
        """(H, W) int32 id of the nearest triangle per sample as nvdiffrast sees it, -1 where none.
        nvdiffrast's output row 0 is clip y = -1, which is our image row 0: no flip needed."""
        ids = torch.empty(cam.height, cam.width, dtype=torch.int32, device=v.device)
        for x0, y0, t in tiles(cam):
            with record_function("raster.cull"):
                pos, code = clip_codes(v, t, near, far)
                keep = keep_faces(f, code)
            with record_function("raster.nvdiffrast"):
                ids[y0:y0 + t.height, x0:x0 + t.width] = self._nearest(pos, keep, f, t.height, t.width)
        return ids

    def _nearest(self, pos: torch.Tensor, keep: torch.Tensor, f: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """nvdiffrast over the triangles `keep`, MAX_TRIS per call, composited by NDC depth."""
        tri = best = None
        pos = pos[None]
        if len(keep) == 0:              # nothing in view (nvdiffrast refuses an empty call)
            return torch.full((H, W), -1, dtype=torch.int32, device=pos.device)
        for s in range(0, len(keep), MAX_TRIS):
            sel = keep[s:s + MAX_TRIS]
            rast, _ = self.dr.rasterize(self.ctx, pos, f[sel].contiguous(), (H, W))
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
