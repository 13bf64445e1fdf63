"""`HashGrid`: the hash encoding as a torch module over the mesh's bounding box.

The implementation is an argument (`backend`, a name of registry.py), not process state: "auto"
(Triton on CUDA tensors, PyTorch otherwise), "torch", "triton" or "tcnn", picked for the device
of the points. All compute the same function from the same parameters (layout.py).
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import HashGridConfig
from .encoder import Encoder, Weights
from .layout import levels, log2_footprint_offset, n_params, normalisation
from .registry import encoder_class


class HashGrid(nn.Module):
    """Hash grid over an AABB; call with world-space points (N, 3). `levels`: the layout of its
    levels (layout.Level: resolution, rows of the table)."""

    def __init__(self, cfg: HashGridConfig, aabb_min, aabb_max, backend: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.levels = levels(cfg)
        lo, inv_extent = normalisation(aabb_min, aabb_max)
        self.register_buffer("lo", torch.from_numpy(lo))
        self.register_buffer("inv_extent", torch.from_numpy(inv_extent))
        self.log2_offset = log2_footprint_offset(inv_extent)
        # Instant-NGP initialisation: uniform in [-1e-4, 1e-4].
        self.table = nn.Parameter(torch.empty(n_params(cfg), cfg.n_features).uniform_(-1e-4, 1e-4))
        self.backend = backend
        self._encoders: dict[tuple[str, str], Encoder] = {}

    def encoder(self, device: torch.device) -> Encoder:
        """The implementation of `backend` for tensors on `device`."""
        key = (self.backend, device.type)
        if key not in self._encoders:
            self._encoders[key] = encoder_class(self.backend, device)(self.cfg)
        return self._encoders[key]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.lo) * self.inv_extent).clamp(0.0, 1.0)

    def forward(self, x_world: torch.Tensor, coherent: bool = False) -> torch.Tensor:
        """World points (N, 3) -> features (N, L*F). `coherent`: the points come in frame (pixel)
        order, for which the CUDA path has a faster launch."""
        x = self.normalise(x_world.float())
        return self.encoder(x.device).points(x, self.table, coherent)

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
        x = self.normalise(x_world.float())
        return self.encoder(x.device).pixels(x, self.table, Weights(w, log2_footprint, fade, bias), coherent)

    # --- level-parallel training (table_parallel.py): each process computes some levels -------

    def splits_levels(self, S: int, device: torch.device) -> bool:
        """Whether encode_levels runs on `device` for pixels of S sub-samples."""
        return self.encoder(device).splits_levels(S, device)

    def encode_levels(self, x: torch.Tensor, weights: Weights, ids: list[int]) -> torch.Tensor:
        """The columns of the levels `ids` (increasing) of `pixels` at normalised points x
        (N, S, 3): (N, len(ids) * F), without autograd."""
        return self.encoder(x.device).encode_levels(x, self.table, weights, ids)

    def encode_levels_backward(self, x: torch.Tensor, weights: Weights, ids: list[int],
                               grad_out: torch.Tensor) -> torch.Tensor:
        """Gradient of sum(encode_levels(x, weights, ids) * grad_out) w.r.t. those levels' rows of
        the table, one level after the other."""
        return self.encoder(x.device).encode_levels_backward(x, grad_out, self.table, weights, ids)

    @torch.no_grad()
    def add_decay_grads(self, decay: float, own: list[nn.Parameter] | None = None) -> None:
        """OptimConfig.grid_decay: adds decay x the gradient of each level's mean square entry to
        the gradients (after any reduction over processes). `own`: whole levels' rows as
        Parameters with their gradients (level-parallel training), else the table's levels."""
        if decay <= 0:
            return
        if own is None:
            t = self.table
            if t.grad is None:
                t.grad = torch.zeros_like(t)
            parts = [(t[lv.rows], t.grad[lv.rows]) for lv in self.levels]
        else:
            parts = [(p, p.grad) for p in own]
        for values, grad in parts:
            grad.add_(values, alpha=2.0 * decay / values.numel())
