"""Footprints: how much surface a sub-sample sees, and the finest the photos saw at each place.

A sub-sample of camera `cam` at supersampling ss covers a square of side
    footprint = z / (f * ss),   f = sqrt(fx * fy),  z = the hit point's camera depth,
on the plane through the hit point parallel to the image (the pixel cone's width there; the
surface's inclination is not included). The hash grid weights its levels by it (encoding,
`level_weights`): levels whose cells the footprint does not resolve fade out.

`FootprintField` is a coarse 3D grid over the hash grid's normalised box holding, per cell, the
finest (smallest) footprint any training sub-sample had there, filled while the ray cache is built.
A render clamps its footprints to it, so a view closer than every photo uses the levels the
closest photo trained there and no finer ones (they hold only hash-collision noise there): close-ups
magnify gracefully instead of sparkling. Footprints are log2 in the grid's normalised units
(HashGrid.log2_footprint).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cameras import Camera
from .encoding import log2_footprint_offset

FIELD_RES = 128          # cells along the longest axis of the box (about 1 % of the scene each)


def camera_rows(cams: list[Camera]) -> torch.Tensor:
    """(V, 5) float32 per camera: the world-to-camera row giving depth (3 + 1) and 1 / sqrt(fx fy)."""
    rows = [[*c.world_to_camera[2, :4], 1.0 / np.sqrt(c.fx * c.fy)] for c in cams]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)


def footprints(xyz: torch.Tensor, rows: torch.Tensor, ss: int) -> torch.Tensor:
    """World-space footprints (N, S) of sub-samples xyz (N, S, 3) seen by the cameras rows (N, 5)
    (or one camera's row (5,)) at supersampling ss."""
    rows = rows.to(xyz.device).reshape(-1, 1, 5)
    z = (xyz * rows[..., :3]).sum(-1) + rows[..., 3]
    return z.clamp_min(1e-12) * rows[..., 4] / ss


def field_shape(inv_extent: np.ndarray, res: int = FIELD_RES) -> tuple[int, int, int]:
    """Cells per axis (x, y, z): about cubic in world units, `res` along the longest axis."""
    ext = 1.0 / np.asarray(inv_extent, np.float64)
    n = np.clip(np.round(res * ext / ext.max()), 4, res).astype(int)
    return int(n[0]), int(n[1]), int(n[2])


class FieldBuilder:
    """Accumulates the per-cell minimum of log2 footprints while the ray cache is built."""

    def __init__(self, lo: np.ndarray, inv_extent: np.ndarray, device: torch.device, res: int = FIELD_RES):
        self.shape = field_shape(inv_extent, res)
        self.lo = torch.as_tensor(lo, dtype=torch.float32, device=device)
        self.inv_extent = torch.as_tensor(inv_extent, dtype=torch.float32, device=device)
        self.log2_offset = log2_footprint_offset(inv_extent)
        self.cells = torch.full((int(np.prod(self.shape)),), torch.inf, dtype=torch.float32, device=device)

    def add(self, xyz: torch.Tensor, hit: torch.Tensor, footprint: torch.Tensor) -> None:
        """xyz (N, S, 3) world points, hit (N, S) bool, footprint (N, S) world units."""
        x = ((xyz[hit].float() - self.lo) * self.inv_extent).clamp(0.0, 1.0 - 1e-7)
        nx, ny, nz = self.shape
        i = (x * torch.tensor([nx, ny, nz], dtype=torch.float32, device=x.device)).long()
        flat = (i[:, 2] * ny + i[:, 1]) * nx + i[:, 0]
        self.cells.scatter_reduce_(0, flat, torch.log2(footprint[hit].float()) + self.log2_offset, reduce="amin")

    def finish(self) -> np.ndarray:
        """(nz, ny, nx) float32 log2 footprints. Each cell takes the minimum over its 3x3x3
        neighbourhood, so that a trilinear lookup at a training sub-sample never exceeds that
        sub-sample's own footprint (training and rendering at the photos' poses then weight the
        levels alike); cells no photo saw take the coarsest footprint seen."""
        nx, ny, nz = self.shape
        g = self.cells.reshape(1, 1, nz, ny, nx)
        if not torch.isfinite(g).any():
            return np.zeros((nz, ny, nx), np.float32)
        g = -F.max_pool3d(-g, 3, stride=1, padding=1)
        g = torch.where(torch.isfinite(g), g, g[torch.isfinite(g)].max())
        return g[0, 0].cpu().numpy().astype(np.float32)


class FootprintField(nn.Module):
    """The finest log2 footprint the photos observed, looked up trilinearly at normalised points.
    Empty (no clamp) until `set` is called; travels in the model's state (checkpoints)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("log2", torch.zeros(0, 0, 0), persistent=False)

    def set(self, log2_cells: np.ndarray | torch.Tensor) -> None:
        self.log2 = torch.as_tensor(log2_cells, dtype=torch.float32).to(self.log2.device)

    @property
    def empty(self) -> bool:
        return self.log2.numel() == 0

    def lookup(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., 3) normalised points in [0, 1] -> (...) log2 footprint (cell-centred trilinear)."""
        shape = x.shape[:-1]
        grid = (x.reshape(1, 1, 1, -1, 3).float() * 2.0 - 1.0).to(self.log2.device)
        v = F.grid_sample(self.log2[None, None], grid, mode="bilinear", padding_mode="border",
                          align_corners=False)
        return v.reshape(shape).to(x.device)

    def clamp(self, x: torch.Tensor, log2_footprint: torch.Tensor) -> torch.Tensor:
        """Footprints no finer than what the photos observed at x."""
        return log2_footprint if self.empty else torch.maximum(log2_footprint, self.lookup(x))

    # Saved with the model (the field's size depends on the scene, so not as a fixed-size buffer).
    def get_extra_state(self) -> torch.Tensor:
        return self.log2.detach().cpu()

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.set(state)
