"""Level-parallel training pieces (backend/table_parallel.py) in one process: the split of the
levels, the group sizes, the kernels on a level set (Triton interpreter) and the regulariser.
Multi-process training with it is in test_distributed.py."""
import pytest
import torch

from backend.config import HashGridConfig, ModelConfig, OptimConfig, preset
from backend.encoding.layout import levels
from backend.errors import InputError
from backend.table_parallel import assign_levels, group_size
from conftest import needs_triton, run_triton_interpreted


def test_levels_are_split_and_balanced():
    lay = levels(HashGridConfig())              # reference: 6 dense levels, 10 hashed
    for G in (2, 3, 4, 8):
        parts = assign_levels(lay, G)
        assert sorted(i for p in parts for i in p) == list(range(16))
        assert all(p == sorted(p) and p for p in parts)
        hashed = [sum(lay[i].hashed for i in p) for p in parts]
        assert max(hashed) - min(hashed) <= 1             # the expensive levels dealt out evenly
    assert [sum(lay[i].hashed for i in p) for p in assign_levels(lay, 4)] == [3, 3, 2, 2]


def test_group_sizes():
    assert group_size("auto", 2, 2, 16) == 2
    assert group_size("auto", 4, 4, 16) == 4
    assert group_size("auto", 8, 8, 16) == 4            # at most 4 per group: 2 groups
    assert group_size("auto", 4, 2, 16) == 2            # groups stay within a machine
    assert group_size("auto", 2, 1, 16) == 1            # one process per machine: data parallel
    assert group_size("off", 4, 4, 16) == 1
    assert group_size("2", 4, 4, 16) == 2
    assert group_size("auto", 1, 1, 16) == 1
    with pytest.raises(InputError, match="XSCALE_TABLE_PARALLEL=3"):
        group_size("3", 4, 4, 16)


def test_grid_decay_on_own_levels_matches_the_model():
    """LevelParallel.regularise repeats Manifold.add_regulariser_grads' grid decay level by level."""
    from backend.model import Manifold
    from backend.table_parallel import LevelParallel
    tc = preset("small", "cpu")
    torch.manual_seed(0)
    model = Manifold(tc.model, [0, 0, 0], [1, 1, 1], 3)
    model.grid.table.data.normal_()
    decay = 0.37
    model.grid.table.grad = None
    model.add_regulariser_grads(OptimConfig(grid_decay=decay))
    expect = model.grid.table.grad.clone()
    lp = LevelParallel(model, 1, 2, 2, 64, torch.device("cpu"))   # one group: no process group needed
    lay = levels(tc.model.grid)
    assert lp.own_levels == [lay[i] for i in assign_levels(lay, 2)[1]]
    lp.assign_grads()                                   # no backward yet: zeros
    lp.regularise(OptimConfig(grid_decay=decay))
    for p, lv in zip(lp.params, lp.own_levels):
        assert torch.equal(p.grad, expect[lv.offset:lv.offset + lv.size])


