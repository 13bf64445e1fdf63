"""The fused decoder kernels (decoder_kernels.py) as model.Decoder's Triton path: `decode` computes
Decoder.forward (per-ray exposure codes; differentiable: training), `infer` Decoder.infer (one
exposure code folded into the weights; rendering).

The decoder's parameters reach the kernels folded and packed (Decoder.folded, Layout.pack), both
differentiable: the packed weights' gradient, which the backward kernel computes, flows back to
the layers, the lighting code and its FiLM blocks through autograd's small per-batch graph.
"""
from __future__ import annotations

import torch

from . import decoder_kernels as kernels


class _Decode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feat: torch.Tensor, dirs: torch.Tensor, code: torch.Tensor, w: torch.Tensor,
                lay: kernels.Layout, precision: str) -> torch.Tensor:
        ctx.lay, ctx.precision = lay, precision
        ctx.save_for_backward(feat, dirs, code, w)       # activations: recomputed in the backward
        return kernels.forward(feat, dirs, code, w, lay, precision)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        feat, dirs, code, w = ctx.saved_tensors
        gfeat, gcode, gw = kernels.backward(feat, dirs, code, w, grad, ctx.lay, ctx.precision,
                                            need_feat=ctx.needs_input_grad[0], need_code=ctx.needs_input_grad[2])
        # View directions are fixed inputs: no gradient.
        return gfeat, None, gcode, gw, None, None


def layout(dec) -> kernels.Layout:
    return kernels.Layout(dec.f1.lin.in_features, dec.out.in_features, dec.exp_scale.in_features)


def decode(dec, feat: torch.Tensor, dirs: torch.Tensor, code: torch.Tensor, precision: str) -> torch.Tensor:
    """Linear RGB (N, 3) of Decoder `dec`: feat (N, D), unit dirs (N, 3), exposure codes (N, E) or
    one for all (E,). Differentiable w.r.t. feat, code and the decoder's parameters."""
    lay = layout(dec)
    if code.dim() == 1:
        code = code.expand(feat.shape[0], -1)            # one code: stride 0, its gradient summed
    return _Decode.apply(feat.contiguous(), dirs.float().contiguous(), code.float(),
                         lay.pack(dec.folded()), lay, precision)


@torch.no_grad()
def infer(dec, feat: torch.Tensor, dirs: torch.Tensor, code: torch.Tensor, precision: str) -> torch.Tensor:
    """Linear RGB (N, 3) of `dec` with one exposure code (E,); no autograd."""
    lay = layout(dec)
    return kernels.forward(feat.contiguous(), dirs.float().contiguous(), None,
                           lay.pack(dec.folded(code.float())), lay, precision)
