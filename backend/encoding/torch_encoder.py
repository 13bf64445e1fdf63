"""`TorchEncoder`: the plain PyTorch implementation (reference.py), on any device; the CPU path."""
from __future__ import annotations

import torch

from .encoder import Encoder, Weights
from .reference import encode_levels_backward_reference, encode_levels_reference, encode_reference


class TorchEncoder(Encoder):

    def points(self, x: torch.Tensor, table: torch.Tensor, coherent: bool = False) -> torch.Tensor:
        return encode_reference(x, table, self.cfg)

    def splits_levels(self, S: int, device: torch.device) -> bool:
        # It computes every level to keep some: on a GPU, level parallel is left to the fused
        # kernels (else data parallel); on the CPU it serves the multi-process tests (gloo).
        return device.type != "cuda"

    def encode_levels(self, x: torch.Tensor, table: torch.Tensor, weights: Weights,
                      ids: list[int]) -> torch.Tensor:
        return encode_levels_reference(x, weights.w, table, self.cfg, ids, weights.log2_footprint,
                                       weights.fade, weights.bias)

    def encode_levels_backward(self, x: torch.Tensor, grad_out: torch.Tensor, table: torch.Tensor,
                               weights: Weights, ids: list[int]) -> torch.Tensor:
        return encode_levels_backward_reference(x, weights.w, grad_out, table, self.cfg, ids,
                                                weights.log2_footprint, weights.fade, weights.bias)
