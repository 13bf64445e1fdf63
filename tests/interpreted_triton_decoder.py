"""The fused decoder's Triton kernels (backend/decoder_kernels.py) on CPU tensors under Triton's
interpreter, in FP32 against the PyTorch decoder. Collected only through
test_decoder.py::test_fused_decoder_in_triton_interpreter, which sets TRITON_INTERPRET=1."""
import io

import pytest
import torch

from backend.model import Manifold
from conftest import events_of
from decoder_cases import batch, train_step, twins, widths, worst_relative

CPU = torch.device("cpu")
TOL = 2e-4      # FP32 against FP32 summed in another order; SIREN's omega = 30 amplifies roundings


@pytest.mark.parametrize("cfg", widths(), ids=lambda c: f"D{c.grid.out_dim}-W{c.width}-E{c.exposure_dim}")
@pytest.mark.parametrize("n", [1, 200, 333])
def test_training_forward_and_every_gradient(cfg, n):
    """Per-ray exposure codes, ray counts below, between and above the tiles (64 and 128 rays):
    the output and the gradients of the features and of every parameter (layers, lighting
    code, FiLM blocks, exposure codes and their affine) as the PyTorch decoder's."""
    ref, fused = twins(cfg, "triton-fp32", CPU)
    assert fused.fused_precision(torch.zeros(1, cfg.grid.out_dim)) == "ieee"
    b = batch(cfg, n, CPU)
    want, got = train_step(ref, *b), train_step(fused, *b)
    err = worst_relative(want, got)
    assert max(err.values()) < TOL, err
    assert "exposure" in got and "light" in got and "feat" in got


def test_one_exposure_code_with_gradients():
    """One code for every ray (a mean exposure with gradients on): the code's gradient is the
    sum over the rays."""
    cfg = widths()[0]
    ref, fused = twins(cfg, "triton-fp32", CPU)
    b = batch(cfg, 150, CPU)
    err = worst_relative(train_step(ref, *b, one_code=True), train_step(fused, *b, one_code=True))
    assert max(err.values()) < TOL, err


@pytest.mark.parametrize("cfg", widths(), ids=lambda c: f"D{c.grid.out_dim}-W{c.width}")
def test_rendering_forward_folds_one_exposure(cfg):
    """Decoder.infer (rendering: one exposure code folded into the weights) as the PyTorch one,
    with the mean code and a photo's; sRGB too; no rays, no output."""
    ref, fused = twins(cfg, "triton-fp32", CPU)
    feat, dirs, _, _ = batch(cfg, 333, CPU)
    for code in (ref.exposure.mean(0), ref.exposure[3]):
        want = ref.infer(feat, dirs, code)
        got = fused.infer(feat, dirs, code)
        assert (got - want).abs().max().item() < 1e-5
    assert fused.infer(feat[:0], dirs[:0], code).shape == (0, 3)


def test_manifold_training_step_through_the_fused_decoder():
    """The model's training forward (hash grid, footprints, gains) with the fused decoder: the
    hash table's gradient, which flows through the kernels' feature gradient, as PyTorch's."""
    from backend.config import HashGridConfig, ModelConfig
    torch.manual_seed(0)
    cfg = ModelConfig(grid=HashGridConfig(log2_table=10))
    ms = [Manifold(cfg, [0, 0, 0], [1, 1, 1], n_views=4) for _ in range(2)]
    ms[1].load_state_dict(ms[0].state_dict())
    ms[0].decoder.impl, ms[1].decoder.impl = "torch", "triton-fp32"
    g = torch.Generator().manual_seed(3)
    xyz, mask = torch.rand(97, 4, 3, generator=g), torch.rand(97, 4, generator=g) > 0.3
    dirs = torch.nn.functional.normalize(torch.randn(97, 3, generator=g), dim=-1)
    view = torch.randint(0, 4, (97,), generator=g)
    grads = []
    for m in ms:
        m.grid.table.data += 1e-2 * torch.randn(m.grid.table.shape, generator=torch.Generator().manual_seed(4))
        m.zero_grad()
        m(xyz, mask, dirs, view=view).sum().backward()
        grads.append(m.grid.table.grad)
    assert grads[0].abs().max() > 0
    assert ((grads[0] - grads[1]).abs().max() / grads[0].abs().max()).item() < TOL


@pytest.mark.parametrize("fwd,bwd", [((32, 4), (16, 4)), ((256, 8), (128, 8))])
def test_other_launches(fwd, bwd, monkeypatch):
    """The tile sizes bench_decoder --sweep tries (and the smallest tl.dot takes) compute the
    same: 333 rays in tiles of 16 to 256."""
    from backend import decoder_kernels as K
    monkeypatch.setattr(K, "FWD_LAUNCH", K.Launch(*fwd))
    monkeypatch.setattr(K, "BWD_LAUNCH", K.Launch(*bwd))
    cfg = widths()[0]
    ref, fused = twins(cfg, "triton-fp32", CPU)
    b = batch(cfg, 333, CPU)
    err = worst_relative(train_step(ref, *b), train_step(fused, *b))
    assert max(err.values()) < TOL, err


class _Unlaunchable:
    """A kernel whose launch fails as the backward's did on an H100 before it fitted."""

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            from triton.runtime.errors import OutOfResources
            raise OutOfResources(913960, 232448, "shared memory")
        return launch


@pytest.fixture
def log_lines(monkeypatch):
    """The fused kernels' launch memory cleared; the log events this test emits."""
    from backend import decoder_triton, events
    monkeypatch.setattr(decoder_triton, "_launched", set())
    monkeypatch.setattr(decoder_triton, "_failed", set())
    out = io.StringIO()
    monkeypatch.setattr(events, "_stream", out)
    return lambda: [e["message"] for e in events_of(out.getvalue()) if e["event"] == "log"]


def test_a_backward_that_cannot_launch_falls_back_to_pytorch(monkeypatch, log_lines):
    """Training steps go on, with the PyTorch decoder's gradients, and say so once."""
    from backend import decoder_kernels as K
    monkeypatch.setattr(K, "_backward_kernel", _Unlaunchable())
    cfg = widths()[0]
    ref, fused = twins(cfg, "triton-fp32", CPU)
    for seed in (1, 2):
        b = batch(cfg, 200, CPU, seed=seed)
        err = worst_relative(train_step(ref, *b), train_step(fused, *b))
        assert max(err.values()) < TOL, err
    msgs = log_lines()
    assert len(msgs) == 1, msgs
    assert msgs[0].startswith("the fused decoder's backward kernel cannot run on this GPU (OutOfResources: "
                              "out of resource: shared memory, Required: 913960"), msgs
    assert msgs[0].endswith("the PyTorch decoder computes it instead")


def test_a_forward_that_cannot_launch_falls_back_to_pytorch(monkeypatch, log_lines):
    """Rendering (Decoder.infer) and the training forward give the PyTorch decoder's colours."""
    from backend import decoder_kernels as K
    monkeypatch.setattr(K, "_forward_kernel", _Unlaunchable())
    cfg = widths()[0]
    ref, fused = twins(cfg, "triton-fp32", CPU)
    feat, dirs, view, _ = batch(cfg, 150, CPU)
    for _ in range(2):
        assert (fused.infer(feat, dirs, ref.exposure[3]) - ref.infer(feat, dirs, ref.exposure[3])).abs().max() < 1e-5
    code = ref.exposure[view]
    assert (fused(feat, dirs, code, linear=True) - ref(feat, dirs, code, linear=True)).abs().max() < TOL
    assert [m.split(" (")[0] for m in log_lines()] == ["the fused decoder's forward kernel cannot run on this GPU"] * 2
