"""The interface of the hash encoding's implementations (`Encoder`), and its pixel weights.

Every implementation computes the same function of the same parameters (layout.py) on points
normalised to [0, 1]^3; `HashGrid` (grid.py) normalises and picks the implementation by name
(registry.py). A new implementation subclasses `Encoder` in a module of its own and gets one entry
in registry.ENCODERS: it must give `points`; `pixels` has a generic form (per point, then the
weights, reference.weigh_sub_samples) that a fused implementation replaces; the level-subset
encode of level-parallel training (table_parallel.py) is optional (`splits_levels`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import HashGridConfig
from .reference import weigh_sub_samples


@dataclass(frozen=True)
class Weights:
    """Per-sub-sample inputs of the pixel encoding besides the points: w (N, S) sub-sample
    weights (None: 1), log2 footprint (N, S) in normalised units (None: every level at weight 1)
    with the level fade (octaves) and bias (reference.level_weights)."""
    w: torch.Tensor | None = None
    log2_footprint: torch.Tensor | None = None
    fade: float = 1.0
    bias: float = 0.0


class Encoder:
    """One implementation of the hash encoding of `cfg`; `table` is the flat (rows, F) parameter."""

    def __init__(self, cfg: HashGridConfig):
        self.cfg = cfg

    @classmethod
    def check(cls) -> None:
        """DeviceError when this machine cannot run the implementation (asked for by name)."""

    def points(self, x: torch.Tensor, table: torch.Tensor, coherent: bool = False) -> torch.Tensor:
        """Normalised points x (N, 3) -> (N, L*F), differentiable w.r.t. the table. `coherent`:
        the points come in frame (pixel) order (a faster launch for some implementations)."""
        raise NotImplementedError

    def pixels(self, x: torch.Tensor, table: torch.Tensor, weights: Weights,
               coherent: bool = False) -> torch.Tensor:
        """Per pixel, the w-weighted sum of its sub-samples' level-weighted features
        (reference.encode_pixels_reference): x (N, S, 3) -> (N, L*F), differentiable w.r.t.
        the table. Here per point, then the weights."""
        N, S, _ = x.shape
        f = self.points(x.reshape(N * S, 3), table, coherent).reshape(N, S, self.cfg.n_levels, -1)
        return weigh_sub_samples(f, weights.w, self.cfg, weights.log2_footprint, weights.fade, weights.bias)

    # --- some of the levels alone (level-parallel training) ------------------------------------

    def splits_levels(self, S: int, device: torch.device) -> bool:
        """Whether encode_levels and its backward run here, for pixels of S sub-samples."""
        return False

    def encode_levels(self, x: torch.Tensor, table: torch.Tensor, weights: Weights,
                      ids: list[int]) -> torch.Tensor:
        """The columns of the levels `ids` (increasing) of `pixels`, (N, len(ids) * F); no autograd."""
        raise NotImplementedError

    def encode_levels_backward(self, x: torch.Tensor, grad_out: torch.Tensor, table: torch.Tensor,
                               weights: Weights, ids: list[int]) -> torch.Tensor:
        """Gradient of sum(encode_levels(...) * grad_out) w.r.t. the rows of the levels `ids`, one
        level after the other: (their rows, F)."""
        raise NotImplementedError
