"""Hash encoding: properties of the PyTorch reference (CPU) and the Triton kernels against it (GPU)."""
from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

from backend.config import HashGridConfig
from backend.encoding import HashGrid, n_params
from backend.encoding.layout import levels
from backend.encoding.reference import corner_indices_weights, encode_reference
from conftest import needs_triton, run_triton_interpreted

# Small config with both dense levels (res <= 25) and hashed levels (2^14 entries).
SMALL = HashGridConfig(n_levels=8, n_features=4, log2_table=14, base_res=8, per_level_scale=1.8)
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def direct_encode(x: np.ndarray, table: np.ndarray, cfg: HashGridConfig) -> np.ndarray:
    """Independent evaluation of one point: Python ints for indices, float64 for the sums.
    Level scales in float32 as tiny-cuda-nn (exp2f(l * log2f(s)) * base - 1); positions as a fused
    multiply-add rounded once to float32 (exact rational arithmetic, then one rounding)."""
    from fractions import Fraction
    f32 = np.float32
    out = []
    offset = 0
    for lvl in range(cfg.n_levels):
        s32 = f32(f32(np.exp2(f32(lvl) * f32(np.log2(f32(cfg.per_level_scale))))) * f32(cfg.base_res)) - f32(1)
        res = math.ceil(float(s32)) + 1
        size = min(-(-res ** 3 // 8) * 8, 2 ** cfg.log2_table)
        pos = [f32(float(Fraction(float(f32(c))) * Fraction(float(s32)) + Fraction(1, 2))) for c in x]
        base = [int(math.floor(p)) for p in pos]
        frac = [float(p) - b for p, b in zip(pos, base)]
        if cfg.smoothstep:
            frac = [f * f * (3 - 2 * f) for f in frac]
        acc = np.zeros(cfg.n_features)
        for corner in range(8):
            g = [base[d] + ((corner >> d) & 1) for d in range(3)]
            if res ** 3 <= size:
                idx = (g[0] + g[1] * res + g[2] * res * res) % size
            else:
                idx = ((g[0] * 1) ^ (g[1] * 2654435761) ^ (g[2] * 805459861)) % 2 ** 32 % size
            w = 1.0
            for d in range(3):
                w *= frac[d] if (corner >> d) & 1 else 1.0 - frac[d]
            acc += w * table[offset + idx].astype(np.float64)
        out.append(acc)
        offset += size
    return np.concatenate(out)


def test_level_layout_reference_settings():
    cfg = HashGridConfig()
    layout = levels(cfg)
    res = [lv.res for lv in layout]
    assert res[:7] == [16, 24, 35, 52, 77, 113, 166]
    dense = [not lv.hashed for lv in layout]
    assert dense == [True] * 6 + [False] * 10          # 6 dense levels, 10 hashed
    assert all(lv.size == 2 ** 22 for lv in layout[6:])
    assert n_params(cfg) == sum(lv.size for lv in layout) and cfg.out_dim == 128


@pytest.mark.parametrize("smoothstep", [True, False])
def test_reference_matches_direct_evaluation(smoothstep: bool):
    cfg = HashGridConfig(**{**asdict(SMALL), "smoothstep": smoothstep})
    assert any(not lv.hashed for lv in levels(cfg))
    assert any(lv.hashed for lv in levels(cfg))
    g = torch.Generator().manual_seed(1)
    table = torch.randn(n_params(cfg), cfg.n_features, generator=g)
    x = torch.rand(6, 3, generator=g)
    x[0] = torch.tensor([0.0, 0.0, 0.0])
    x[1] = torch.tensor([1.0, 1.0, 1.0])   # last corner wraps past the dense grid (mod size)
    out = encode_reference(x, table, cfg).double().numpy()
    for i in range(len(x)):
        ref = direct_encode(x[i].numpy(), table.numpy(), cfg)
        np.testing.assert_allclose(out[i], ref, rtol=1e-5, atol=1e-5)


def test_weights_are_a_partition_of_unity():
    # A constant table encodes to that constant at every level (hash collisions included).
    x = torch.rand(500, 3)
    for smoothstep in (True, False):
        cfg = HashGridConfig(**{**asdict(SMALL), "smoothstep": smoothstep})
        out = encode_reference(x, torch.full((n_params(cfg), cfg.n_features), 2.5), cfg)
        torch.testing.assert_close(out, torch.full_like(out, 2.5), rtol=1e-5, atol=1e-5)


def test_continuous_across_cell_boundaries():
    cfg = SMALL
    table = torch.randn(n_params(cfg), cfg.n_features, generator=torch.Generator().manual_seed(2))
    for lvl, scale in enumerate(lv.scale for lv in levels(cfg)):
        s = float(np.float32(scale))
        k = torch.arange(1, int(s))                         # integer positions inside the grid
        xb = ((k - 0.5) / s).float()                        # pos = x * s + 0.5 lands on k
        pts = torch.stack([xb, torch.full_like(xb, 0.37), torch.full_like(xb, 0.61)], 1)
        eps = torch.tensor([1e-3 / s, 0.0, 0.0])             # 1e-3 of a cell each side
        cols = slice(lvl * cfg.n_features, (lvl + 1) * cfg.n_features)
        lo = encode_reference(pts - eps, table, cfg)[:, cols]
        hi = encode_reference(pts + eps, table, cfg)[:, cols]
        # A wrong corner or weight at the boundary would jump by O(|table|) ~ 1; smoothstep is flat there.
        assert (hi - lo).abs().max() < 1e-3, lvl


def test_gradient_is_weights_scattered():
    cfg = SMALL
    table = torch.randn(n_params(cfg), cfg.n_features, requires_grad=True)
    x = torch.rand(300, 3)
    gout = torch.randn(300, cfg.out_dim)
    (encode_reference(x, table, cfg) * gout).sum().backward()
    expect = torch.zeros(n_params(cfg), cfg.n_features, dtype=torch.float64)
    for lvl, (scale, res, size, offset) in enumerate((lv.scale, lv.res, lv.size, lv.offset) for lv in levels(cfg)):
        idx, w = corner_indices_weights(x, scale, res, size, cfg.smoothstep)
        g = gout[:, lvl * cfg.n_features:(lvl + 1) * cfg.n_features].double()
        contrib = w.double()[:, :, None] * g[:, None, :]          # (N, 8, F)
        expect.index_add_(0, (offset + idx).reshape(-1), contrib.reshape(-1, cfg.n_features))
    torch.testing.assert_close(table.grad.double(), expect, rtol=1e-5, atol=1e-5)


def test_every_grid_backend_choice_has_an_implementation():
    """--grid-backend's choices (config.GRID_BACKEND) are "auto" and the registry's entries; each
    name gives an encoder for CPU tensors (the CUDA-only ones the PyTorch encoder there)."""
    from backend.encoding import BACKENDS, ENCODERS, Encoder
    from backend.encoding.registry import encoder_class
    from backend.encoding.torch_encoder import TorchEncoder
    assert set(BACKENDS) == {"auto", *ENCODERS}
    cpu = torch.device("cpu")
    for name in BACKENDS:
        cls = encoder_class(name, cpu)
        assert issubclass(cls, Encoder)
        assert (cls is TorchEncoder) == (name != "tcnn"), name


_INTERPRETER_CHECK = """
import torch
from backend.config import HashGridConfig
from backend.encoding import n_params
from backend.encoding.reference import encode_reference
from backend.encoding import triton_kernels as ht
cfg = HashGridConfig(n_levels=5, n_features=4, log2_table=12, base_res=6, per_level_scale=2.0)
cases = ((1, ht.Launch(64, 2)), (200, ht.Launch(64, 2)), (130, ht.Launch(64, 2, per_level=False)))
for n, launch in cases:
    x = torch.rand(n, 3)
    table = torch.randn(n_params(cfg), cfg.n_features, requires_grad=True)
    ref = encode_reference(x, table, cfg)
    out = ht.forward(x, table.detach(), cfg, launch)
    gout = torch.randn_like(ref)
    ref.backward(gout)
    # The interpreter evaluates tl.fma with numpy as a*b+c (two roundings); a position that lands
    # one float32 step away moves a weight by ~1e-5. The GPU tests hold the true FMA to 1e-5.
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=5e-5)
    torch.testing.assert_close(ht.backward(x, gout, cfg, launch), table.grad, rtol=1e-3, atol=5e-5)
# Sub-sample mean (rendering): 4 sub-samples per pixel, some missing (weight 0), 37 pixels.
x = torch.rand(37, 4, 3)
w = (torch.rand(37, 4) > 0.3).float()
w = w / w.sum(1, keepdim=True).clamp_min(1)
with torch.no_grad():
    ref = (encode_reference(x.reshape(-1, 3), table, cfg).reshape(37, 4, -1) * w[..., None]).sum(1)
    torch.testing.assert_close(ht.forward_mean(x, w, table.detach(), cfg, ht.Launch(64, 2, per_level=False)), ref,
                               rtol=1e-3, atol=5e-5)
# Pixel encoding with footprints (training and rendering): every sub-sample's levels weighted by
# its footprint, some weights exactly 0 (fine levels skipped), forward and backward, both launches.
from backend.encoding.layout import log2_cells
from backend.encoding.reference import encode_pixels_reference
lc = torch.from_numpy(log2_cells(cfg))
for S, launch in ((4, ht.Launch(64, 2)), (4, ht.Launch(64, 2, per_level=False)), (1, ht.Launch(64, 2))):
    x = torch.rand(37, S, 3)
    lf = lc[1] + (lc[-1] - lc[1]) * torch.rand(37, S)       # footprints from level 1 to the finest cell
    tab = table.detach().clone().requires_grad_()
    ref = encode_pixels_reference(x, w[:, :S], tab, cfg, lf, fade=1.0, bias=0.25)
    gout = torch.randn_like(ref)
    ref.backward(gout)
    wts = ht.Weights(w=w[:, :S], log2_footprint=lf, fade=1.0, bias=0.25)
    torch.testing.assert_close(ht.forward_pixels(x, tab.detach(), cfg, wts, launch), ref.detach(), rtol=1e-3, atol=5e-5)
    torch.testing.assert_close(ht.backward_pixels(x, gout, cfg, wts, launch), tab.grad, rtol=1e-3, atol=5e-5)
    assert (ref.reshape(37, cfg.n_levels, -1)[:, -1] == 0).any()    # the finest level was dropped somewhere
# Weighting off (the paper's model: level_fade 0): sub-sample weights only, whatever the fade.
torch.testing.assert_close(ht.forward_pixels(x, tab.detach(), cfg, ht.Weights(w=w[:, :1], fade=0.0), launch),
                           encode_pixels_reference(x, w[:, :1], tab.detach(), cfg), rtol=1e-3, atol=5e-5)
print("ok")
"""


@needs_triton
def test_triton_kernels_in_interpreter():
    """The Triton kernels on CPU tensors through Triton's interpreter (no GPU needed)."""
    r = run_triton_interpreted(["-c", _INTERPRETER_CHECK], timeout=600)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


# ---------------------------------------------------------------- GPU: Triton against the reference

def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _points(n: int, device: str) -> torch.Tensor:
    x = torch.rand(n, 3, device=device)
    if n >= 4:  # domain corners and faces: dense wraparound and clamped hash corners
        x[:4] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.5], [1.0, 0.25, 0.0]])
    return x


