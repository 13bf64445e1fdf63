"""Multi-resolution hash encoding (Instant-NGP): the plain PyTorch implementation.

The reference every fast path is tested against (see layout.py for the parameter layout), and
the CPU path (torch_encoder.py): the twin of each wrapper of the fused kernels (triton_kernels.py)
says which one it is. `encode_reference` is differentiable w.r.t. the table.
"""
from __future__ import annotations

import torch

from ..config import HashGridConfig
from .layout import PRIMES, levels, log2_cells


def fma_pos(x: torch.Tensor, scale) -> torch.Tensor:
    """float32 fma(x, scale, 0.5): the product of two float32 numbers is exact in float64, so one
    rounding at the end matches a fused multiply-add (as on the GPU)."""
    s = scale.double() if isinstance(scale, torch.Tensor) else float(scale)
    return (x.double() * s + 0.5).float()


def corner_indices_weights(x: torch.Tensor, scale: float, res: int, size: int, smoothstep: bool):
    """For normalised points x (N, 3): indices (N, 8) into the level table and weights (N, 8)."""
    pos = fma_pos(x, scale)
    base = torch.floor(pos)
    frac = pos - base
    if smoothstep:
        frac = frac * frac * (3.0 - 2.0 * frac)
    base = base.to(torch.int64)
    dense = res ** 3 <= size
    idx, w = [], []
    for c in range(8):
        bits = [(c >> d) & 1 for d in range(3)]
        g = [base[:, d] + bits[d] for d in range(3)]
        if dense:
            i = g[0] + g[1] * res + g[2] * (res * res)
        else:
            i = (g[0] * PRIMES[0]) ^ (g[1] * PRIMES[1]) ^ (g[2] * PRIMES[2])
            i = i & 0xFFFFFFFF
        idx.append(i % size)
        wc = torch.ones_like(frac[:, 0])
        for d in range(3):
            wc = wc * (frac[:, d] if bits[d] else 1.0 - frac[:, d])
        w.append(wc)
    return torch.stack(idx, 1), torch.stack(w, 1)


def _level_tensors(cfg: HashGridConfig, device) -> tuple[torch.Tensor, ...]:
    lay = levels(cfg)
    scale = torch.tensor([lv.scale for lv in lay], dtype=torch.float32, device=device)
    res, size, offset = (torch.tensor([getattr(lv, k) for lv in lay], dtype=torch.int64, device=device)
                         for k in ("res", "size", "offset"))
    return scale, res, size, offset


class _WeightedGather(torch.autograd.Function):
    """out[n, l] = sum_c w[n, l, c] * table[idx[n, l, c]]; the backward scatters with index_add_
    (much faster on CPU than the sort-based embedding backward)."""

    @staticmethod
    def forward(ctx, table, idx, w):
        f = table.index_select(0, idx.reshape(-1)).reshape(*idx.shape, table.shape[1])
        ctx.save_for_backward(idx, w)
        ctx.n_rows = table.shape[0]
        return (f * w[..., None].to(f.dtype)).sum(-2)

    @staticmethod
    def backward(ctx, g):
        idx, w = ctx.saved_tensors
        contrib = (g[..., None, :] * w[..., None].to(g.dtype)).reshape(-1, g.shape[-1])
        grad = torch.zeros(ctx.n_rows, g.shape[-1], dtype=g.dtype, device=g.device)
        grad.index_add_(0, idx.reshape(-1), contrib)
        return grad, None, None


def encode_reference(x: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig,
                     chunk: int = 1 << 16) -> torch.Tensor:
    """Plain PyTorch encoding of normalised points x (N, 3) -> (N, n_levels * n_features).
    All levels at once; the 8 corners come from per-axis terms combined by broadcasting
    (corner c = bx + 2 by + 4 bz), the same arithmetic as `corner_indices_weights`."""
    scale, res, size, offset = _level_tensors(cfg, x.device)
    dense = (res ** 3 <= size)[None, :, None, None, None]                # (1, L, 1, 1, 1)
    outs = []
    for k in range(0, x.shape[0], chunk):
        xc = x[k:k + chunk]
        pos = fma_pos(xc[:, None, :], scale[None, :, None])              # (N, L, 3)
        base = torch.floor(pos)
        frac = pos - base
        if cfg.smoothstep:
            frac = frac * frac * (3.0 - 2.0 * frac)
        g = base.to(torch.int64)
        g = torch.stack([g, g + 1], -1)                                  # (N, L, 3, 2): corner 0/1 per axis
        w = torch.stack([1.0 - frac, frac], -1)                          # (N, L, 3, 2)
        gx, gy, gz = g[:, :, 0, None, None, :], g[:, :, 1, None, :, None], g[:, :, 2, :, None, None]
        r = res[None, :, None, None, None]
        i_dense = gx + gy * r + gz * (r * r)                             # (N, L, 2z, 2y, 2x)
        i_hash = ((gx * PRIMES[0]) ^ (gy * PRIMES[1]) ^ (gz * PRIMES[2])) & 0xFFFFFFFF
        idx = torch.where(dense, i_dense, i_hash) % size[None, :, None, None, None] \
            + offset[None, :, None, None, None]
        wc = w[:, :, 0, None, None, :] * w[:, :, 1, None, :, None] * w[:, :, 2, :, None, None]
        n, L = xc.shape[0], scale.shape[0]
        outs.append(_WeightedGather.apply(table, idx.reshape(n, L, 8), wc.reshape(n, L, 8)).reshape(n, -1))
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def level_weights(log2_footprint: torch.Tensor, log2_cell: torch.Tensor, fade: float, bias: float) -> torch.Tensor:
    """Weight of every level for sub-samples of the given footprints (normalised units, log2):
    t = log2(cell) - log2(footprint) + bias octaves; 1 for t >= 0 (the footprint resolves the
    level's cells), smoothstep down to 0 at t = -fade; the coarsest level always 1 (a view
    can be no coarser than the whole scene). (..., ) -> (..., L)."""
    t = log2_cell.to(log2_footprint) - log2_footprint[..., None] + bias
    t[..., 0] = 0.0
    u = (1.0 + t * (1.0 / fade)).clamp(0.0, 1.0)      # as the kernels: times float32(1 / fade)
    return u * u * (3.0 - 2.0 * u)


