"""Close-up quality vs. hash-grid settings, on the CPU-sized multi-scale procedural scene.

    python benchmarks/ablate_closeups.py --work /tmp/ablate [--iters 600]

Trains the `small` preset three times on the same cache: as is (16 levels, 2^17 rows), with 12
levels (no levels finer than ~1/1170 of the scene), and with a 4x larger table (2^19 rows, fewer
hash collisions), and prints held-out PSNR/SSIM for far and close-up views. It asks where the fine
grain on close-ups comes from (benchmarks/NOTES.md, quality section)."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend import events  # noqa: E402
from backend.cache import build_cache, cache_matches  # noqa: E402
from backend.evaluate import evaluate  # noqa: E402
from backend.synthetic.procedural import make_scene  # noqa: E402
from backend.train import train  # noqa: E402

VARIANTS = {"16 levels, 2^17 rows (small)": {}, "12 levels, 2^17 rows": {"model.grid.n_levels": 12},
            "16 levels, 2^19 rows": {"log2_table": 19}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/xscale_ablate")
    ap.add_argument("--views", type=int, default=40)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    events.set_stream(open(work / "events.log", "w"))
    scene, base = work / "scene", work / "cache"
    make_scene(scene, a.views, a.width, a.height, ss_ref=3, layout="multiscale", workers=2, reuse=True)
    if not cache_matches(str(base), str(scene), 2, 8, None, None):
        build_cache(str(scene), str(base), ss=2, test_every=8, device=a.device)
    close = {v["name"]: v["closeup"] for v in json.loads((scene / "views.json").read_text())["views"]}
    print(f"{'variant':32s} {'group':>10s} {'PSNR':>7s} {'SSIM':>7s} {'train s':>8s}")
    for k, (name, overrides) in enumerate(VARIANTS.items()):
        run = work / f"run{k}"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(base, run)
        t = time.time()
        train(str(run), iters=a.iters, device=a.device, preset="small", overrides=overrides)
        secs = time.time() - t
        views = evaluate(str(run), device=a.device, write_images=False)["views"]
        for group, flag in (("close", True), ("far", False)):
            vs = [v for v in views if close[v["view"]] == flag and "psnr" in v]
            label = f"{group} ({len(vs)})"
            print(f"{name:32s} {label:>10s} {np.mean([v['psnr'] for v in vs]):7.2f} "
                  f"{np.mean([v['ssim'] for v in vs]):7.3f} {secs:8.0f}", flush=True)


if __name__ == "__main__":
    main()
