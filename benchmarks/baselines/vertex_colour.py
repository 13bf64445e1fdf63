"""Per-vertex-colour baseline: one linear RGB per mesh vertex (sigmoid of a free parameter),
interpolated with the barycentrics of every sub-sample, averaged over the sub-samples that hit
the mesh (the same ss x ss anti-aliasing as the hash manifold), encoded to sRGB and fitted to the
photos with L1 + Adam. Colour can only vary linearly inside a triangle, so texture finer than the
mesh is out of its reach.

Barycentrics come from the same rasterizers as the pipeline (nvdiffrast on CUDA, the exact CPU
rasterizer otherwise) with the same camera convention as backend.raster.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from backend.cameras import Camera
from backend.colour import linear_to_srgb
from backend.raster import Rasterizer


def tri_bary(rast: Rasterizer, cam: Camera, ss: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Visible triangle and barycentric weights of every sub-sample of `cam` at ss x ss:
    tri (H, W, S) int64 (-1: no hit) and w (H, W, S, 3) float32 (weights of the triangle's
    vertices 0, 1, 2), sub-sample index a + ss*b as in Rasterizer.surface."""
    tri, _t, b1, b2 = rast.hits(cam.scaled(ss) if ss > 1 else cam)
    w = torch.stack([1 - b1 - b2, b1, b2], -1)
    H, W = cam.height, cam.width

    def group(a: torch.Tensor) -> torch.Tensor:        # (ss*H, ss*W, ...) -> (H, W, ss*ss, ...)
        r = a.reshape(H, ss, W, ss, *a.shape[2:]).transpose(1, 2)
        return r.reshape(H, W, ss * ss, *a.shape[2:])
    return group(tri), group(w.float())


class VertexColours(nn.Module):
    """Linear RGB = sigmoid(param) per vertex; pixels are sub-sample averages, output sRGB."""

    def __init__(self, faces: np.ndarray, n_vertices: int):
        super().__init__()
        self.register_buffer("faces", torch.as_tensor(faces, dtype=torch.int64))
        self.logit = nn.Parameter(torch.zeros(n_vertices, 3))

    def forward(self, tri: torch.Tensor, w: torch.Tensor, linear: bool = False) -> torch.Tensor:
        """tri (N, S), w (N, S, 3) -> (N, 3) sRGB (or linear RGB) of N covered pixels."""
        hit = tri >= 0
        vid = self.faces[tri.clamp_min(0)]                              # (N, S, 3)
        vcol = torch.sigmoid(self.logit).index_select(0, vid.reshape(-1)).view(*vid.shape, 3)
        col = torch.einsum("nsk,nskc->nsc", w, vcol)                    # (N, S, 3)
        h = hit.to(col.dtype)[..., None]
        rgb = (col * h).sum(1) / h.sum(1).clamp_min(1.0)
        return rgb if linear else linear_to_srgb(rgb)


@dataclass
class PixelTable:
    """Covered pixels of the training photos: sub-sample triangles, weights, photo colour."""
    tri: torch.Tensor    # (N, S) int32
    w: torch.Tensor      # (N, S, 3) float16
    rgb: torch.Tensor    # (N, 3) uint8 sRGB

    def __len__(self) -> int:
        return len(self.rgb)


def pixel_table(rast: Rasterizer, views: list[tuple[Camera, np.ndarray]], ss: int,
                max_pixels: int = 1 << 24, seed: int = 0) -> PixelTable:
    """Rasterize every training view once. views: (camera, uint8 (H, W, 3) sRGB photo).
    At most `max_pixels` pixels are kept (a uniform random subset of each view's share)."""
    rng = np.random.default_rng(seed)
    per_view = max(1, max_pixels // max(len(views), 1))
    parts: list[tuple[torch.Tensor, ...]] = []
    for cam, img in views:
        tri, w = tri_bary(rast, cam, ss)
        covered = (tri >= 0).any(-1)
        jj, ii = torch.nonzero(covered, as_tuple=True)
        if len(jj) > per_view:
            keep = torch.from_numpy(np.sort(rng.choice(len(jj), per_view, replace=False))).to(jj.device)
            jj, ii = jj[keep], ii[keep]
        rgb = torch.from_numpy(np.ascontiguousarray(img[jj.cpu().numpy(), ii.cpu().numpy()]))
        parts.append((tri[jj, ii].to(torch.int32), w[jj, ii].half(), rgb.to(tri.device)))
    tri, w, rgb = (torch.cat(p) for p in zip(*parts))
    return PixelTable(tri, w, rgb)


def fit(table: PixelTable, faces: np.ndarray, n_vertices: int, iters: int = 2000,
        batch: int = 1 << 18, lr: float = 0.05, lr_final_ratio: float = 0.01,
        seed: int = 0) -> VertexColours:
    """L1 on sRGB (the hash manifold's loss), Adam, exponential learning-rate decay."""
    dev = table.tri.device
    model = VertexColours(faces, n_vertices).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, lr_final_ratio ** (1.0 / max(iters, 1)))
    gen = torch.Generator(device=dev).manual_seed(seed)
    n = len(table)
    for _ in range(iters):
        idx = torch.randint(0, n, (min(batch, n),), device=dev, generator=gen)
        pred = model(table.tri[idx].long(), table.w[idx].float())
        loss = (pred - table.rgb[idx].float() / 255.0).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def render(model: VertexColours, rast: Rasterizer, cam: Camera, ss: int) -> tuple[np.ndarray, np.ndarray]:
    """(sRGB (H, W, 3), coverage alpha (H, W)) float32; uncovered pixels are 0."""
    tri, w = tri_bary(rast, cam, ss)
    hit = tri >= 0
    covered = hit.any(-1)
    img = torch.zeros(cam.height, cam.width, 3, device=tri.device)
    if covered.any():
        img[covered] = model(tri[covered], w[covered])
    return img.cpu().numpy(), hit.float().mean(-1).cpu().numpy()
