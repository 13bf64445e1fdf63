"""`TritonEncoder`: the fused Triton kernels (triton_kernels.py) as the differentiable CUDA encoder.

Pixels are fused (forward and backward) for sub-sample counts the kernels reduce on the chip
(triton_kernels.supports), so are the level subsets of level-parallel training; other counts
go per point, then through the generic weights (encoder.py).
"""
from __future__ import annotations

import torch

from ..config import HashGridConfig
from . import triton_kernels as kernels
from .encoder import Encoder, Weights


class _EncodePixels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig, weights: Weights,
                coherent: bool) -> torch.Tensor:
        ctx.cfg, ctx.weights, ctx.coherent, ctx.table_dtype = cfg, weights, coherent, table.dtype
        ctx.save_for_backward(x)
        return kernels.forward_pixels(x, table, cfg, weights,
                                      kernels.COHERENT_LAUNCH if coherent else kernels.FWD_LAUNCH)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        gtable = None
        if ctx.needs_input_grad[1]:
            launch = kernels.COHERENT_LAUNCH if ctx.coherent else kernels.BWD_LAUNCH
            gtable = kernels.backward_pixels(x, grad_out.float(), ctx.cfg, ctx.weights, launch).to(ctx.table_dtype)
        # No gradient w.r.t. positions or weights: surface points and footprints are fixed inputs.
        return None, gtable, None, None, None


def encode_pixels_triton(x: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig, weights: Weights = Weights(),
                         coherent: bool = False) -> torch.Tensor:
    """Fused, differentiable pixel encoding: x (N, S, 3) normalised -> (N, L*F) float32 (see
    forward_pixels). coherent=True picks the launch for spatially ordered points (a frame's pixels
    in raster order): all levels per program, reading x once and writing whole output rows."""
    return _EncodePixels.apply(x, table, cfg, weights, coherent)


def encode_triton(x: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig,
                  coherent: bool = False) -> torch.Tensor:
    """Fused encoding of normalised points x (N, 3) in [0, 1] -> (N, L*F) float32."""
    return encode_pixels_triton(x.reshape(-1, 1, 3), table, cfg, Weights(), coherent)


class TritonEncoder(Encoder):

    def __init__(self, cfg: HashGridConfig):
        super().__init__(cfg)
        self._sets: dict[tuple, kernels.LevelSet] = {}

    def points(self, x: torch.Tensor, table: torch.Tensor, coherent: bool = False) -> torch.Tensor:
        return encode_triton(x, table, self.cfg, coherent)

    def pixels(self, x: torch.Tensor, table: torch.Tensor, weights: Weights,
               coherent: bool = False) -> torch.Tensor:
        if not kernels.supports(x.shape[1], kernels.FWD_LAUNCH):
            return super().pixels(x, table, weights, coherent)
        return encode_pixels_triton(x, table, self.cfg, weights, coherent)

    def splits_levels(self, S: int, device: torch.device) -> bool:
        return kernels.supports(S, kernels.FWD_LAUNCH)

    def encode_levels(self, x: torch.Tensor, table: torch.Tensor, weights: Weights,
                      ids: list[int]) -> torch.Tensor:
        return kernels.forward_pixels(x, table.detach(), self.cfg, weights, kernels.FWD_LAUNCH,
                                      levels=self._level_set(ids, x.device, compact=False))

    def encode_levels_backward(self, x: torch.Tensor, grad_out: torch.Tensor, table: torch.Tensor,
                               weights: Weights, ids: list[int]) -> torch.Tensor:
        return kernels.backward_pixels(x, grad_out, self.cfg, weights, kernels.BWD_LAUNCH,
                                       levels=self._level_set(ids, x.device, compact=True))

    def _level_set(self, ids: list[int], device: torch.device, compact: bool) -> kernels.LevelSet:
        """kernels.level_set, made once per set (it copies to the device and reads a size back)."""
        key = (tuple(ids), device, compact)
        if key not in self._sets:
            self._sets[key] = kernels.level_set(self.cfg, list(ids), device, compact)
        return self._sets[key]
