"""`HashGrid`: the hash encoding as a torch module over the mesh's bounding box.

The implementation is an argument (`backend`), not process state: "auto" (Triton on CUDA
tensors, PyTorch otherwise), "torch", "triton" or "tcnn". All compute the same function from
the same parameters (layout.py); reference.py is the plain PyTorch twin of triton_kernels.py.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import HashGridConfig
from ..errors import DeviceError
from .layout import log2_cells, log2_footprint_offset, n_params, normalisation
from .reference import encode_pixels_reference, encode_reference, level_weights

BACKENDS = ("auto", "torch", "triton", "tcnn")


def check_backend(name: str) -> str:
    """`name` if this machine can run it, else DeviceError naming --grid-backend and the fix.
    tcnn is accepted only after its self-check passes in a child process."""
    if name not in BACKENDS:
        raise DeviceError(f"--grid-backend {name}: choose {', '.join(BACKENDS)}.")
    if name == "tcnn":
        from .tcnn import self_check
        ok, msg = self_check()
        if not ok:
            raise DeviceError(f"--grid-backend tcnn: tinycudann is not usable here ({msg}); "
                              "use --grid-backend auto.")
    if name == "triton" and not torch.cuda.is_available():
        raise DeviceError("--grid-backend triton needs a CUDA GPU; use --grid-backend auto.")
    return name


def _triton():
    """The Triton kernels module, or None where Triton cannot be imported."""
    try:
        from . import triton_kernels
    except ImportError:
        return None
    return triton_kernels


class HashGrid(nn.Module):
    """Hash grid over an AABB; call with world-space points (N, 3)."""

    def __init__(self, cfg: HashGridConfig, aabb_min, aabb_max, backend: str = "auto"):
        super().__init__()
        self.cfg = cfg
        lo, inv_extent = normalisation(aabb_min, aabb_max)
        self.register_buffer("lo", torch.from_numpy(lo))
        self.register_buffer("inv_extent", torch.from_numpy(inv_extent))
        self.log2_offset = log2_footprint_offset(inv_extent)
        # Instant-NGP initialisation: uniform in [-1e-4, 1e-4].
        self.table = nn.Parameter(torch.empty(n_params(cfg), cfg.n_features).uniform_(-1e-4, 1e-4))
        self.backend = backend

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.lo) * self.inv_extent).clamp(0.0, 1.0)

    def forward(self, x_world: torch.Tensor, coherent: bool = False) -> torch.Tensor:
        """World points (N, 3) -> features (N, L*F). `coherent`: the points come in frame (pixel)
        order, for which the CUDA path has a faster launch."""
        x = self.normalise(x_world.float())
        if self.backend == "tcnn":
            from .tcnn import encode_tcnn
            return encode_tcnn(x, self.table, self.cfg)
        kernels = self._kernels(x)
        if kernels is not None:
            return kernels.encode_triton(x, self.table, self.cfg, coherent=coherent)
        return encode_reference(x, self.table, self.cfg)

    def log2_footprint(self, footprint_world: torch.Tensor) -> torch.Tensor:
        """World-space footprints -> log2 in normalised units (layout.log2_footprint_offset: the
        normalisation is per axis)."""
        return torch.log2(footprint_world) + self.log2_offset

    def pixels(self, x_world: torch.Tensor, w: torch.Tensor, log2_footprint: torch.Tensor | None = None,
               fade: float = 1.0, bias: float = 0.0, coherent: bool = False) -> torch.Tensor:
        """Per pixel, the w-weighted sum of its sub-samples' features, each level weighted by the
        sub-sample's footprint (reference.encode_pixels_reference): x_world (N, S, 3), w (N, S),
        log2_footprint (N, S) normalised (see log2_footprint) or None (all levels at weight 1)
        -> (N, L*F). Fused on CUDA (forward and backward) for S a power of two."""
        N, S, _ = x_world.shape
        x = self.normalise(x_world.float())
        kernels = self._kernels(x)
        if self.backend != "tcnn" and kernels is not None and kernels.supports(S, kernels.FWD_LAUNCH):
            weights = kernels.Weights(w=w, log2_footprint=log2_footprint, fade=fade, bias=bias)
            return kernels.encode_pixels_triton(x, self.table, self.cfg, weights, coherent)
        if self.backend != "tcnn" and kernels is None:
            return encode_pixels_reference(x, w, self.table, self.cfg, log2_footprint, fade, bias)
        # tiny-cuda-nn, or a sub-sample count the fused kernels do not reduce: per point, then weights.
        f = self(x_world.reshape(N * S, 3), coherent).reshape(N, S, self.cfg.n_levels, -1)
        scale = w.to(f.dtype)[..., None].expand(N, S, self.cfg.n_levels)
        if log2_footprint is not None:
            lc = torch.from_numpy(log2_cells(self.cfg)).to(f.device)
            scale = scale * level_weights(log2_footprint.float(), lc, fade, bias)
        return (f * scale[..., None]).sum(1).reshape(N, -1)

    def _kernels(self, x: torch.Tensor):
        """The Triton kernels when this call should use them (CUDA tensors, backend auto/triton)."""
        if self.backend not in ("auto", "triton") or not x.is_cuda:
            return None
        kernels = _triton()
        if kernels is None and self.backend == "triton":
            raise DeviceError("--grid-backend triton: Triton cannot be imported; pip install triton.")
        return kernels
