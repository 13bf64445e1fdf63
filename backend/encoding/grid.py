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
from .layout import n_params
from .reference import encode_reference

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
        lo = torch.as_tensor(aabb_min, dtype=torch.float32)
        hi = torch.as_tensor(aabb_max, dtype=torch.float32)
        pad = (hi - lo).clamp_min(1e-6) * 0.01           # keep surface points strictly inside
        self.register_buffer("lo", lo - pad)
        self.register_buffer("inv_extent", 1.0 / (hi - lo + 2 * pad))
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

    def mean(self, x_world: torch.Tensor, w: torch.Tensor, coherent: bool = False) -> torch.Tensor:
        """x_world (N, S, 3), w (N, S) -> (N, D): per row, the w-weighted sum of the S points'
        features (sub-samples of a pixel). Fused on CUDA when no gradient is needed."""
        N, S, _ = x_world.shape
        kernels = self._kernels(x_world) if self.backend != "tcnn" else None
        if kernels is not None and S & (S - 1) == 0 and not torch.is_grad_enabled():
            return kernels.forward_mean(self.normalise(x_world.float()), w, self.table, self.cfg)
        f = self(x_world.reshape(N * S, 3), coherent).reshape(N, S, -1)
        return (f * w[..., None].to(f.dtype)).sum(1)

    def _kernels(self, x: torch.Tensor):
        """The Triton kernels when this call should use them (CUDA tensors, backend auto/triton)."""
        if self.backend not in ("auto", "triton") or not x.is_cuda:
            return None
        kernels = _triton()
        if kernels is None and self.backend == "triton":
            raise DeviceError("--grid-backend triton: Triton cannot be imported; pip install triton.")
        return kernels
