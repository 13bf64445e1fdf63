"""The hash grid backward's measurement scatters (triton_kernels Launch.scatter, timed by
benchmarks/bench_grid_backward.py, not used by training): runs of shared corners summed on the
chip give the reference's gradient on rays sorted in space (benchmarks/ray_sort.py); plain
stores do not."""
from __future__ import annotations

import pytest
import torch

from benchmarks.ray_sort import morton_codes, sort_batch, spatial_order
from conftest import needs_triton, run_triton_interpreted


def _interleave(q: tuple[int, int, int], bits: int) -> int:
    """Bit b of axis d goes to bit 3b + d: the Morton code, one bit at a time."""
    return sum(((q[d] >> b) & 1) << (3 * b + d) for b in range(bits) for d in range(3))


def surface_rays(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n shuffled rays of 4 sub-samples on a wavy surface (a pixel's footprint apart), a few
    sub-samples missed (mask False, their position 0): what the ray cache gives training."""
    g = torch.Generator().manual_seed(seed)
    uv = torch.rand(n, 1, 2, generator=g) * 0.8 + 0.1 + 2e-3 * torch.rand(n, 4, 2, generator=g)
    z = 0.5 + 0.1 * torch.sin(9 * uv[..., :1]) * torch.cos(7 * uv[..., 1:])
    xyz = torch.cat([uv, z], -1)
    mask = torch.rand(n, 4, generator=g) > 0.1
    mask[:, 1] |= ~mask.any(1)
    return xyz.masked_fill(~mask[..., None], 0.0), mask


@pytest.mark.parametrize("bits", [10, 21])
def test_morton_codes_interleave_the_quantised_axes(bits):
    g = torch.Generator().manual_seed(bits)
    p = torch.rand(300, 3, generator=g) * torch.tensor([5.0, 0.1, 2.0]) - 1.0
    p[0], p[1] = p.amin(0), p.amax(0)          # the box's corners: codes 0 and all ones
    lo, hi = p.amin(0), p.amax(0)
    q = ((p - lo) * (2 ** bits / (hi - lo))).floor().long().clamp_max(2 ** bits - 1)   # cells, float32
    assert q.min() == 0 and q.max() == 2 ** bits - 1 and len(set(q[:, 1].tolist())) > 200
    got = morton_codes(p, bits).tolist()
    assert got == [_interleave(tuple(int(v) for v in row), bits) for row in q]
    assert got[0] == 0 and got[1] == 2 ** (3 * bits) - 1


def test_spatial_order_sorts_rays_and_keeps_every_one():
    """A permutation of the rays, keyed by each ray's first hit sub-sample; neighbours in the
    sorted batch are neighbours on the surface (about the points' spacing, 20x closer than shuffled)."""
    xyz, mask = surface_rays(4000)
    perm = spatial_order(xyz, mask)
    assert sorted(perm.tolist()) == list(range(4000))
    first = xyz[torch.arange(4000), mask.to(torch.uint8).argmax(1)]
    assert (first != 0).all()                  # a missed sub-sample (at 0) never keys a ray
    step = lambda p: (p[1:] - p[:-1]).norm(dim=1).median().item()  # noqa: E731
    assert step(first[perm]) < 1.5 * (0.64 / 4000) ** 0.5 and step(first[perm]) * 20 < step(first)
    b = sort_batch({"xyz": xyz, "mask": mask, "view": torch.arange(4000)})
    assert torch.equal(b["xyz"], xyz[b["view"]]) and torch.equal(b["mask"], mask[b["view"]])
    assert spatial_order(xyz[:0], mask[:0]).shape == (0,)


_INTERPRETED = """
import torch
from backend.config import HashGridConfig
from backend.encoding import n_params
from backend.encoding import triton_kernels as ht
from backend.encoding.layout import levels, log2_cells
from backend.encoding.reference import encode_pixels_reference
from benchmarks.ray_sort import sort_batch
from test_hashgrid_scatter import surface_rays
cfg = HashGridConfig(n_levels=5, n_features=4, log2_table=12, base_res=6, per_level_scale=2.0)
sizes = [lv.size for lv in levels(cfg)]
xyz, mask = surface_rays(100)
b = sort_batch({"xyz": xyz, "mask": mask})
x, mask = b["xyz"], b["mask"]
w = mask.float() / mask.float().sum(1, keepdim=True)
lc = torch.from_numpy(log2_cells(cfg))
lf = lc[1] + (lc[-1] - lc[1]) * torch.rand(100, 4)     # footprints: fine levels off for some
table = (torch.randn(n_params(cfg), cfg.n_features) * 0.1).requires_grad_()
ref = encode_pixels_reference(x, w, table, cfg, lf, fade=1.0, bias=0.25)
gout = torch.randn_like(ref)
ref.backward(gout)
wts = ht.Weights(w=w, log2_footprint=lf, fade=1.0, bias=0.25)
L = ht.Launch
for launch in (L(64, 2, scatter="segmented"), L(64, 2, per_level=False, scatter="segmented", segment_rows=sizes[1]),
               L(128, 8, scatter="segmented", segment_rows=sizes[2])):
    got = ht.backward_pixels(x, gout, cfg, wts, launch)
    torch.testing.assert_close(got, table.grad, rtol=1e-3, atol=5e-5, msg=str(launch))
# Level-parallel training's compact level sets, segmented.
for ids in ([1, 3, 4],):
    lset = ht.level_set(cfg, ids, torch.device("cpu"), compact=True)
    cols = torch.cat([gout[:, i * 4:(i + 1) * 4] for i in ids], 1)
    got = ht.backward_pixels(x, cols, cfg, wts, L(64, 2, scatter="segmented"), levels=lset)
    want = torch.cat([table.grad[levels(cfg)[i].rows] for i in ids])
    torch.testing.assert_close(got, want, rtol=1e-3, atol=5e-5)
# Plain stores (the benchmark's bound) lose the sums of shared rows: not a gradient.
wrong = ht.backward_pixels(x, gout, cfg, wts, L(64, 2, scatter="store"))
assert (wrong - table.grad).abs().max() > 0.1 * table.grad.abs().max()
print("ok")
"""


@needs_triton
def test_segmented_backward_in_triton_interpreter():
    """Sorted surface rays (4 sub-samples, some missed, footprints; 100 rays: blocks of 64 and 128
    points with a partial last one): the backward summing runs on the chip, on every level or
    below a size, per level or all levels per program, on a compact level set, equals the
    reference's gradient; plain stores do not."""
    r = run_triton_interpreted(["-c", "import sys; sys.path.insert(0, 'tests')\n" + _INTERPRETED], timeout=600)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


@needs_triton
@pytest.mark.parametrize("scatter", ["atomic", "segmented", "store"])
def test_backward_compiles_for_an_h100(scatter):
    """Each scatter of the backward kernel, compiled for sm_90 without a GPU (as the benchmark
    launches it on an H100; training launches "atomic")."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from backend.encoding import triton_kernels as K
    launch = K.Launch(128, 8, scatter=scatter, segment_rows=2 ** 21)
    consts = dict(S=4, F=8, L=16, BLOCK=launch.block, SMOOTH=True, PER_LEVEL=True, HAS_W=True, FOOT=True,
                  SCATTER=K.SCATTERS.index(scatter))
    names = list(inspect.signature(K._bwd_kernel.fn).parameters)
    sig = {n: "constexpr" if n in consts else "i32" if n in ("N", "on_level", "seg_rows")
           else "fp32" if n in ("fade_inv", "bias") else "*i64" if n == "meta_ptr" else "*fp32" for n in names}
    src = ASTSource(fn=K._bwd_kernel, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": launch.num_warps})
    ptx = kernel.asm["ptx"]
    assert ("red.global" in ptx or "atom.global" in ptx) == (scatter != "store")