def weigh_sub_samples(f: torch.Tensor, w: torch.Tensor | None, cfg: HashGridConfig,
                      log2_footprint: torch.Tensor | None = None, fade: float = 1.0,
                      bias: float = 0.0) -> torch.Tensor:
    """Per pixel, the w-weighted sum of its S sub-samples' features f (N, S, L, F), each level
    weighted by the sub-sample's footprint (level_weights; log2_footprint None: every level at
    weight 1; w None: every sub-sample at weight 1) -> (N, L*F). The fused kernels' reduction."""
    N, S, L, F = f.shape
    scale = (w.to(f.dtype) if w is not None else f.new_ones(N, S))[..., None].expand(N, S, L)
    if log2_footprint is not None:
        lw = level_weights(log2_footprint.float(), torch.from_numpy(log2_cells(cfg)), fade, bias)
        scale = scale * lw.to(f.dtype)
    return (f * scale[..., None]).sum(1).reshape(N, L * F)


def encode_pixels_reference(x: torch.Tensor, w: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig,
                            log2_footprint: torch.Tensor | None = None, fade: float = 1.0,
                            bias: float = 0.0) -> torch.Tensor:
    """Per pixel, the w-weighted sum over its S sub-samples of their level-weighted features:
    x (N, S, 3) normalised points, w (N, S), log2_footprint (N, S) or None (every level at
    weight 1) -> (N, L*F). Differentiable w.r.t. the table. Twin of triton_kernels.forward_pixels."""
    N, S, _ = x.shape
    f = encode_reference(x.reshape(N * S, 3), table, cfg).reshape(N, S, cfg.n_levels, cfg.n_features)
    return weigh_sub_samples(f, w, cfg, log2_footprint, fade, bias)


def encode_levels_reference(x: torch.Tensor, w: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig,
                            ids: list[int], log2_footprint: torch.Tensor | None = None, fade: float = 1.0,
                            bias: float = 0.0) -> torch.Tensor:
    """The columns of the levels `ids` of encode_pixels_reference, (N, len(ids) * F), without
    autograd. Twin of triton_kernels.forward_pixels on a level set."""
    with torch.no_grad():
        return _columns(encode_pixels_reference(x, w, table.detach(), cfg, log2_footprint, fade, bias), cfg, ids)


def encode_levels_backward_reference(x: torch.Tensor, w: torch.Tensor, grad_out: torch.Tensor,
                                     table: torch.Tensor, cfg: HashGridConfig, ids: list[int],
                                     log2_footprint: torch.Tensor | None = None, fade: float = 1.0,
                                     bias: float = 0.0) -> torch.Tensor:
    """Gradient of sum(encode_levels_reference(...) * grad_out) w.r.t. the rows of the levels
    `ids`, one level after the other. Twin of triton_kernels.backward_pixels on a compact level set."""
    with torch.enable_grad():
        tab = table.detach().requires_grad_()
        f = _columns(encode_pixels_reference(x, w, tab, cfg, log2_footprint, fade, bias), cfg, ids)
        torch.autograd.backward(f, grad_out.view_as(f))
    lay = levels(cfg)
    return torch.cat([tab.grad[lay[i].rows] for i in ids])


def _columns(f: torch.Tensor, cfg: HashGridConfig, ids: list[int]) -> torch.Tensor:
    """The levels `ids`' columns of per-pixel features f (N, L*F)."""
    idx = torch.tensor(ids, dtype=torch.int64, device=f.device)
    return f.view(-1, cfg.n_levels, cfg.n_features).index_select(1, idx).reshape(len(f), -1)