_LEVEL_SET_CHECK = """
import torch
from backend.config import HashGridConfig
from backend.encoding import n_params
from backend.encoding.layout import levels, log2_cells
from backend.encoding.reference import encode_pixels_reference
from backend.encoding import triton_kernels as ht
cfg = HashGridConfig(n_levels=5, n_features=4, log2_table=11, base_res=4, per_level_scale=2.0)
assert [lv.res ** 3 > lv.size for lv in levels(cfg)] == [False, False, True, True, True]
torch.manual_seed(0)
table = torch.randn(n_params(cfg), cfg.n_features)
lc = torch.from_numpy(log2_cells(cfg))
S, N, L, F = 4, 37, cfg.n_levels, cfg.n_features
x = torch.rand(N, S, 3)
w = (torch.rand(N, S) > 0.3).float()
w = w / w.sum(1, keepdim=True).clamp_min(1)
lf = lc[0] + (lc[-1] - lc[0] - 1.0) * torch.rand(N, S)     # from level 0's cell to beyond the finest
for lfv in (lf, None):
    tab = table.clone().requires_grad_()
    ref = encode_pixels_reference(x, w, tab, cfg, lfv, fade=1.0, bias=0.25)
    gout = torch.randn_like(ref)
    ref.backward(gout)
    wts = ht.Weights(w=w, log2_footprint=lfv, fade=1.0, bias=0.25)
    for ids in ([1, 3], [0, 2, 4], [4], [0, 1, 2, 3, 4]):
        for launch in (ht.Launch(64, 2), ht.Launch(64, 2, per_level=False)):
            fwd = ht.level_set(cfg, ids, torch.device("cpu"), compact=False)
            bwd = ht.level_set(cfg, ids, torch.device("cpu"), compact=True)
            out = ht.forward_pixels(x, table, cfg, wts, launch, levels=fwd)
            cols = ref.detach().view(N, L, F)[:, ids].reshape(N, -1)
            torch.testing.assert_close(out, cols, rtol=1e-3, atol=5e-5)
            # gradient of the set's rows only, from grad_out of its columns
            g = ht.backward_pixels(x, gout.view(N, L, F)[:, ids].reshape(N, -1).contiguous(), cfg, wts,
                                   launch, levels=bwd)
            lay = levels(cfg)
            rows = torch.cat([tab.grad[lay[i].offset:lay[i].offset + lay[i].size] for i in ids])
            assert g.shape == rows.shape, (g.shape, rows.shape)
            torch.testing.assert_close(g, rows, rtol=1e-3, atol=5e-5)
print("ok")
"""


@needs_triton
def test_kernels_on_a_level_set_in_interpreter():
    """The fused pixel kernels restricted to some levels give those levels' columns of the full
    encoding and their rows of its gradient (with footprints: the coarsest level stays always on
    only where it is in the set)."""
    r = run_triton_interpreted(["-c", _LEVEL_SET_CHECK], timeout=900)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


_GLUE_CHECK = """
import torch
from backend.config import HashGridConfig, ModelConfig
from backend.model import Manifold
from backend.table_parallel import LevelParallel
from backend.encoding.triton_encoder import TritonEncoder
cfg = ModelConfig(grid=HashGridConfig(n_levels=5, n_features=4, log2_table=11, base_res=4, per_level_scale=2.0),
                  level_bias=0.25)
torch.manual_seed(0)
model = Manifold(cfg, [0, 0, 0], [1, 1, 1], 3)
model.grid.table.data.normal_()
cpu = torch.device("cpu")
grid = model.grid
fast = TritonEncoder(grid.cfg)          # on CPU tensors: the kernels in the interpreter
for member in (0, 1):
    lp = LevelParallel(model, member, 2, 2, 64, cpu)       # one group: no process group needed
    xyz = torch.rand(40, 4, 3)
    mask = torch.rand(40, 4) > 0.2
    fp = 2.0 ** (-8 * torch.rand(40, 4))
    w, lf = model.sub_sample_weights(xyz, mask, fp)
    x = grid.normalise(xyz)
    wts = lp.weights(w, lf)
    a = grid.encode_levels(x, wts, lp.own)             # CPU tensors: the PyTorch encoder
    b = fast.encode_levels(x, grid.table, wts, lp.own)
    assert a.shape == b.shape == (40, len(lp.own) * 4)
    torch.testing.assert_close(b, a, rtol=1e-3, atol=5e-5)
    g = torch.randn_like(a)
    torch.testing.assert_close(fast.encode_levels_backward(x, g, grid.table, wts, lp.own),
                               grid.encode_levels_backward(x, wts, lp.own, g), rtol=1e-3, atol=5e-5)
print("ok")
"""


@needs_triton
def test_level_parallel_encodes_with_the_kernels_as_with_the_reference():
    """The grid's level-subset encode and its backward through the fused kernels (Triton
    interpreter) equal the PyTorch reference path, with level parallel's sub-sample weights and
    footprints."""
    r = run_triton_interpreted(["-c", _GLUE_CHECK], timeout=900)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


