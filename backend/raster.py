"""Mesh rasterization for the pipeline: surface samples of a camera as torch tensors.

One interface (`Rasterizer`: `surface`, `hits`), implementations chosen by name from RASTERIZERS:
- "triton" (the default on CUDA): backend.raster_triton finds the visible triangle per sample with
  Triton kernels, compiled at run time from the wheel (no CUDA toolkit, no C++ compiler);
- "nvdiffrast" (optional, where installed; needs the CUDA toolkit to build itself on first use):
  backend.raster_nvdiffrast, the same answer through nvdiffrast;
- "cpu" (the default elsewhere): the exact software rasterizer (backend.raster_cpu), also the
  reference the GPU ones are tested against.
A GPU rasterizer only finds a candidate triangle per sample; backend.raster_resolve computes the
exact float64 surface from it, so every GPU rasterizer gives the same surface as the CPU one.
Samples are rays at continuous pixel coordinates k + 0.5 of `camera.scaled(ss)`; sub-samples are
grouped per output pixel as (H, W, ss*ss) with sub-sample index a + ss*b (Camera.sample_coords).
To add a rasterizer: a module with a callable (v, f, cam, near, far) -> (H, W) int32 triangle ids
(-1: none), and one RASTERIZERS entry.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.profiler import record_function

from .cameras import Camera
from .errors import DeviceError
from .meshio import Mesh
from . import raster_cpu

ENV = "XSCALE_RASTERIZER"      # picks the rasterizer where "auto" would


@dataclass(frozen=True)
class RasterizerKind:
    name: str
    label: str                  # what `doctor` shows
    gpu: bool                   # finds candidates on the GPU (the exact surface comes from raster_resolve)
    make: Callable[[torch.device], Callable] | None = None   # device -> triangle_ids(v, f, cam, near, far)


def _triton(device: torch.device) -> Callable:
    return _kernels("raster_triton").triangle_ids


def _nvdiffrast(device: torch.device) -> Callable:
    from .raster_nvdiffrast import NvdiffrastIds
    from .toolchain import explain
    try:
        return NvdiffrastIds(device)           # builds nvdiffrast's plugin on first use
    except ImportError as e:
        raise DeviceError(f"{ENV}=nvdiffrast, but nvdiffrast is not installed ({e}): pip install "
                          "diffrp-nvdiffrast ninja (builds with the CUDA toolkit), or unset it for the default "
                          "rasterizer.") from e
    except Exception as e:                      # a failed build: the missing tool and its fix
        raise DeviceError(explain(e) or f"nvdiffrast could not be built here ({type(e).__name__}: {e}); "
                          f"unset {ENV} for the default rasterizer.") from e


RASTERIZERS = {k.name: k for k in (
    RasterizerKind("triton", "Triton kernels (CUDA; compiled at run time, no CUDA toolkit needed)", True, _triton),
    RasterizerKind("nvdiffrast", "nvdiffrast (CUDA; optional, builds itself with the CUDA toolkit)", True, _nvdiffrast),
    RasterizerKind("cpu", "exact software rasterizer (CPU)", False),
)}


def choose(name: str, device: torch.device) -> RasterizerKind:
    """The rasterizer `name` ("auto": $XSCALE_RASTERIZER if set, else "triton" on CUDA, "cpu"
    elsewhere); an unknown name is refused with the known ones."""
    if name == "auto":
        name = os.environ.get(ENV) or ("triton" if device.type == "cuda" else "cpu")
    if name not in RASTERIZERS:
        raise DeviceError(f"unknown rasterizer {name!r} (from {ENV} or the caller); known: {', '.join(RASTERIZERS)}")
    kind = RASTERIZERS[name]
    if kind.gpu and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise DeviceError(f"the {name} rasterizer needs a CUDA device; use --device cuda, or unset {ENV}")
    return kind


def _kernels(module: str):
    """A Triton kernel module (raster_triton, raster_resolve), imported on first use: importing
    Triton takes ~1 s, which every CPU command would otherwise pay."""
    import importlib
    try:
        return importlib.import_module(f".{module}", __package__)
    except ImportError as e:
        raise DeviceError("rendering on CUDA needs Triton, which this Python lacks: pip install triton "
                          "(on Windows: pip install triton-windows), or use --device cpu.") from e


@dataclass
class Surface:
    mask: torch.Tensor     # (H, W, S) bool, sub-sample hits the mesh
    xyz: torch.Tensor      # (H, W, S, 3) float32 world-space surface points (0 where no hit)
    normal: torch.Tensor | None   # (H, W, 3) float32 unit normal averaged over the hit sub-samples
    depth: torch.Tensor    # (H, W) float32 mean camera z over hit sub-samples (inf: no hit)


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
    def __init__(self, mesh: Mesh, device: torch.device, kind: str = "auto"):
        self.mesh, self.device = mesh, device
        self.kind = choose(kind, device)
        self.normals_np = mesh.vertex_normals()
        lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
        self.corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])],
                                dtype=np.float64)
        if self.kind.gpu:
            self.resolver = _kernels("raster_resolve")   # fail here, with the fix, rather than at the first frame
            self.triangle_ids = self.kind.make(device)
            self.to(device)

    def to(self, device: torch.device) -> "Rasterizer":
        """Mesh buffers of a GPU rasterizer on `device` (tests drive that path on CPU tensors)."""
        self.v = torch.as_tensor(self.mesh.vertices, dtype=torch.float64, device=device).contiguous()
        self.f = torch.as_tensor(self.mesh.faces, dtype=torch.int32, device=device).contiguous()
        self.vn = torch.as_tensor(self.normals_np, dtype=torch.float32, device=device).contiguous()
        return self

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

    # --- GPU: a rasterizer finds the candidate triangle, raster_resolve the exact surface ----
    def _depth_range(self, cam: Camera) -> tuple[float, float]:
        """Near and far plane from the mesh's bounding box (no GPU round trip). The near plane is
        close to the camera (surfaces may come arbitrarily close in a flythrough); depth-buffer
        ties this causes are settled by the exact intersection."""
        E = cam.world_to_camera
        zmax = max(float((self.corners @ E[2, :3] + E[2, 3]).max()), 1e-3) * 1.01 + 1e-3
        return zmax * 1e-5, zmax

    def _resolve(self, cam: Camera, **kw):
        with record_function(f"raster.{self.kind.name}"):
            ids = self.triangle_ids(self.v, self.f, cam, *self._depth_range(cam))
        with record_function("raster.resolve"):
            return self.resolver.resolve(ids, self.v, self.f, self.vn, cam, **kw)

    # --- public ---------------------------------------------------------------------------
    def hits(self, cam: Camera):
        """Per sample of `cam` (H, W): triangle id (int64, -1: none), camera z, barycentrics b1, b2
        of the triangle's vertices 1 and 2 (vertex 0 has 1 - b1 - b2)."""
        return self._resolve(cam, hits=True) if self.kind.gpu else self._hits_cpu(cam)

    def surface(self, cam: Camera, ss: int = 1, normals: bool = True) -> Surface:
        """Pixels of `cam` with ss x ss sub-samples each (`normals`=False: Surface.normal is None)."""
        big = cam.scaled(ss) if ss > 1 else cam
        H, W = cam.height, cam.width
        if self.kind.gpu:
            mask, xyz, nrm, depth = self._resolve(big, ss=ss, normals=normals)
        else:
            def group(a):   # (ss*H, ss*W, ...) -> (H, W, ss*ss, ...)
                r = a.reshape(H, ss, W, ss, *a.shape[2:]).transpose(1, 2)
                return r.reshape(H, W, ss * ss, *a.shape[2:]).to(self.device)
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