def _poison_allocator(nbytes: int) -> None:
    # Leave NaNs in the caching allocator's free blocks so an unwritten output element shows up.
    torch.empty(nbytes // 4, device="cuda").fill_(float("nan"))


@gpu
@needs_cuda
@pytest.mark.parametrize("cfg", [HashGridConfig(), SMALL,
                                 HashGridConfig(n_levels=4, n_features=2, log2_table=15,
                                                base_res=20, per_level_scale=3.0, smoothstep=False)],
                         ids=["reference", "small", "linear-f2"])
@pytest.mark.parametrize("n", [1, 127, 4097, 100_003])
def test_triton_matches_reference(cfg: HashGridConfig, n: int):
    from backend.encoding.triton_encoder import encode_triton
    torch.manual_seed(n)
    x = _points(n, "cuda")
    table = (torch.randn(n_params(cfg), cfg.n_features, device="cuda") * 0.1).requires_grad_()
    gout = torch.randn(n, cfg.out_dim, device="cuda")
    ref = encode_reference(x, table, cfg)
    (ref * gout).sum().backward()
    gref, table.grad = table.grad, None

    _poison_allocator(n * cfg.out_dim * 4)
    out = encode_triton(x, table, cfg)
    assert out.shape == (n, cfg.out_dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert _rel(out, ref) < 1e-5
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    (out * gout).sum().backward()
    assert _rel(table.grad, gref) < 1e-5
    # Atomics sum in another order: a coarse entry gathers ~n/res^3 terms (~500 of size ~1 for
    # `small` at n = 100,003: float32 reordering moves such a sum by a few 1e-5). A wrong corner or
    # weight moves entries by O(1).
    torch.testing.assert_close(table.grad, gref, rtol=1e-4, atol=1e-4)


@gpu
@needs_cuda
@pytest.mark.parametrize("coherent", [False, True], ids=["random", "coherent"])
def test_triton_launch_variants_and_half_table(coherent: bool):
    from backend.encoding import triton_kernels as ht
    from backend.encoding.triton_encoder import encode_triton
    cfg = SMALL
    x = _points(10_001, "cuda")
    if coherent:  # sorted along x: neighbouring points share cells (same-address atomics)
        x = x[torch.argsort(x[:, 0])].contiguous()
    table = torch.randn(n_params(cfg), cfg.n_features, device="cuda", requires_grad=True)
    ref = encode_reference(x, table, cfg)
    gout = torch.randn_like(ref)
    (ref * gout).sum().backward()
    gref = table.grad
    for launch in (ht.Launch(64, 2), ht.Launch(256, 8), ht.Launch(64, 2, per_level=False),
                   ht.COHERENT_LAUNCH):
        out = ht.forward(x, table.detach(), cfg, launch)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ht.backward(x, gout, cfg, launch), gref, rtol=1e-4, atol=1e-5)
    table.grad = None
    (encode_triton(x, table, cfg, coherent=True) * gout).sum().backward()
    torch.testing.assert_close(table.grad, gref, rtol=1e-4, atol=1e-5)
    # A half table is read as float32 and accumulated in float32.
    half = table.detach().half()
    torch.testing.assert_close(ht.forward(x, half, cfg), encode_reference(x, half.float(), cfg),
                               rtol=1e-5, atol=1e-6)


@gpu
@needs_cuda
def test_hashgrid_module_uses_triton_on_cuda():
    cfg = SMALL
    grid = HashGrid(cfg, [-1.0, 0.0, 2.0], [3.0, 1.0, 5.0], backend="triton").cuda()
    with torch.no_grad():
        grid.table.normal_()
    pts = torch.rand(5000, 3, device="cuda") * torch.tensor([4.0, 1.0, 3.0], device="cuda") \
        + torch.tensor([-1.0, 0.0, 2.0], device="cuda")
    out = grid(pts)
    grid.backend = "torch"
    torch.testing.assert_close(out, grid(pts), rtol=1e-5, atol=1e-6)


@gpu
@needs_cuda
@pytest.mark.parametrize("S", [1, 4, 16])
def test_fused_subsample_mean_matches_reference(S: int):
    """Rendering's fused per-pixel mean of sub-sample features (reference settings)."""
    from backend.encoding.triton_kernels import forward_mean
    cfg = HashGridConfig()
    torch.manual_seed(S)
    table = torch.randn(n_params(cfg), cfg.n_features, device="cuda") * 0.1
    x = torch.rand(5003, S, 3, device="cuda")
    w = (torch.rand(5003, S, device="cuda") > 0.25).float()
    w = w / w.sum(1, keepdim=True).clamp_min(1)
    ref = (encode_reference(x.reshape(-1, 3), table, cfg).reshape(5003, S, -1) * w[..., None]).sum(1)
    _poison_allocator(5003 * cfg.out_dim * 4)
    out = forward_mean(x, w, table, cfg)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@gpu
@needs_cuda
@pytest.mark.parametrize("coherent", [False, True], ids=["random", "coherent"])
@pytest.mark.parametrize("S", [1, 4])
def test_footprint_weighted_pixels_match_reference(S: int, coherent: bool):
    """Training's and rendering's fused pixel encoding with footprint level weights, forward and
    backward, at the reference settings."""
    from backend.encoding import triton_kernels as ht
    from backend.encoding.layout import log2_cells
    from backend.encoding.reference import encode_pixels_reference
    from backend.encoding.triton_encoder import encode_pixels_triton
    cfg = HashGridConfig()
    torch.manual_seed(10 + S)
    table = (torch.randn(n_params(cfg), cfg.n_features, device="cuda") * 0.1).requires_grad_()
    n = 20011
    x = torch.rand(n, S, 3, device="cuda")
    w = (torch.rand(n, S, device="cuda") > 0.25).float()
    w = w / w.sum(1, keepdim=True).clamp_min(1)
    lc = torch.from_numpy(log2_cells(cfg)).cuda()
    lf = lc[2] + (lc[-1] - 1.0 - lc[2]) * torch.rand(n, S, device="cuda")
    ref = encode_pixels_reference(x, w, table, cfg, lf, fade=1.0, bias=0.0)
    gout = torch.randn_like(ref)
    (gref,) = torch.autograd.grad(ref, table, gout)
    _poison_allocator(n * cfg.out_dim * 4)
    out = encode_pixels_triton(x, table, cfg, ht.Weights(w=w, log2_footprint=lf), coherent)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref.detach(), rtol=1e-5, atol=1e-6)
    (gout_t,) = torch.autograd.grad(out, table, gout)
    assert _rel(gout_t, gref) < 1e-5
