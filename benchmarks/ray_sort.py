"""Sorting a training batch's rays along a Morton curve, for bench_grid_backward.py only.

A batch's loss and gradients are sums over its rays, so their order changes nothing but the
rounding of those sums; sorted in space, neighbouring rays share hash-grid corners on the coarse
and middle levels. Measured on an H100 (benchmarks/NOTES.md): it does not pay, so training keeps
the shuffled order the ray cache gives.
"""
from __future__ import annotations

import torch

MORTON_BITS = 10                        # per axis: a 1024^3 grid over the batch's bounding box


def _spread3(a: torch.Tensor) -> torch.Tensor:
    """The low 21 bits of a (int64) moved to every third bit."""
    a = a & 0x1FFFFF
    a = (a | (a << 32)) & 0x1F00000000FFFF
    a = (a | (a << 16)) & 0x1F0000FF0000FF
    a = (a | (a << 8)) & 0x100F00F00F00F00F
    a = (a | (a << 4)) & 0x10C30C30C30C30C3
    return (a | (a << 2)) & 0x1249249249249249


def morton_codes(p: torch.Tensor, bits: int = MORTON_BITS) -> torch.Tensor:
    """Points p (N, 3) -> (N,) int64 Morton codes of their cells in a 2^bits grid per axis over
    the points' bounding box (bits <= 21)."""
    lo, hi = p.amin(0), p.amax(0)
    q = ((p - lo) * (2 ** bits / (hi - lo).clamp_min(1e-30))).to(torch.int64).clamp_max(2 ** bits - 1)
    return _spread3(q[:, 0]) | (_spread3(q[:, 1]) << 1) | (_spread3(q[:, 2]) << 2)


def spatial_order(xyz: torch.Tensor, mask: torch.Tensor, bits: int = MORTON_BITS) -> torch.Tensor:
    """The permutation (N,) int64 that sorts rays of sub-samples xyz (N, S, 3), mask (N, S) along
    a Morton curve of their first hit sub-sample (sub-sample 0 for a ray with none)."""
    if len(xyz) == 0:
        return torch.zeros(0, dtype=torch.int64, device=xyz.device)
    first = mask.to(torch.uint8).argmax(1)
    p = xyz[torch.arange(len(xyz), device=xyz.device), first]
    code = morton_codes(p.float(), bits)
    return torch.argsort(code.int() if bits <= 10 else code)      # 32-bit keys sort faster


def sort_batch(batch: dict[str, torch.Tensor], bits: int = MORTON_BITS) -> dict[str, torch.Tensor]:
    """The batch (every field one row per ray) with its rays in spatial_order."""
    perm = spatial_order(batch["xyz"], batch["mask"], bits)
    return {k: v[perm] for k, v in batch.items()}
