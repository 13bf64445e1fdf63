"""Fused Triton kernels for the multi-resolution hash encoding and their launches (no autograd:
triton_encoder.py makes them the differentiable CUDA encoder).

Computes exactly the function of `reference.encode_reference` (its plain PyTorch twin; each wrapper
below names its twin): same level layout, corner indices, float32 rounding of
`pos = fma(x, scale, 0.5)` (one rounding, as tiny-cuda-nn), same smoothstep and weight products
(FMA contraction is otherwise switched off so the products round as the reference's).

Work split: one program encodes BLOCK points at one level (grid = point blocks x levels, blocks
of a level launched together). With random points a hashed level's table (134 MB at 2^22 x 8
float32) is what all running programs gather from at that moment, so the 50 MB L2 catches part
of the reads; iterating all levels per point would gather from all tables at once. For points
in frame order (`coherent=True`) that alternative wins: neighbouring pixels share most rows, x
is read once and whole 512-byte output rows are written.
The backward recomputes indices and weights and scatters into the gradient table with fp32
atomics (no sorting: the targets are almost all distinct for random points).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..config import HashGridConfig
from .encoder import Weights
from .layout import levels, log2_cells, n_params

# Hash primes of tiny-cuda-nn (uint32 arithmetic), as in layout.PRIMES.
_P1: tl.constexpr = tl.constexpr(2654435761)
_P2: tl.constexpr = tl.constexpr(805459861)


# Training uses "atomic" only; the others are bench_grid_backward.py's measurement variants (benchmarks/NOTES.md).
SCATTERS = ("atomic", "segmented", "store")


@dataclass(frozen=True)
class Launch:
    block: int = 128        # points per program
    num_warps: int = 4
    per_level: bool = True  # grid over (point blocks, levels); False: all levels in one program
    # Backward only. "atomic": one add per point and corner. "segmented": on levels of at most
    # `segment_rows` rows, runs of consecutive points with the same corner row are summed on the
    # chip first (one add per run; meant for points sorted in space). "store": plain
    # stores, a WRONG gradient: what the atomics cost, for bench_grid_backward only.
    scatter: str = "atomic"
    segment_rows: int = 2 ** 31 - 1


# Measured on an H100 at the reference settings, 2^22 points (benchmarks/NOTES.md).
FWD_LAUNCH = Launch(128, 8)                        # random order: 439 M points/s
BWD_LAUNCH = Launch(128, 8)                        # random order: 193 M points/s
COHERENT_LAUNCH = Launch(128, 8, per_level=False)  # frame order: 1355 fwd (879 per level)


@triton.jit
def _level_corners(x, y, z, scale, SMOOTH: tl.constexpr):
    """Grid cell (int32) and interpolation fractions of one level, rounded like the reference."""
    px = tl.fma(x, scale, 0.5)
    py = tl.fma(y, scale, 0.5)
    pz = tl.fma(z, scale, 0.5)
    bx = tl.floor(px)
    by = tl.floor(py)
    bz = tl.floor(pz)
    fx = px - bx
    fy = py - by
    fz = pz - bz
    if SMOOTH:
        fx = fx * fx * (3.0 - 2.0 * fx)
        fy = fy * fy * (3.0 - 2.0 * fy)
        fz = fz * fz * (3.0 - 2.0 * fz)
    return bx.to(tl.int32), by.to(tl.int32), bz.to(tl.int32), fx, fy, fz


@triton.jit
def _corner(c: tl.constexpr, ix, iy, iz, fx, fy, fz, res, size, offset, hashed):
    """Row (int64, into the flat table) and weight of corner c (bit d of c = +1 along axis d)."""
    gx = ix + (c & 1)
    gy = iy + ((c >> 1) & 1)
    gz = iz + ((c >> 2) & 1)
    if hashed:
        h = gx.to(tl.uint32) ^ (gy.to(tl.uint32) * _P1) ^ (gz.to(tl.uint32) * _P2)
        idx = (h & (size - 1).to(tl.uint32)).to(tl.int64)  # hashed levels have size 2^log2_table
    else:
        idx = ((gx + gy * res + gz * (res * res)) % size).to(tl.int64)
    wx = fx if (c & 1) else 1.0 - fx
    wy = fy if ((c >> 1) & 1) else 1.0 - fy
    wz = fz if ((c >> 2) & 1) else 1.0 - fz
    return offset + idx, wx * wy * wz


@triton.jit
def _level_features(lvl, x, y, z, rows, mask, table_ptr, scale_ptr, meta_ptr,
                    F: tl.constexpr, SMOOTH: tl.constexpr):
    """(BLOCK, F) float32 features of one level."""
    scale = tl.load(scale_ptr + lvl)
    res = tl.load(meta_ptr + lvl * 4 + 0).to(tl.int32)
    size = tl.load(meta_ptr + lvl * 4 + 1).to(tl.int32)
    offset = tl.load(meta_ptr + lvl * 4 + 2)
    hashed = tl.load(meta_ptr + lvl * 4 + 3) != 0
    ix, iy, iz, fx, fy, fz = _level_corners(x, y, z, scale, SMOOTH)
    feat = tl.arange(0, F)
    acc = tl.zeros((rows.shape[0], F), dtype=tl.float32)
    for c in tl.static_range(8):
        row, w = _corner(c, ix, iy, iz, fx, fy, fz, res, size, offset, hashed)
        v = tl.load(table_ptr + row[:, None] * F + feat[None, :], mask=mask[:, None], other=0.0)
        acc += v.to(tl.float32) * w[:, None]
    return acc


@triton.jit
def _level_scale(lvl, wt, lf, lcell_ptr, fade_inv, bias, on_level, FOOT: tl.constexpr):
    """Per point: its sub-sample weight times, with footprints, the level weight (reference.level_weights).
    `on_level`: the index of the grid's coarsest level among the levels computed (-1: not among them)."""
    if FOOT:
        t = tl.load(lcell_ptr + lvl) - lf + bias
        t = tl.where(lvl == on_level, 0.0, t)   # the coarsest level is always on
        u = tl.minimum(tl.maximum(1.0 + t * fade_inv, 0.0), 1.0)
        return wt * (u * u * (3.0 - 2.0 * u))
    else:
        return wt


