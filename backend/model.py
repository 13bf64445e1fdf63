"""Hash featurized manifold: hash grid on the surface + the official decoder (the paper's `pil.py`).

feature (L*F) --FiLM-SIREN x2 (lighting code)--> h --exposure code e_i: exp(A e)*h + B e--> f
view dir d --SIREN x2, each FiLM-modulated by f--> linear --> sigmoid = linear RGB --> sRGB.
Sub-sample features are averaged over the sub-samples that hit the mesh (anti-aliasing).

The decoder's implementations compute the same function: this plain PyTorch one (the reference)
and the fused Triton kernels (decoder_triton.py), picked per call by `Decoder.impl` (DECODERS).
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from .colour import linear_to_srgb
from .config import ModelConfig, OptimConfig
from .encoding import HashGrid
from .errors import DeviceError
from .footprint import FootprintField

# Decoder implementations by name -> the fused kernels' matrix precision (None: plain PyTorch).
# "auto" is "torch": measured on an H100 (benchmarks/NOTES.md, the fused decoder), TF32 and BF16
# products put the colours up to 0.1 off through SIREN's omega = 30, FP32 ones run 15x slower than
# PyTorch, and the fused backward is slower at any precision. $XSCALE_DECODER picks where "auto"
# would, for experiments.
DECODERS = {"torch": None, "triton": "tf32", "triton-fp32": "ieee", "triton-bf16": "bf16"}
DECODER_ENV = "XSCALE_DECODER"
AUTO_DECODER = "torch"


def decoder_name(impl: str) -> str:
    """`impl`, or for "auto" $XSCALE_DECODER when set; an unknown name is refused."""
    name = (os.environ.get(DECODER_ENV) or "auto") if impl == "auto" else impl
    if name != "auto" and name not in DECODERS:
        raise DeviceError(f"{DECODER_ENV}={name}: unknown decoder; choose auto, {', '.join(DECODERS)} "
                          f"(or unset {DECODER_ENV}).")
    return name


def rows_of(table: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """table[view] for per-photo tables (exposure codes, gains) gathered per ray. Through
    F.embedding: its CUDA backward sums the many rays of one photo in parallel segments, where
    plain indexing's backward gives each photo one warp that adds its ~10^5 rays serially
    (tens of milliseconds a step at the reference batch)."""
    return F.embedding(view, table)


class FiLMSiren(nn.Module):
    """sin(omega * (gamma * (W x + b) + beta)), SIREN initialisation."""

    def __init__(self, n_in: int, n_out: int, omega: float, first: bool):
        super().__init__()
        self.lin = nn.Linear(n_in, n_out)
        self.omega = omega
        bound = 1.0 / n_in if first else math.sqrt(6.0 / n_in) / omega
        nn.init.uniform_(self.lin.weight, -bound, bound)
        nn.init.uniform_(self.lin.bias, -1.0 / math.sqrt(n_in), 1.0 / math.sqrt(n_in))

    def forward(self, x, gamma, beta):
        return torch.sin(self.omega * (gamma * self.lin(x) + beta))


class FiLM(nn.Module):
    """Maps a conditioning vector to (gamma, beta); starts at the identity (1, 0)."""

    def __init__(self, n_cond: int, n: int):
        super().__init__()
        self.lin = nn.Linear(n_cond, 2 * n)
        nn.init.normal_(self.lin.weight, std=1e-3 / math.sqrt(n_cond))
        nn.init.zeros_(self.lin.bias)

    def forward(self, c):
        g, b = self.lin(c).chunk(2, -1)
        return 1.0 + g, b


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, n_views: int, impl: str = "auto"):
        super().__init__()
        self.impl = decoder_name(impl)     # DECODERS name or "auto"
        w = cfg.width
        self.light = nn.Parameter(torch.randn(cfg.light_dim) * 0.1)   # global learned lighting code
        self.f1 = FiLMSiren(cfg.grid.out_dim, w, cfg.omega_feat, first=True)
        self.f2 = FiLMSiren(w, w, cfg.omega0, first=False)
        self.film1, self.film2 = FiLM(cfg.light_dim, w), FiLM(cfg.light_dim, w)
        self.exposure = nn.Parameter(torch.zeros(n_views, cfg.exposure_dim))  # per-image codes
        self.exp_scale = nn.Linear(cfg.exposure_dim, w, bias=False)
        self.exp_shift = nn.Linear(cfg.exposure_dim, w, bias=False)
        self.d1 = FiLMSiren(3, w, cfg.omega_dir, first=True)
        self.d2 = FiLMSiren(w, w, cfg.omega0, first=False)
        self.filmd1, self.filmd2 = FiLM(w, w), FiLM(w, w)
        self.out = nn.Linear(w, 3)

    def forward(self, feat: torch.Tensor, dirs: torch.Tensor, code: torch.Tensor,
                linear: bool = False) -> torch.Tensor:
        """feat (N, D), dirs (N, 3) unit, code (N, E) or (E,) exposure codes -> sRGB (N, 3)
        (or the linear RGB before the sRGB encoding when `linear`)."""
        precision = self.fused_precision(feat)
        if precision is not None:
            from .decoder_triton import decode
            rgb_linear = decode(self, feat, dirs, code, precision)
            return rgb_linear if linear else linear_to_srgb(rgb_linear)
        g1, b1 = self.film1(self.light)
        g2, b2 = self.film2(self.light)
        h = self.f2(self.f1(feat, g1, b1), g2, b2)
        h = torch.exp(self.exp_scale(code)) * h + self.exp_shift(code)
        ga, ba = self.filmd1(h)
        gb, bb = self.filmd2(h)
        v = self.d2(self.d1(dirs, ga, ba), gb, bb)
        rgb_linear = torch.sigmoid(self.out(v))
        return rgb_linear if linear else linear_to_srgb(rgb_linear)

    def fused_precision(self, feat: torch.Tensor) -> str | None:
        """The fused kernels' precision for decoding `feat`, or None for this PyTorch decoder: on
        CUDA (or Triton's interpreter) with float32 features of widths the kernels take; else
        the PyTorch one, which computes the same function everywhere."""
        name = self.impl if self.impl != "auto" else AUTO_DECODER
        on_triton = feat.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
        if DECODERS[name] is None or not on_triton or feat.dtype != torch.float32:
            return None
        try:
            from .decoder_kernels import supports
        except ImportError:
            if self.impl == "auto":
                return None
            raise DeviceError(f"the {name} decoder needs Triton: pip install triton (on Windows: pip install "
                              f"triton-windows), or unset {DECODER_ENV}.") from None
        return DECODERS[name] if supports(feat.shape[1], self.out.in_features) else None

    def folded(self, code: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The decoder with its per-batch constants (lighting FiLM, the SIREN frequencies, FiLM's
        +1) folded into the weights, so each layer is one matmul (decoder_kernels.Layout's pieces,
        differentiable): h = sin(sin(x a1 + c1) a2 + c2), h' = exp(code es) h + code et,
        [ga|ba|gb|bb] = h' m + cm, v = sin(ga (d d1 + e1) + ba), v = sin(gb (v d2 + e2) + bb),
        linear RGB = sigmoid(v wo^T + bo). With one exposure code (E,) the exposure is folded
        into m, cm too (es, et zero)."""
        o1, o2 = self.d1.omega, self.d2.omega       # the view-branch layers the FiLM blocks feed
        w = self.out.in_features

        def film_siren(layer: FiLMSiren, film: FiLM):     # constant FiLM: fold into the layer
            g, b = film(self.light)
            return ((layer.omega * g)[:, None] * layer.lin.weight).T, layer.omega * (g * layer.lin.bias + b)

        a1, c1 = film_siren(self.f1, self.film1)
        a2, c2 = film_siren(self.f2, self.film2)
        # The view FiLM blocks are (omega * gamma - omega, omega * beta) so that omega * (1 + g)
        # and omega * b come out.
        Wf = torch.cat([self.filmd1.lin.weight, self.filmd2.lin.weight])           # (4w, w)
        scale = torch.cat([torch.full((2 * w,), o1), torch.full((2 * w,), o2)]).to(Wf)
        plus = torch.cat([torch.full((w,), o1), torch.zeros(w), torch.full((w,), o2), torch.zeros(w)]).to(Wf)
        m = (scale[:, None] * Wf).T
        cm = scale * torch.cat([self.filmd1.lin.bias, self.filmd2.lin.bias]) + plus
        es, et = self.exp_scale.weight.T, self.exp_shift.weight.T                  # (E, w)
        if code is not None:        # on h' = s h + t: h' m + cm = h (s m) + (t m + cm)
            s, t = torch.exp(code @ es), code @ et
            m, cm = s[:, None] * m, t @ m + cm
            es, et = torch.zeros_like(es), torch.zeros_like(et)
        return {"a1": a1, "c1": c1, "a2": a2, "c2": c2, "es": es, "et": et, "m": m, "cm": cm,
                "d1": self.d1.lin.weight.T, "e1": self.d1.lin.bias, "d2": self.d2.lin.weight.T,
                "e2": self.d2.lin.bias, "wo": self.out.weight, "bo": self.out.bias}

    @torch.no_grad()
    def infer(self, feat: torch.Tensor, dirs: torch.Tensor, code: torch.Tensor,
              linear: bool = False) -> torch.Tensor:
        """`forward` for one exposure code (E,), rearranged for rendering: the per-frame constants
        folded into the weights (`folded`), so each layer is one matmul and one or two in-place
        passes over its output instead of five (the decoder is memory-bound at millions of
        pixels); fused into one kernel where `fused_precision` says."""
        precision = self.fused_precision(feat)
        if precision is not None:
            from .decoder_triton import infer
            rgb_linear = infer(self, feat, dirs, code, precision)
            return rgb_linear if linear else linear_to_srgb(rgb_linear)
        p = self.folded(code)
        w = self.out.in_features
        h = torch.addmm(p["c1"], feat, p["a1"]).sin_()
        h = torch.addmm(p["c2"], h, p["a2"]).sin_()
        ga, ba, gb, bb = torch.addmm(p["cm"], h, p["m"]).split(w, 1)
        v = torch.addcmul(ba, ga, torch.addmm(p["e1"], dirs, p["d1"])).sin_()
        v = torch.addcmul(bb, gb, torch.addmm(p["e2"], v, p["d2"])).sin_()
        rgb_linear = torch.sigmoid(torch.addmm(p["bo"], v, p["wo"].T))
        return rgb_linear if linear else linear_to_srgb(rgb_linear)


class Manifold(nn.Module):
    """The trained model: `forward` for training (per-ray exposure codes), `render` for frames,
    `param_groups` for the optimiser and the gradient reduction."""

    def __init__(self, cfg: ModelConfig, aabb_min, aabb_max, n_views: int, grid_backend: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.grid = HashGrid(cfg.grid, aabb_min, aabb_max, backend=grid_backend)
        self.decoder = Decoder(cfg, n_views)
        # Per-photo log colour gains (ModelConfig.photo_gains), applied to the linear output; mean
        # zero over the training photos (`gain_train`: held-out photos have none, so they stay out).
        self.log_gain = nn.Parameter(torch.zeros(n_views, 3)) if cfg.photo_gains else None
        if cfg.photo_gains:
            self.register_buffer("gain_train", torch.ones(n_views, dtype=torch.bool))
        self.field = FootprintField()        # the finest footprints the photos saw (renders clamp to it)

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        """Adam groups: the hash table ("grid": its own rate and epsilon), the decoder ("decoder":
        MLP, lighting, exposure codes) and the per-photo colour gains ("gains", when on)."""
        groups = [{"name": "grid", "params": [self.grid.table], "lr": optim.grid_lr, "eps": optim.grid_eps},
                  {"name": "decoder", "params": list(self.decoder.parameters()), "lr": optim.lr}]
        if self.log_gain is not None:
            groups.append({"name": "gains", "params": [self.log_gain], "lr": optim.gain_lr})
        return groups

    @torch.no_grad()
    def add_regulariser_grads(self, optim: OptimConfig) -> None:
        """Add the gradients of the regularisers (OptimConfig.grid_decay, exposure_decay) to the
        parameters' gradients, in place (after any reduction over ranks: they are the same on
        every rank)."""
        self.grid.add_decay_grads(optim.grid_decay)
        if optim.exposure_decay > 0:
            e = self.decoder.exposure
            g = e.grad if e.grad is not None else torch.zeros_like(e)
            e.grad = g.add_(e, alpha=2.0 * optim.exposure_decay / e.numel())

    def features(self, xyz: torch.Tensor, mask: torch.Tensor, footprint: torch.Tensor | None = None,
                 clamp: bool = False, coherent: bool = False) -> torch.Tensor:
        """xyz (N, S, 3), mask (N, S) bool, footprint (N, S) world units or None -> per-pixel
        feature (N, D): the mean over hit sub-samples of their level-weighted features (levels at
        weight 1 without footprints or with `level_fade` 0). `clamp`: footprints no finer than the
        photos observed there (rendering)."""
        w, lf = self.sub_sample_weights(xyz, mask, footprint, clamp)
        return self.grid.pixels(xyz, w, lf, self.cfg.level_fade, self.cfg.level_bias, coherent)

    def sub_sample_weights(self, xyz: torch.Tensor, mask: torch.Tensor, footprint: torch.Tensor | None = None,
                           clamp: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The hash grid's per-sub-sample inputs of `features` besides the points: weights (N, S)
        and log2 footprints (N, S) in normalised units, or None (see `features`)."""
        w = mask.float()
        w = w / w.sum(1, keepdim=True).clamp_min(1.0)
        lf = None
        if footprint is not None and self.cfg.level_fade > 0:
            lf = self.grid.log2_footprint(footprint)
            if clamp:
                lf = self.field.clamp(self.grid.normalise(xyz.float()), lf)
        return w, lf

    def exposure_code(self, view: torch.Tensor | None = None, which: str | int = "mean") -> torch.Tensor:
        codes = self.decoder.exposure
        if view is not None:
            return rows_of(codes, view)
        if which == "mean":
            return codes.mean(0)
        return codes[int(which)]

    def gain(self, view: torch.Tensor | None = None, which: str | int = "mean") -> torch.Tensor | None:
        """Linear colour gains of the rays' photos (N, 3) or of one photo (3,) ("mean": 1)."""
        if self.log_gain is None or (view is None and which == "mean"):
            return None
        g = self.log_gain - self.log_gain[self.gain_train].mean(0)
        return torch.exp(rows_of(g, view) if view is not None else g[int(which)])

    def forward(self, xyz, mask, dirs, view=None, exposure: str | int = "mean", linear: bool = False,
                footprint: torch.Tensor | None = None, feat: torch.Tensor | None = None):
        """Training: sRGB (N, 3) (or linear) of rays with their views' exposure codes and gains.
        `feat`: the rays' features when already computed (level-parallel training), else
        `features(xyz, mask, footprint)`."""
        code = self.exposure_code(view, exposure)
        if feat is None:
            feat = self.features(xyz, mask, footprint)
        if code.dim() == 1 and not torch.is_grad_enabled():
            rgb = self.decoder.infer(feat, dirs, code, linear=True)
        else:
            rgb = self.decoder(feat, dirs, code, linear=True)
        gain = self.gain(view, exposure)
        if gain is not None:
            rgb = rgb * gain
        return rgb if linear else linear_to_srgb(rgb)

    @torch.no_grad()
    def render(self, xyz: torch.Tensor, mask: torch.Tensor, dirs: torch.Tensor,
               exposure: str | int = "mean", footprint: torch.Tensor | None = None) -> torch.Tensor:
        """Linear RGB (N, 3) of a frame's covered pixels, given in pixel order (the grid's
        frame-order launch), with one exposure code ("mean" or a training view's index).
        footprint (N, S): the frame's sub-sample footprints, clamped to the observed field."""
        code = self.exposure_code(None, exposure)
        feat = self.features(xyz, mask, footprint, clamp=True, coherent=True)
        rgb = self.decoder.infer(feat, dirs, code, linear=True)
        gain = self.gain(None, exposure)
        return rgb if gain is None else rgb.mul_(gain)

