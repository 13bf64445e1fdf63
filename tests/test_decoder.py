"""The fused Triton decoder (backend/decoder_kernels.py, decoder_triton.py) and its choice
(model.DECODERS, XSCALE_DECODER) against the PyTorch decoder: in Triton's interpreter on the CPU,
and on CUDA (`gpu`) with the tensor cores' precisions and a short training run."""
import importlib.util
import shutil

import pytest
import torch

from backend.config import ModelConfig
from backend.errors import DeviceError
from backend.model import DECODER_ENV, Decoder
from conftest import TINY, cli, expect_error, gpu, needs_triton, run_triton_interpreted
from decoder_cases import batch, train_step, twins, widths, worst_relative


@needs_triton
def test_fused_decoder_in_triton_interpreter():
    """The kernels on CPU tensors through Triton's interpreter, in FP32 against the PyTorch
    decoder: every gradient, odd ray counts, every width the presets use
    (tests/interpreted_triton_decoder.py)."""
    r = run_triton_interpreted(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/interpreted_triton_decoder.py"],
                               timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]


SHARED_BUDGET = 200 * 1024      # bytes per block: an H100 has 227 KB, an A100 163 KB


@needs_triton
def test_backward_kernel_fits_in_shared_memory():
    """The backward kernel as auto launches it on CUDA (TF32, the presets' widths), compiled for an
    H100 (sm_90) without one: the shared memory it asks for fits (a launch asking for more
    fails: 881 KB with the loop software-pipelined)."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from backend import decoder_kernels as K
    cfg, launch = widths()[0], K.BWD_LAUNCH
    consts = dict(D=cfg.grid.out_dim, W=cfg.width, E=cfg.exposure_dim, BLOCK=launch.block, PER_RAY=True,
                  NEED_FEAT=True, NEED_CODE=True, PREC="tf32")
    names = list(inspect.signature(K._backward_kernel.fn).parameters)
    ints = {"code_stride", "N", "n_tiles", "TOTAL"}
    sig = {n: "constexpr" if n in consts else "i32" if n in ints else "*fp32" for n in names}
    src = ASTSource(fn=K._backward_kernel, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": launch.num_warps, "num_stages": launch.num_stages})
    assert 0 < kernel.metadata.shared <= SHARED_BUDGET, kernel.metadata.shared


def test_decoder_choice(monkeypatch):
    """auto: PyTorch (the fused kernels are opt-in until measured on a GPU) (and for float64 features, and for an explicit
    Triton decoder on the CPU outside the interpreter: the same function, computed the plain way);
    XSCALE_DECODER picks where auto would; an unknown name is refused with the choices."""
    monkeypatch.delenv(DECODER_ENV, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cfg = widths()[0]
    feat = torch.zeros(4, cfg.grid.out_dim)
    assert Decoder(cfg, 2).impl == "auto" and Decoder(cfg, 2).fused_precision(feat) is None
    monkeypatch.setenv("TRITON_INTERPRET", "1")                  # even where the kernels could run
    assert Decoder(cfg, 2).fused_precision(feat) is None
    monkeypatch.delenv("TRITON_INTERPRET")
    assert Decoder(cfg, 2, impl="triton").fused_precision(feat) is None
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert Decoder(cfg, 2, impl="triton").fused_precision(feat.double()) is None
    if importlib.util.find_spec("triton") is not None:
        assert Decoder(cfg, 2, impl="triton").fused_precision(feat) == "tf32"
        assert Decoder(cfg, 2, impl="triton-bf16").fused_precision(feat) == "bf16"
        assert Decoder(ModelConfig(width=48), 2, impl="triton").fused_precision(feat) is None   # not a power of 2
    monkeypatch.setenv(DECODER_ENV, "triton-fp32")
    assert Decoder(cfg, 2).impl == "triton-fp32" and Decoder(cfg, 2, impl="torch").impl == "torch"
    monkeypatch.setenv(DECODER_ENV, "cutlass")
    with pytest.raises(DeviceError, match="XSCALE_DECODER=cutlass: unknown decoder; choose auto, torch, triton, "
                                          "triton-fp32, triton-bf16"):
        Decoder(cfg, 2)


def test_unknown_decoder_is_a_one_line_error(run, tmp_path, monkeypatch):
    r = tmp_path / "run"
    shutil.copytree(run, r)
    monkeypatch.setenv(DECODER_ENV, "fast")
    res = cli("train", "--run", str(r), "--iters", "1", "--device", "cpu", "--preset", "small", timeout=300)
    expect_error(res, "XSCALE_DECODER=fast", "unset XSCALE_DECODER")


# --- on CUDA: tensor-core precisions -------------------------------------------------------------
# Tolerances against the FP32 PyTorch decoder: what the output needs (a held-out PSNR within
# 0.05 dB). Measured on an H100, TF32 and BF16 products miss them by far (rgb 0.107 off with TF32:
# SIREN's omega = 30 multiplies their rounding in every layer), which is why they are not a default;
# strict xfail, so that a kernel that meets them is noticed.
CUDA_TOL = {"triton-fp32": (2e-4, 1e-3), "triton": (4e-3, 3e-2), "triton-bf16": (3e-2, 0.2)}   # rgb abs, grad rel
TOO_INEXACT = pytest.mark.xfail(strict=True, reason="measured on an H100: TF32/BF16 products are too inexact for SIREN")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("impl", [pytest.param(k, marks=[TOO_INEXACT] if k != "triton-fp32" else [])
                                  for k in CUDA_TOL])
def test_fused_decoder_on_cuda(impl):
    cuda = torch.device("cuda")
    rgb_tol, grad_tol = CUDA_TOL[impl]
    for cfg in widths():
        ref, fused = twins(cfg, impl, cuda)
        for n in (333, 100_003):
            b = batch(cfg, n, cuda)
            want, got = train_step(ref, *b), train_step(fused, *b)
            err = worst_relative(want, got)
            rgb = (want.pop("rgb") - got.pop("rgb")).abs().max().item()
            assert rgb < rgb_tol and max(err.values()) < grad_tol, (n, rgb, err)
            code = ref.exposure[1]
            rgb = (ref.infer(b[0], b[1], code) - fused.infer(b[0], b[1], code)).abs().max().item()
            assert rgb < rgb_tol, (n, rgb)


@gpu
@pytest.mark.gpu
def test_training_with_the_fused_decoder_follows_pytorch(run, tmp_path, monkeypatch):
    """A short training run on CUDA: the fused decoder's (FP32, the one exact enough) loss and PSNR
    as the PyTorch decoder's."""
    from backend.train import train
    done = {}
    for name, impl in (("torch", "torch"), ("torch again", "torch"), ("triton-fp32", "triton-fp32")):
        r = tmp_path / name.replace(" ", "_")
        shutil.copytree(run, r)
        monkeypatch.setenv(DECODER_ENV, impl)
        done[name] = train(str(r), iters=60, device="cuda", preset="small", overrides=TINY)
    # the second PyTorch run shows CUDA's run-to-run spread (atomics) beside the fused decoder's difference
    seen = {k: (round(v["loss"], 6), round(v["psnr"], 3)) for k, v in done.items()}
    assert done["triton-fp32"]["loss"] == pytest.approx(done["torch"]["loss"], rel=0.03), seen
    assert abs(done["triton-fp32"]["psnr"] - done["torch"]["psnr"]) < 0.1, seen
