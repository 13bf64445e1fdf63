"""Multi-resolution hash encoding (Instant-NGP), PyTorch reference implementation.

Parameter layout (identical to tiny-cuda-nn's HashGrid with Smoothstep interpolation, so either
implementation computes the same function from the same parameters):
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

import numpy as np
from dataclasses import dataclass, asdict

import torch
from torch import nn

PRIMES = (1, 2654435761, 805459861)


@dataclass(frozen=True)
class HashGridConfig:
    n_levels: int = 16
    n_features: int = 8
    log2_table: int = 22
    base_res: int = 16
    per_level_scale: float = 2.0 ** (9 / 16)
    smoothstep: bool = True

    @property
    def out_dim(self) -> int:
        return self.n_levels * self.n_features

    def to_dict(self) -> dict:
        return asdict(self)

    def level_layout(self) -> list[tuple[float, int, int, int]]:
        """Per level: (scale (a float32 value), resolution, params_in_level, offset)."""
        out, offset = [], 0
        for lvl in range(self.n_levels):
            scale = level_scale(lvl, self.per_level_scale, self.base_res)
            res = int(math.ceil(scale)) + 1
            size = min(((res ** 3 + 7) // 8) * 8, 2 ** self.log2_table)
            out.append((scale, res, size, offset))
            offset += size
        return out

    @property
    def n_params(self) -> int:
        _, _, size, off = self.level_layout()[-1]
        return off + size


def level_scale(level: int, per_level_scale: float, base_res: int) -> float:
    """The level's float32 scale, computed as tiny-cuda-nn does: exp2f(l * log2f(s)) * base - 1."""
    f = np.float32
    return float(f(f(np.exp2(f(level) * f(np.log2(f(per_level_scale))))) * f(base_res)) - f(1.0))


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
    lay = cfg.level_layout()
    scale = torch.tensor([s for s, _, _, _ in lay], dtype=torch.float32, device=device)
    res = torch.tensor([r for _, r, _, _ in lay], dtype=torch.int64, device=device)
    size = torch.tensor([n for _, _, n, _ in lay], dtype=torch.int64, device=device)
    offset = torch.tensor([o for _, _, _, o in lay], dtype=torch.int64, device=device)
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


_TCNN: dict = {}
_DEFAULT_BACKEND = "auto"


def select_backend(name: str) -> None:
    """Process-wide choice of the encoding implementation for new HashGrids: auto (Triton on
    CUDA, PyTorch otherwise), torch, triton or tcnn. tcnn is accepted only after its self-check
    passes in a child process (a crashing build must not take this process down)."""
    global _DEFAULT_BACKEND
    from .errors import DeviceError
    if name not in ("auto", "torch", "triton", "tcnn"):
        raise DeviceError(f"--grid-backend {name}: choose auto, torch, triton or tcnn.")
    if name == "tcnn":
        from .doctor import TCNN_CHECK, _child_ok
        ok, msg = _child_ok(TCNN_CHECK)
        if not ok:
            raise DeviceError(f"--grid-backend tcnn: tinycudann is not usable here ({msg}); "
                              "use --grid-backend auto.")
    if name == "triton" and not torch.cuda.is_available():
        raise DeviceError("--grid-backend triton needs a CUDA GPU; use --grid-backend auto.")
    _DEFAULT_BACKEND = name


def encode_tcnn(x: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig) -> torch.Tensor:
    """tiny-cuda-nn's HashGrid on our parameter tensor (same layout; see the module docstring).
    Only used when asked for (--grid-backend tcnn) and after `backend doctor`'s child-process
    self-check: some builds crash in their first forward."""
    import tinycudann as tcnn
    from tinycudann.modules import _module_function
    key = (cfg, x.device)
    if key not in _TCNN:
        _TCNN[key] = tcnn.Encoding(3, {
            "otype": "HashGrid", "n_levels": cfg.n_levels, "n_features_per_level": cfg.n_features,
            "log2_hashmap_size": cfg.log2_table, "base_resolution": cfg.base_res,
            "per_level_scale": cfg.per_level_scale,
            "interpolation": "Smoothstep" if cfg.smoothstep else "Linear"}, dtype=torch.float32)
    enc = _TCNN[key]
    if enc.params.numel() != table.numel():
        raise RuntimeError(f"tinycudann expects {enc.params.numel()} parameters, ours has {table.numel()}")
    return _module_function.apply(enc.native_tcnn_module, x.contiguous(), table.reshape(-1), enc.loss_scale)


class HashGrid(nn.Module):
    """Hash grid over an AABB; call with world-space points (N, 3)."""

    def __init__(self, cfg: HashGridConfig, aabb_min, aabb_max, backend: str | None = None):
        super().__init__()
        self.cfg = cfg
        lo = torch.as_tensor(aabb_min, dtype=torch.float32)
        hi = torch.as_tensor(aabb_max, dtype=torch.float32)
        pad = (hi - lo).clamp_min(1e-6) * 0.01           # keep surface points strictly inside
        self.register_buffer("lo", lo - pad)
        self.register_buffer("inv_extent", 1.0 / (hi - lo + 2 * pad))
        # Instant-NGP initialisation: uniform in [-1e-4, 1e-4].
        self.table = nn.Parameter(torch.empty(cfg.n_params, cfg.n_features).uniform_(-1e-4, 1e-4))
        self.backend = backend or _DEFAULT_BACKEND
        # Points in frame order (rendering) run faster with all levels per program on CUDA.
        self.coherent = False

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.lo) * self.inv_extent).clamp(0.0, 1.0)

    def forward(self, x_world: torch.Tensor) -> torch.Tensor:
        x = self.normalise(x_world.float())
        if self.backend == "tcnn":
            return encode_tcnn(x, self.table, self.cfg)
        if self._use_triton(x):
            from .hashgrid_triton import encode_triton
            return encode_triton(x, self.table, self.cfg, coherent=self.coherent)
        return encode_reference(x, self.table, self.cfg)

    def mean(self, x_world: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x_world (N, S, 3), w (N, S) -> (N, D): per row, the w-weighted sum of the S points'
        features (sub-samples of a pixel). Fused on CUDA when no gradient is needed."""
        N, S, _ = x_world.shape
        if S & (S - 1) == 0 and not torch.is_grad_enabled() and self.backend != "tcnn" and self._use_triton(x_world):
            from .hashgrid_triton import forward_mean
            return forward_mean(self.normalise(x_world.float()), w, self.table, self.cfg)
        f = self(x_world.reshape(N * S, 3)).reshape(N, S, -1)
        return (f * w[..., None].to(f.dtype)).sum(1)

    def _use_triton(self, x: torch.Tensor) -> bool:
        if self.backend == "torch" or not x.is_cuda:
            return False
        try:
            from . import hashgrid_triton  # noqa: F401
        except ImportError:
            if self.backend == "triton":
                raise
            return False
        return True
