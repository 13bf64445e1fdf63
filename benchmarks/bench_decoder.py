"""The decoder alone, PyTorch against the fused Triton kernels (model.DECODERS), at the reference
preset's sizes on one GPU: training forward and forward + backward at the reference batch (rays/s),
the rendering forward (Decoder.infer) of a 1080p frame's pixels and of a 2832x2128 frame's
(a real capture's photo), and held-out PSNR after a short training run on a small procedural scene with each
decoder (its rendering path included; target: within 0.05 dB of PyTorch's).

    python benchmarks/bench_decoder.py --out results/decoder.json [--decoders torch,triton,triton-bf16]
        [--quality-decoders torch,triton] [--iters 1000] [--no-quality]

Prints a table (metric, value, target, ratio) as its last lines."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend import events  # noqa: E402
from backend.cache import build_cache  # noqa: E402
from backend.config import PRESETS  # noqa: E402
from backend.evaluate import evaluate  # noqa: E402
from backend.model import DECODER_ENV, Decoder  # noqa: E402
from backend.synthetic.procedural import make_scene  # noqa: E402
from backend.train import train  # noqa: E402
from common import Timer, print_table, report, write_json  # noqa: E402

FRAMES = {"1920x1080": 1920 * 1080, "2832x2128": 2832 * 2128}
PSNR_TARGET = 0.05          # dB, |fused - PyTorch| held out


def best_ms(fn, repeat: int) -> float:
    fn()                                    # compile / warm up
    times = []
    for _ in range(repeat):
        with Timer() as t:
            fn()
        times.append(t.s * 1e3)
    return min(times)


def speed_rows(rows: list[dict], impls: list[str], repeat: int) -> None:
    cfg = PRESETS["reference"].config
    n = cfg.optim.batch_rays
    dev = torch.device("cuda")
    torch.manual_seed(0)
    feat = (torch.randn(n, cfg.model.grid.out_dim, device=dev) * 0.05).requires_grad_()
    dirs = F.normalize(torch.randn(n, 3, device=dev), dim=-1)
    view = torch.randint(0, 64, (n,), device=dev)
    grad = torch.randn(n, 3, device=dev)
    rfeat = torch.randn(max(FRAMES.values()), cfg.model.grid.out_dim, device=dev) * 0.05    # frames' pixels
    rdirs = F.normalize(torch.randn(len(rfeat), 3, device=dev), dim=-1)
    base = Decoder(cfg.model, 64, impl="torch").to(dev)
    fb_torch = None
    for impl in impls:
        dec = Decoder(cfg.model, 64, impl=impl).to(dev)
        dec.load_state_dict(base.state_dict())

        def fwd():
            return dec(feat, dirs, F.embedding(view, dec.exposure), linear=True)

        def fwd_bwd():
            (fwd() * grad).sum().backward()

        f_ms = best_ms(fwd, repeat)
        fb_ms = best_ms(fwd_bwd, repeat)
        fb_torch = fb_ms if impl == "torch" else fb_torch
        report(rows, {"metric": f"{impl}: training forward, {n} rays", "value": f_ms, "unit": "ms"})
        report(rows, {"metric": f"{impl}: training forward+backward", "value": fb_ms, "unit": "ms"})
        report(rows, {"metric": f"{impl}: training rays/s (decoder alone)", "value": n / fb_ms / 1e3, "unit": "M rays/s"})
        if fb_torch and impl != "torch":
            report(rows, {"metric": f"{impl}: forward+backward speed-up over torch", "value": fb_torch / fb_ms, "unit": "x"})
        code = dec.exposure.mean(0).detach()
        for name, px in FRAMES.items():
            with torch.no_grad():
                ms = best_ms(lambda: dec.infer(rfeat[:px], rdirs[:px], code, linear=True), repeat)
            report(rows, {"metric": f"{impl}: render forward {name} ({px / 1e6:.1f} M px)", "value": ms, "unit": "ms"})
        del dec
        torch.cuda.empty_cache()


def quality_rows(rows: list[dict], impls: list[str], work: Path, iters: int, batch: int) -> None:
    """Held-out PSNR after the same short training run with each decoder."""
    scene = make_scene(work / "scene", 24, 640, 480, ss_ref=2, workers=8, reuse=True)
    events.set_stream(open(os.devnull, "w"))
    psnr = {}
    for impl in impls:
        os.environ[DECODER_ENV] = impl
        run = work / f"run-{impl}"
        build_cache(str(scene), str(run), ss=2, test_every=8, device="cuda", overwrite=True)
        with Timer() as t:
            train(str(run), iters=iters, device="cuda", preset="reference", overrides={"batch_rays": batch},
                  overwrite=True)
        psnr[impl] = evaluate(str(run), device="cuda", write_images=False)["mean"]["psnr"]
        report(rows, {"metric": f"{impl}: held-out PSNR after {iters} x {batch} rays ({t.s:.0f} s)",
                      "value": psnr[impl], "unit": "dB"})
    os.environ.pop(DECODER_ENV, None)
    for impl in impls:
        if impl != "torch" and "torch" in psnr:
            report(rows, {"metric": f"{impl}: |held-out PSNR - torch's|", "value": abs(psnr[impl] - psnr["torch"]),
                          "target": PSNR_TARGET, "higher_is_better": False, "unit": "dB"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/decoder.json")
    ap.add_argument("--work", default="/tmp/xscale_bench_decoder")
    ap.add_argument("--decoders", default="torch,triton,triton-fp32,triton-bf16")
    ap.add_argument("--quality-decoders", default="torch,triton,triton-bf16")
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--batch-rays", type=int, default=262144)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-quality", action="store_true")
    a = ap.parse_args()
    rows: list[dict] = []
    speed_rows(rows, a.decoders.split(","), a.repeat)
    if not a.no_quality:
        quality_rows(rows, a.quality_decoders.split(","), Path(a.work), a.iters, a.batch_rays)
    print_table(rows, "Decoder: PyTorch vs fused Triton")
    write_json(a.out, rows)


if __name__ == "__main__":
    main()
