"""The hash grid's parameter layout, shared by every implementation (numpy only).

Identical to tiny-cuda-nn's HashGrid with Smoothstep interpolation, so every implementation
computes the same function from the same parameters:
  * inputs are normalised to [0, 1]^3 by the mesh AABB (per axis) before encoding;
  * level l has scale_l = exp2(l * log2(per_level_scale)) * base_res - 1 (float32 arithmetic)
    and resolution_l = ceil(scale_l) + 1; a point x maps to pos = fma(x, scale_l, 0.5) (one
    rounding), corner = floor(pos), fraction = pos - corner;
  * the level holds P_l = min(next_multiple_of_8(resolution_l**3), 2**log2_table) entries;
    corners index densely (x + y*res + z*res^2) when resolution_l**3 <= P_l, otherwise by the
    hash (x*1 ^ y*2654435761 ^ z*805459861) mod P_l (uint32 arithmetic);
  * weights use smoothstep w = f*f*(3 - 2f) per axis; the output is level-major
    (feature index = level * n_features + f);
  * all levels' tables are concatenated in one flat parameter of shape (sum P_l, n_features).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import HashGridConfig

PRIMES = (1, 2654435761, 805459861)      # tiny-cuda-nn's spatial hash, uint32 arithmetic


@dataclass(frozen=True)
class Level:
    scale: float        # a float32 value
    res: int            # grid points per axis
    size: int           # table rows of the level
    offset: int         # first row of the level in the flat table

    @property
    def hashed(self) -> bool:
        return self.res ** 3 > self.size

    @property
    def rows(self) -> slice:
        """The level's rows of the flat table."""
        return slice(self.offset, self.offset + self.size)


def level_scale(level: int, per_level_scale: float, base_res: int) -> float:
    """The level's float32 scale, computed as tiny-cuda-nn does: exp2f(l * log2f(s)) * base - 1."""
    f = np.float32
    return float(f(f(np.exp2(f(level) * f(np.log2(f(per_level_scale))))) * f(base_res)) - f(1.0))


def levels(cfg: HashGridConfig) -> list[Level]:
    out, offset = [], 0
    for lvl in range(cfg.n_levels):
        scale = level_scale(lvl, cfg.per_level_scale, cfg.base_res)
        res = int(math.ceil(scale)) + 1
        size = min(((res ** 3 + 7) // 8) * 8, 2 ** cfg.log2_table)
        out.append(Level(scale, res, size, offset))
        offset += size
    return out


def n_params(cfg: HashGridConfig) -> int:
    """Rows of the flat table (all levels)."""
    last = levels(cfg)[-1]
    return last.offset + last.size


def normalisation(aabb_min, aabb_max) -> tuple[np.ndarray, np.ndarray]:
    """(lo, inv_extent): a world point x maps to (x - lo) * inv_extent in [0, 1]^3. The mesh AABB is
    padded by 1 % per side so that surface points lie strictly inside."""
    lo = np.asarray(aabb_min, np.float32)
    hi = np.asarray(aabb_max, np.float32)
    pad = np.maximum(hi - lo, np.float32(1e-6)) * np.float32(0.01)
    return lo - pad, np.float32(1.0) / (hi - lo + 2 * pad)


def log2_footprint_offset(inv_extent) -> float:
    """What turns log2 of a world-space footprint into log2 in normalised units: the mean of the
    axes' log2 scales (the normalisation is per axis). An axis shorter than a quarter of the
    longest counts as a quarter: a flat scene (a wall, a plane) has a near-zero extent across it,
    whose enormous scale would otherwise make every footprint look coarse and fade out the levels
    the photos resolve along the surface."""
    ext = 1.0 / np.asarray(inv_extent, np.float64)
    ext = np.maximum(ext, ext.max() / 4.0)
    return float(-np.log2(ext).mean())


def log2_cells(cfg: HashGridConfig) -> np.ndarray:
    """(L,) log2 of each level's cell size in normalised units (1 / scale)."""
    return -np.log2(np.array([lv.scale for lv in levels(cfg)], np.float64)).astype(np.float32)