@triton.jit
def _load_points(x_ptr, w_ptr, lf_ptr, rows, mask, HAS_W: tl.constexpr, FOOT: tl.constexpr):
    x = tl.load(x_ptr + rows * 3 + 0, mask=mask, other=0.0)
    y = tl.load(x_ptr + rows * 3 + 1, mask=mask, other=0.0)
    z = tl.load(x_ptr + rows * 3 + 2, mask=mask, other=0.0)
    if HAS_W:
        wt = tl.load(w_ptr + rows, mask=mask, other=0.0)
    else:
        wt = tl.full(rows.shape, 1.0, tl.float32)
    if FOOT:
        lf = tl.load(lf_ptr + rows, mask=mask, other=0.0)
    else:
        lf = tl.zeros(rows.shape, tl.float32)
    return x, y, z, wt, lf


@triton.jit
def _level_fwd(lvl, x, y, z, wt, lf, rows, mask, table_ptr, out_ptr, scale_ptr, meta_ptr, lcell_ptr,
               NPIX, fade_inv, bias, on_level, S: tl.constexpr, F: tl.constexpr, L: tl.constexpr,
               BLOCK: tl.constexpr, SMOOTH: tl.constexpr, FOOT: tl.constexpr):
    s = _level_scale(lvl, wt, lf, lcell_ptr, fade_inv, bias, on_level, FOOT)
    # Points at weight 0 (levels finer than their footprint) read nothing from the table.
    acc = _level_features(lvl, x, y, z, rows, mask & (s != 0.0), table_ptr, scale_ptr, meta_ptr, F, SMOOTH)
    feat = tl.arange(0, F)
    if S == 1:
        red = acc * s[:, None]
        pix = rows
    else:   # the S sub-samples of a pixel are consecutive rows: sum them on the chip
        red = tl.sum(tl.reshape(acc * s[:, None], (BLOCK // S, S, F)), axis=1)
        pix = tl.program_id(0) * (BLOCK // S) + tl.arange(0, BLOCK // S)
    out = out_ptr + pix.to(tl.int64)[:, None] * (L * F) + lvl * F + feat[None, :]
    tl.store(out, red, mask=(pix < NPIX)[:, None])


@triton.jit
def _fwd_kernel(x_ptr, w_ptr, lf_ptr, table_ptr, out_ptr, scale_ptr, meta_ptr, lcell_ptr, NPIX,
                fade_inv, bias, on_level, S: tl.constexpr, F: tl.constexpr, L: tl.constexpr, BLOCK: tl.constexpr,
                SMOOTH: tl.constexpr, PER_LEVEL: tl.constexpr, HAS_W: tl.constexpr, FOOT: tl.constexpr):
    """Per pixel, the sum over its S sub-samples (rows p*S .. p*S+S-1) of w * level weight *
    features: the sub-samples' features never leave the chip (S x fewer bytes written)."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = rows < NPIX * S
    x, y, z, wt, lf = _load_points(x_ptr, w_ptr, lf_ptr, rows, mask, HAS_W, FOOT)
    if PER_LEVEL:
        _level_fwd(tl.program_id(1), x, y, z, wt, lf, rows, mask, table_ptr, out_ptr, scale_ptr, meta_ptr,
                   lcell_ptr, NPIX, fade_inv, bias, on_level, S, F, L, BLOCK, SMOOTH, FOOT)
    else:
        for lvl in range(L):
            _level_fwd(lvl, x, y, z, wt, lf, rows, mask, table_ptr, out_ptr, scale_ptr, meta_ptr,
                       lcell_ptr, NPIX, fade_inv, bias, on_level, S, F, L, BLOCK, SMOOTH, FOOT)


@triton.jit
def _run_add(f1, v1, f2, v2):
    # Segmented sum: f marks the first point of a run; a run's sum restarts there.
    return f1 | f2, tl.where(f2 != 0, v2, v1 + v2)


@triton.jit
def _run_sums(row, v):
    """Runs of equal consecutive rows among the block's points: per point, the sum of v (BLOCK, F)
    over its run up to it, and whether it is the run's last point (which holds the run's sum)."""
    i = tl.arange(0, row.shape[0])
    prev = tl.gather(row, tl.maximum(i - 1, 0), 0)
    nxt = tl.gather(row, tl.minimum(i + 1, row.shape[0] - 1), 0)
    first = ((i == 0) | (prev != row)).to(tl.int32)
    _, total = tl.associative_scan((tl.broadcast_to(first[:, None], v.shape), v), 0, _run_add)
    return total, (i == row.shape[0] - 1) | (nxt != row)


@triton.jit
def _level_bwd(lvl, x, y, z, wt, lf, rows, mask, gout_ptr, gtable_ptr, scale_ptr, meta_ptr, lcell_ptr,
               fade_inv, bias, on_level, seg_rows, S: tl.constexpr, F: tl.constexpr, L: tl.constexpr,
               SMOOTH: tl.constexpr, FOOT: tl.constexpr, SCATTER: tl.constexpr):
    s = _level_scale(lvl, wt, lf, lcell_ptr, fade_inv, bias, on_level, FOOT)
    m = mask & (s != 0.0)
    scale = tl.load(scale_ptr + lvl)
    res = tl.load(meta_ptr + lvl * 4 + 0).to(tl.int32)
    size = tl.load(meta_ptr + lvl * 4 + 1).to(tl.int32)
    offset = tl.load(meta_ptr + lvl * 4 + 2)
    hashed = tl.load(meta_ptr + lvl * 4 + 3) != 0
    ix, iy, iz, fx, fy, fz = _level_corners(x, y, z, scale, SMOOTH)
    feat = tl.arange(0, F)
    pix = rows // S
    g = tl.load(gout_ptr + pix.to(tl.int64)[:, None] * (L * F) + lvl * F + feat[None, :],
                mask=m[:, None], other=0.0).to(tl.float32) * s[:, None]
    for c in tl.static_range(8):
        row, w = _corner(c, ix, iy, iz, fx, fy, fz, res, size, offset, hashed)
        v = g * w[:, None]
        ptrs = gtable_ptr + row[:, None] * F + feat[None, :]
        if SCATTER == 2:
            tl.store(ptrs, v, mask=m[:, None])
        else:
            add = m
            if SCATTER == 1:
                if size <= seg_rows:
                    # Every point's row is valid (masked ones read x = 0, add 0): a run's last
                    # point adds the run's sum, whichever of its points are masked.
                    v, add = _run_sums(row, v)
            # Relaxed: the sums need atomicity only, no ordering; result unused -> red.v4.f32.
            tl.atomic_add(ptrs, v, mask=add[:, None], sem="relaxed")


@triton.jit
def _bwd_kernel(x_ptr, w_ptr, lf_ptr, gout_ptr, gtable_ptr, scale_ptr, meta_ptr, lcell_ptr, N,
                fade_inv, bias, on_level, seg_rows, S: tl.constexpr, F: tl.constexpr, L: tl.constexpr,
                BLOCK: tl.constexpr, SMOOTH: tl.constexpr, PER_LEVEL: tl.constexpr, HAS_W: tl.constexpr,
                FOOT: tl.constexpr, SCATTER: tl.constexpr):
    """Gradient of the forward's output w.r.t. the table: every sub-sample scatters its pixel's
    output gradient times its weights into the 8 corner rows of each level."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = rows < N
    x, y, z, wt, lf = _load_points(x_ptr, w_ptr, lf_ptr, rows, mask, HAS_W, FOOT)
    if PER_LEVEL:
        _level_bwd(tl.program_id(1), x, y, z, wt, lf, rows, mask, gout_ptr, gtable_ptr, scale_ptr,
                   meta_ptr, lcell_ptr, fade_inv, bias, on_level, seg_rows, S, F, L, SMOOTH, FOOT, SCATTER)
    else:
        for lvl in range(L):
            _level_bwd(lvl, x, y, z, wt, lf, rows, mask, gout_ptr, gtable_ptr, scale_ptr, meta_ptr,
                       lcell_ptr, fade_inv, bias, on_level, seg_rows, S, F, L, SMOOTH, FOOT, SCATTER)


_META_CACHE: dict[tuple[HashGridConfig, torch.device], tuple[torch.Tensor, ...]] = {}


def level_tensors(cfg: HashGridConfig, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per-level float32 scale (L,), int64 (res, size, offset, hashed) rows (L, 4) and float32
    log2 cell size (L,) (layout.log2_cells)."""
    key = (cfg, device)
    if key not in _META_CACHE:
        scales, meta = [], []
        for lv in levels(cfg):
            scales.append(lv.scale)
            meta.append((lv.res, lv.size, lv.offset, int(lv.hashed)))
        _META_CACHE[key] = (torch.tensor(scales, dtype=torch.float32, device=device),
                            torch.tensor(meta, dtype=torch.int64, device=device),
                            torch.from_numpy(log2_cells(cfg)).to(device))
    return _META_CACHE[key]


@dataclass(frozen=True)
class LevelSet:
    """Some of a grid's levels, computed alone (level-parallel training: each process owns some
    levels). Per level, in the order computed (the output's level columns): float32 scale, int64
    (res, size, offset, hashed) with offsets into the table read (forward) or written (backward),
    float32 log2 cell size; `on`: the index of the grid's coarsest level, which is always at
    weight 1, or -1 when it is not in the set; `rows`: the rows of the table written by the
    backward. The same function as the full grid's, column by column."""
    scale: torch.Tensor
    meta: torch.Tensor
    lcell: torch.Tensor
    on: int
    rows: int

    @property
    def n(self) -> int:
        return int(self.scale.shape[0])


def level_set(cfg: HashGridConfig, ids: list[int], device: torch.device, compact: bool) -> LevelSet:
    """The levels `ids` (increasing) of `cfg`; `compact`: their rows packed one after the other
    (a table of only these levels, as the backward writes it), else the full table's offsets."""
    scale, meta, lcell = level_tensors(cfg, device)
    idx = torch.tensor(ids, dtype=torch.int64, device=device)
    meta = meta[idx].clone()
    sizes = meta[:, 1]
    if compact:
        meta[:, 2] = torch.cumsum(sizes, 0) - sizes
    rows = int(sizes.sum()) if compact else n_params(cfg)
    return LevelSet(scale[idx].contiguous(), meta.contiguous(), lcell[idx].contiguous(),
                    ids.index(0) if 0 in ids else -1, rows)


def _levels(cfg: HashGridConfig, device, lset: LevelSet | None) -> tuple:
    """(scale, meta, lcell, on, L) of the whole grid or of a level set."""
    if lset is None:
        return (*level_tensors(cfg, device), 0, cfg.n_levels)
    return lset.scale, lset.meta, lset.lcell, lset.on, lset.n


def _check(x: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig) -> None:
    F = cfg.n_features
    if F & (F - 1) or F > 64:
        raise ValueError(f"n_features must be a power of two <= 64, got {F}")
    if cfg.log2_table > 30:
        raise ValueError("log2_table > 30 overflows the kernels' int32 dense indices")
    if x.ndim != 2 or x.shape[1] != 3 or x.dtype != torch.float32:
        raise ValueError(f"x must be (N, 3) float32, got {tuple(x.shape)} {x.dtype}")
    if 3 * x.shape[0] >= 2 ** 31:
        raise ValueError("more than 715 M points per call overflows the int32 input offsets")
    if tuple(table.shape) != (n_params(cfg), F):
        raise ValueError(f"table must be ({n_params(cfg)}, {F}), got {tuple(table.shape)}")
    if table.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"unsupported table dtype {table.dtype}")


def _grid(n: int, n_levels: int, launch: Launch) -> tuple[int, ...]:
    nb = triton.cdiv(n, launch.block)
    return (nb, n_levels) if launch.per_level else (nb,)


def _weight_args(weights: Weights, device) -> tuple:
    """Kernel arguments: w, lf pointers (a dummy where absent), fade_inv, bias, HAS_W, FOOT."""
    dummy = torch.empty(1, dtype=torch.float32, device=device)
    w = weights.w.float().contiguous().reshape(-1) if weights.w is not None else dummy
    lf = weights.log2_footprint
    foot = lf is not None
    lf = lf.float().contiguous().reshape(-1) if foot else dummy
    return (w, lf, float(1.0 / weights.fade) if foot else 1.0, float(weights.bias), weights.w is not None, foot)


def supports(S: int, launch: Launch) -> bool:
    """The pixel kernels reduce S sub-samples on the chip: S a power of two dividing the block."""
    return S & (S - 1) == 0 and launch.block % S == 0


def forward_pixels(x: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig, weights: Weights = Weights(),
                   launch: Launch = FWD_LAUNCH, levels: LevelSet | None = None) -> torch.Tensor:
    """x (N, S, 3) normalised points -> (N, L*F): per pixel, the sum over its S sub-samples of
    w * level weight * encode(x) (twin: reference.encode_pixels_reference); no autograd. `levels`:
    only those levels' columns, (N, levels.n * F) (twin: reference.encode_levels_reference)."""
    n, S, _ = x.shape
    if not supports(S, launch):
        raise ValueError(f"{S} sub-samples per pixel: the fused kernels need a power of two <= {launch.block}")
    _check(x.reshape(-1, 3), table, cfg)
    scale, meta, lcell, on, L = _levels(cfg, x.device, levels)
    out = torch.empty(n, L * cfg.n_features, dtype=torch.float32, device=x.device)
    if n == 0:
        return out
    w, lf, fade_inv, bias, has_w, foot = _weight_args(weights, x.device)
    _fwd_kernel[_grid(n * S, L, launch)](
        x.contiguous(), w, lf, table.contiguous(), out, scale, meta, lcell, n, fade_inv, bias, on, S=S,
        F=cfg.n_features, L=L, BLOCK=launch.block, SMOOTH=cfg.smoothstep,
        PER_LEVEL=launch.per_level, HAS_W=has_w, FOOT=foot, num_warps=launch.num_warps,
        enable_fp_fusion=False)
    return out


def backward_pixels(x: torch.Tensor, grad_out: torch.Tensor, cfg: HashGridConfig, weights: Weights = Weights(),
                    launch: Launch = BWD_LAUNCH, levels: LevelSet | None = None) -> torch.Tensor:
    """Gradient of sum(forward_pixels(x) * grad_out) w.r.t. the table: (P, F) float32 (with
    `levels`: grad_out (N, levels.n * F), the gradient of its levels' rows, (levels.rows, F); twin:
    reference.encode_levels_backward_reference with a compact level set)."""
    n, S, _ = x.shape
    scale, meta, lcell, on, L = _levels(cfg, x.device, levels)
    rows = n_params(cfg) if levels is None else levels.rows
    gtable = torch.zeros(rows, cfg.n_features, dtype=torch.float32, device=x.device)
    if n == 0:
        return gtable
    w, lf, fade_inv, bias, has_w, foot = _weight_args(weights, x.device)
    _bwd_kernel[_grid(n * S, L, launch)](
        x.contiguous(), w, lf, grad_out.contiguous(), gtable, scale, meta, lcell, n * S, fade_inv, bias, on,
        launch.segment_rows, S=S, F=cfg.n_features, L=L, BLOCK=launch.block, SMOOTH=cfg.smoothstep,
        PER_LEVEL=launch.per_level, HAS_W=has_w, FOOT=foot, SCATTER=SCATTERS.index(launch.scatter),
        num_warps=launch.num_warps, enable_fp_fusion=False)
    return gtable


def forward(x: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig,
            launch: Launch = FWD_LAUNCH) -> torch.Tensor:
    """Encode x (N, 3) -> (N, L*F) float32 (twin: reference.encode_reference); no autograd."""
    return forward_pixels(x.reshape(-1, 1, 3), table, cfg, Weights(), launch)


def forward_mean(x: torch.Tensor, w: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig,
                 launch: Launch = COHERENT_LAUNCH) -> torch.Tensor:
    """x (N, S, 3) normalised points, w (N, S) weights -> (N, L*F) sum over S of w * encode(x);
    S a power of two (sub-samples of ss = 1, 2, 4); no autograd."""
    return forward_pixels(x, table, cfg, Weights(w=w), launch)


def backward(x: torch.Tensor, grad_out: torch.Tensor, cfg: HashGridConfig,
             launch: Launch = BWD_LAUNCH) -> torch.Tensor:
    """Gradient of sum(encode(x) * grad_out) w.r.t. the table: (P, F) float32."""
    return backward_pixels(x.reshape(-1, 1, 3), grad_out, cfg, Weights(), launch)
