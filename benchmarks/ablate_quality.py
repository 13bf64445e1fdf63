"""Quality ablation on the realistic capture scene: train model/regulariser variants on the same
ray cache and score each against the clean ground truth: held-out far and close views (PSNR,
SSIM), magnified views 2x/4x/8x closer than the nearest photo (PSNR, speckle %), and the held-out
curve (best point, and the last step's distance from it).

    python benchmarks/ablate_quality.py --scene-kind capture-sparse --out results/ablate.json \
        --variant paper='{"model.level_fade": 0, "model.omega_feat": 30}' --variant defaults='{}'

Variants are TrainConfig overrides (backend.config.apply_overrides: option names or dotted paths)
on top of --preset. Training runs in this process through backend.train.Trainer (no checkpoint
round trips between curve points). Prints a table as its last lines."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from backend import distributed, events  # noqa: E402
from backend.cache import build_cache, cache_matches  # noqa: E402
from backend.config import apply_overrides, preset, with_value  # noqa: E402
from backend.meshio import load_mesh  # noqa: E402
from backend.metrics import psnr, speckle_fraction, ssim  # noqa: E402
from backend.synthetic.capture import make_capture  # noqa: E402
from backend.synthetic.truth import load_truth  # noqa: E402
from backend.raster import Rasterizer  # noqa: E402
from backend.render import render_srgb  # noqa: E402
from backend.runfolder import RunFolder  # noqa: E402
from backend.train import Trainer  # noqa: E402
from common import device_name, sync  # noqa: E402
from quality_scoring import capture_views  # noqa: E402


def score(model, rast, views, ss: int) -> dict:
    """Mean PSNR, SSIM, speckle % and the reference's speckle % per view group of an in-memory model."""
    model.eval()
    per: dict[str, list] = {}
    for v in views:
        pred, _ = render_srgb(model, rast, v.cam, ss)
        per.setdefault(v.group, []).append(
            (psnr(pred, v.gt, v.mask), ssim(pred, v.gt, v.mask), 100 * speckle_fraction(pred, v.mask),
             100 * speckle_fraction(v.gt, v.mask)))
    model.train()
    return {g: np.mean(np.array(r, np.float64), 0).tolist() for g, r in per.items()}


def heldout_psnr(model, rast, views, ss: int) -> float:
    """The curve's point: mean PSNR over the held-out views."""
    model.eval()
    p = [psnr(render_srgb(model, rast, v.cam, ss)[0], v.gt, v.mask) for v in views]
    model.train()
    return float(np.mean(p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scene-kind", default="capture-sparse", choices=["capture-sparse", "capture-dense"])
    ap.add_argument("--size", help="NxWxH of the capture (default: the variant's)")
    ap.add_argument("--work", default="/tmp/xscale_ablate")
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="auto")
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--batch-rays", type=int, default=1 << 18)
    ap.add_argument("--eval-every", type=int, default=300)
    ap.add_argument("--ss", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--prepare-only", action="store_true", help="make the scene and its cache, then stop")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="a named set of TrainConfig overrides (repeatable)")
    a = ap.parse_args()
    events.set_stream(sys.stderr, quiet=True)
    work = Path(a.work)
    variant = a.scene_kind.split("-")[1]
    size = [int(v) for v in a.size.split("x")] if a.size else [None] * 3
    t0 = time.perf_counter()
    scene = make_capture(work / a.scene_kind, variant, *size, workers=a.workers, reuse=True)
    truth = load_truth(scene)
    base = work / f"{a.scene_kind}_cache_ss{a.ss}"
    if not cache_matches(str(base), str(scene), a.ss, truth.test_every, None, None):
        build_cache(str(scene), str(base), ss=a.ss, test_every=truth.test_every, device=a.device)
    print(f"scene {scene} and cache ready in {time.perf_counter() - t0:.0f} s", flush=True)
    if a.prepare_only:
        return
    ctx = distributed.setup(a.device)
    rast = Rasterizer(load_mesh(RunFolder(base).settings().mesh), ctx.device)
    views = capture_views(truth, rast)
    held = [v for v in views if v.group in ("far", "close")]
    variants = dict(v.split("=", 1) for v in a.variant) or {"defaults": "{}"}
    results = []
    for name, overrides in variants.items():
        run = base                      # Trainer only reads the run folder (nothing is saved here)
        t_var = time.perf_counter()
        tc = apply_overrides(preset(a.preset, ctx.device.type), {"batch_rays": a.batch_rays, **json.loads(overrides)})
        tc = with_value(tc, "iters", a.iters)
        t = Trainer(ctx, RunFolder(run), tc, None)
        curve, train_s = [], 0.0
        while t.step_n < a.iters:
            sync()
            ts = time.perf_counter()
            for _ in range(min(a.eval_every, a.iters - t.step_n)):
                t.step()
            sync()
            train_s += time.perf_counter() - ts
            curve.append((t.step_n, heldout_psnr(t.model, rast, held, a.ss)))
        final = score(t.model, rast, views, a.ss)
        best = max(p for _s, p in curve)
        rec = {"variant": name, "overrides": json.loads(overrides), "train_s": train_s, "curve": curve,
               "best_minus_last": best - curve[-1][1], "groups": final}
        results.append(rec)
        print(f"{name}: " + ", ".join(f"{g} {v[0]:.2f}/{v[1]:.3f}/{v[2]:.3f}%" for g, v in final.items())
              + f"; curve {[round(p, 2) for _s, p in curve]}; train {train_s:.0f} s, "
              f"all {time.perf_counter() - t_var:.0f} s", flush=True)
        del t
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"device": device_name(), "args": vars(a), "results": results}, indent=1))
    groups = list(results[0]["groups"])
    print(f"\nQuality ablation -- {a.scene_kind}, {a.iters} steps x {a.batch_rays} rays, ss {a.ss} -- {device_name()}")
    print("PSNR dB / SSIM per group (magnified: PSNR / speckle %); ground-truth speckle: "
          + ", ".join(f"{g} {results[0]['groups'][g][3]:.3f}%" for g in groups if g.startswith("mag")))
    head = f"{'variant':18s}" + "".join(f"{g:>16s}" for g in groups) + f"{'best-last':>10s}{'train s':>8s}"
    print(head)
    for r in results:
        cells = "".join(f"{v[0]:7.2f}/{(v[2] if g.startswith('mag') else v[1]):7.3f}"
                        for g, v in r["groups"].items())
        print(f"{r['variant'][:18]:18s}{cells}{r['best_minus_last']:10.2f}{r['train_s']:8.0f}")


if __name__ == "__main__":
    main()
