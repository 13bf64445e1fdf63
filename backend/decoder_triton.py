"""The fused decoder kernels (decoder_kernels.py) as model.Decoder's Triton path: `decode` computes
Decoder.forward (per-ray exposure codes; differentiable: training), `infer` Decoder.infer (one
exposure code folded into the weights; rendering).

The decoder's parameters reach the kernels folded and packed (Decoder.folded, Layout.pack), both
differentiable: the packed weights' gradient, which the backward kernel computes, flows back to
the layers, the lighting code and its FiLM blocks through autograd's small per-batch graph.

A kernel's first launch of each kind (its compilation) is guarded: one that cannot run on this
GPU (shared memory or registers it lacks, a compiler failure) is reported once as a log event and
that kernel's part is computed by `reference`, the same function in PyTorch, from then on.
"""
from __future__ import annotations

import torch

from . import decoder_kernels as kernels
from . import events

_launched: set[tuple] = set()       # kernels' specialisations that ran once
_failed: set[tuple] = set()         # ... that could not: `reference` computes them


def reference(feat: torch.Tensor, dirs: torch.Tensor, code: torch.Tensor | None, w: torch.Tensor,
              lay: kernels.Layout) -> torch.Tensor:
    """kernels.forward in PyTorch (differentiable): linear RGB (N, 3) from packed weights w."""
    p = lay.unpack(w)
    h = torch.sin(torch.sin(feat @ p["a1"] + p["c1"]) @ p["a2"] + p["c2"])
    if code is not None:
        h = torch.exp(code @ p["es"]) * h + code @ p["et"]
    ga, ba, gb, bb = (h @ p["m"] + p["cm"]).chunk(4, 1)
    v = torch.sin(ga * (dirs @ p["d1"] + p["e1"]) + ba)
    v = torch.sin(gb * (v @ p["d2"] + p["e2"]) + bb)
    return torch.sigmoid(v @ p["wo"].T + p["bo"])


def _guarded(key: tuple, launch, fallback):
    """launch(), or fallback() where this specialisation's first launch failed (logged once)."""
    if key in _failed:
        return fallback()
    if key in _launched:
        return launch()
    try:
        out = launch()
    except Exception as e:      # noqa: BLE001 - OutOfResources, CompilationError, a missing compiler...
        _failed.add(key)
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        events.log(f"the fused decoder's {key[0]} kernel cannot run on this GPU ({type(e).__name__}: {reason}); "
                   f"the PyTorch decoder computes it instead")
        return fallback()
    _launched.add(key)
    return out


def _forward(feat, dirs, code, w, lay, precision):
    key = ("forward", lay, precision, str(feat.device), code is not None, kernels.FWD_LAUNCH)
    return _guarded(key, lambda: kernels.forward(feat, dirs, code, w, lay, precision),
                    lambda: reference(feat, dirs, code, w, lay))


def _reference_grads(feat, dirs, code, w, grad, lay, need_feat: bool, need_code: bool):
    """kernels.backward's gradients (feat, code, weights) through autograd on `reference`."""
    with torch.enable_grad():
        ins = [feat.detach().requires_grad_(need_feat), code.detach().requires_grad_(need_code),
               w.detach().requires_grad_()]
        got = iter(torch.autograd.grad(reference(ins[0], dirs, ins[1], ins[2], lay),
                                       [t for t in ins if t.requires_grad], grad))
        return tuple(next(got) if t.requires_grad else None for t in ins)


class _Decode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feat: torch.Tensor, dirs: torch.Tensor, code: torch.Tensor, w: torch.Tensor,
                lay: kernels.Layout, precision: str) -> torch.Tensor:
        ctx.lay, ctx.precision = lay, precision
        ctx.save_for_backward(feat, dirs, code, w)       # activations: recomputed in the backward
        return _forward(feat, dirs, code, w, lay, precision)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        feat, dirs, code, w = ctx.saved_tensors
        lay, need_feat, need_code = ctx.lay, ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        key = ("backward", lay, ctx.precision, str(feat.device), need_feat, need_code, kernels.BWD_LAUNCH)
        gfeat, gcode, gw = _guarded(
            key, lambda: kernels.backward(feat, dirs, code, w, grad, lay, ctx.precision, need_feat, need_code),
            lambda: _reference_grads(feat, dirs, code, w, grad, lay, need_feat, need_code))
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
    return _forward(feat.contiguous(), dirs.float().contiguous(), None, lay.pack(dec.folded(code.float())), lay,
                    precision)
