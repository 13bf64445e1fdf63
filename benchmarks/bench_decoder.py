"""The decoder alone, PyTorch against the fused Triton kernels (model.DECODERS), at the reference
preset's sizes on one GPU: training forward and forward + backward at the reference batch (rays/s),
the rendering forward (Decoder.infer) of a 1080p frame's pixels and of a 2832x2128 frame's
(a real capture's photo), and held-out PSNR after a short training run on a small procedural scene with each
decoder (its rendering path included; target: within 0.05 dB of PyTorch's).

    python benchmarks/bench_decoder.py --out results/decoder.json [--decoders torch,triton,triton-bf16]
        [--quality-decoders torch,triton] [--iters 1000] [--no-quality] [--sweep]

--sweep also times the fused kernels with other rays per tile and warps (decoder_kernels' launches).

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


class Inputs:
    """A training batch at the reference preset's sizes (per-ray exposure codes) and a big frame's
    pixels, on the GPU, and a PyTorch decoder whose parameters every decoder copies."""

    def __init__(self):
        self.cfg = PRESETS["reference"].config
        self.n = n = self.cfg.optim.batch_rays
        d, dev = self.cfg.model.grid.out_dim, torch.device("cuda")
        torch.manual_seed(0)
        self.feat = (torch.randn(n, d, device=dev) * 0.05).requires_grad_()
        self.dirs = F.normalize(torch.randn(n, 3, device=dev), dim=-1)
        self.view = torch.randint(0, 64, (n,), device=dev)
        self.grad = torch.randn(n, 3, device=dev)
        self.rfeat = torch.randn(max(FRAMES.values()), d, device=dev) * 0.05       # frames' pixels
        self.rdirs = F.normalize(torch.randn(len(self.rfeat), 3, device=dev), dim=-1)
        self.base = Decoder(self.cfg.model, 64, impl="torch").to(dev)

    def decoder(self, impl: str) -> Decoder:
        dec = Decoder(self.cfg.model, 64, impl=impl).to(self.feat.device)
        dec.load_state_dict(self.base.state_dict())
        return dec

    def train_ms(self, dec: Decoder, repeat: int) -> tuple[float, float]:
        """Training forward and forward+backward, ms."""
        def fwd():
            return dec(self.feat, self.dirs, F.embedding(self.view, dec.exposure), linear=True)

        def fwd_bwd():
            (fwd() * self.grad).sum().backward()
        return best_ms(fwd, repeat), best_ms(fwd_bwd, repeat)

    @torch.no_grad()
    def render_ms(self, dec: Decoder, px: int, repeat: int) -> float:
        code = dec.exposure.mean(0)
        return best_ms(lambda: dec.infer(self.rfeat[:px], self.rdirs[:px], code, linear=True), repeat)


def speed_rows(rows: list[dict], x: Inputs, impls: list[str], repeat: int) -> None:
    fb_torch = None
    for impl in impls:
        dec = x.decoder(impl)
        f_ms, fb_ms = x.train_ms(dec, repeat)
        fb_torch = fb_ms if impl == "torch" else fb_torch
        report(rows, {"metric": f"{impl}: training forward, {x.n} rays", "value": f_ms, "unit": "ms"})
        report(rows, {"metric": f"{impl}: training forward+backward", "value": fb_ms, "unit": "ms"})
        report(rows, {"metric": f"{impl}: training rays/s (decoder alone)", "value": x.n / fb_ms / 1e3, "unit": "M rays/s"})
        if fb_torch and impl != "torch":
            report(rows, {"metric": f"{impl}: forward+backward speed-up over torch", "value": fb_torch / fb_ms, "unit": "x"})
        for name, px in FRAMES.items():
            report(rows, {"metric": f"{impl}: render forward {name} ({px / 1e6:.1f} M px)",
                          "value": x.render_ms(dec, px, repeat), "unit": "ms"})
        del dec
        torch.cuda.empty_cache()


def sweep_rows(rows: list[dict], x: Inputs, repeat: int) -> None:
    """The TF32 kernels' times with other rays per tile and warps (decoder_kernels.FWD_LAUNCH,
    BWD_LAUNCH): which launch to keep."""
    from backend import decoder_kernels as K
    dec, keep = x.decoder("triton"), (K.FWD_LAUNCH, K.BWD_LAUNCH)
    px = FRAMES["2832x2128"]
    for block, warps in ((64, 4), (128, 4), (128, 8), (256, 8)):
        K.FWD_LAUNCH = K.Launch(block, warps)
        report(rows, {"metric": f"sweep: render forward 2832x2128, {block} rays x {warps} warps",
                      "value": x.render_ms(dec, px, repeat), "unit": "ms"})
    K.FWD_LAUNCH = keep[0]
    for block, warps in ((32, 4), (64, 4), (64, 8), (128, 8)):
        K.BWD_LAUNCH = K.Launch(block, warps)
        report(rows, {"metric": f"sweep: training forward+backward, backward {block} rays x {warps} warps",
                      "value": x.train_ms(dec, repeat)[1], "unit": "ms"})
    K.FWD_LAUNCH, K.BWD_LAUNCH = keep


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
    ap.add_argument("--sweep", action="store_true", help="also time the kernels' other tile sizes and warps")
    a = ap.parse_args()
    rows: list[dict] = []
    x = Inputs()
    speed_rows(rows, x, a.decoders.split(","), a.repeat)
    if a.sweep:
        sweep_rows(rows, x, a.repeat)
    del x
    torch.cuda.empty_cache()
    if not a.no_quality:
        quality_rows(rows, a.quality_decoders.split(","), Path(a.work), a.iters, a.batch_rays)
    print_table(rows, "Decoder: PyTorch vs fused Triton")
    write_json(a.out, rows)


if __name__ == "__main__":
    main()