def _all_to_all(sends, splits_of):
    """all_to_all_single of G processes simulated: process r sends `sends[r]` (flat) cut by its
    input splits; process q receives the q-th piece of every process, in process order."""
    def piece(r, q):
        cuts = splits_of(r)
        o = sum(cuts[:q])
        return sends[r][o:o + cuts[q]]
    return [torch.cat([piece(r, q) for r in range(len(sends))]) for q in range(len(sends))]


def test_exchanges_put_every_level_back_in_place():
    """The all_to_all layouts (uneven splits: processes own different numbers of levels),
    simulated without processes: features come back as the full (rays, levels) layout, and the
    gradients reach their levels' owners for every ray of the group."""
    import backend.table_parallel as tp
    from backend.model import Manifold
    model = Manifold(ModelConfig(grid=HashGridConfig(n_levels=7, log2_table=12)), [0, 0, 0], [1, 1, 1], 3)
    G, batch = 3, 10
    lps = [tp.LevelParallel(model, m, G, G, batch, torch.device("cpu")) for m in range(G)]
    assert len({len(lp.own) for lp in lps}) > 1                 # uneven level counts
    L, F, P = lps[0].L, lps[0].F, lps[0].P
    full = torch.randn(G * P, L, F)                             # every ray's features, rays by process
    sends = [full[:, lp.own].reshape(G * P, -1).reshape(-1) for lp in lps]
    recvs = _all_to_all(sends, lambda r: lps[r].own_splits)
    old = tp.dist.all_to_all_single
    try:
        for q, lp in enumerate(lps):
            tp.dist.all_to_all_single = lambda recv, send, output_split_sizes, input_split_sizes, group, _q=q: \
                recv.copy_(recvs[_q])
            assert torch.equal(lp.exchange_features(sends[q].view(G * P, -1)).view(P, L, F),
                               full[q * P:(q + 1) * P])
        grads = [torch.randn(P, L * F) for _ in range(G)]         # each process's rays' gradients
        captured = {}
        for q, lp in enumerate(lps):                              # what each process sends
            tp.dist.all_to_all_single = lambda recv, send, output_split_sizes, input_split_sizes, group, _q=q: \
                captured.__setitem__(_q, send.clone())
            lp.exchange_grads(grads[q][:P - 1] if q == 1 else grads[q])   # process 1: a short share
        grads[1][P - 1] = 0
        recvs = _all_to_all([captured[r] for r in range(G)], lambda r: lps[r].splits)
        for q, lp in enumerate(lps):
            tp.dist.all_to_all_single = lambda recv, send, output_split_sizes, input_split_sizes, group, _q=q: \
                recv.copy_(recvs[_q])
            got = lp.exchange_grads(grads[q])
            expect = torch.cat([grads[r].view(P, L, F)[:, lp.own] for r in range(G)]).reshape(G * P, -1)
            assert torch.equal(got, expect)
    finally:
        tp.dist.all_to_all_single = old


def test_strategy_is_chosen_once_from_the_processes_and_the_grid(monkeypatch):
    """One process; several: level parallel where the grid's encoder splits levels and
    XSCALE_TABLE_PARALLEL groups processes, else data parallel (tiny-cuda-nn: never split)."""
    from backend.distributed import Context
    from backend.model import Manifold
    from backend.table_parallel import LevelParallel
    from backend.train_strategy import DataParallel, OneProcess, choose
    model = Manifold(ModelConfig(grid=HashGridConfig(n_levels=7, log2_table=12)), [0, 0, 0], [1, 1, 1], 3)
    cpu = torch.device("cpu")
    assert type(choose(Context(0, 1, 0, cpu), model, 64, 4)) is OneProcess
    two = Context(0, 2, 0, cpu, local_world=2)
    for setting, kind in (("auto", LevelParallel), ("off", DataParallel)):
        monkeypatch.setenv("XSCALE_TABLE_PARALLEL", setting)
        assert type(choose(two, model, 64, 4)) is kind, setting
    monkeypatch.setenv("XSCALE_TABLE_PARALLEL", "auto")
    model.grid.backend = "tcnn"
    assert type(choose(two, model, 64, 4)) is DataParallel
