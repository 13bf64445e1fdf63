"""End-to-end GPU benchmark on the procedural scene: cache, training rate (rays/s, data loading
included), held-out PSNR over time, render frame time at 1920x1080 and 3840x2160 with 2x2
supersampling on a subdivided (>= 5 M triangle) copy of the mesh, with image writing overlapped.

    python benchmarks/bench_pipeline.py --work /tmp/bench --out results/pipeline.json
Prints a table (metric, value, target, ratio) as its last lines."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend import events  # noqa: E402
from backend.cache import build_cache, cache_matches  # noqa: E402
from backend.checkpoint import load_model  # noqa: E402
from backend.evaluate import evaluate  # noqa: E402
from backend.meshio import load_mesh  # noqa: E402
from backend.procedural import make_flythrough, make_scene, scene_matches  # noqa: E402
from backend.raster import Rasterizer  # noqa: E402
from backend.runfolder import RunFolder  # noqa: E402
from backend.train import train  # noqa: E402
from bench_render import TARGETS, render_rates  # noqa: E402
from common import Timer, print_table, report, subdivide, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/xscale_bench")
    ap.add_argument("--out", default="benchmarks/results/pipeline.json")
    ap.add_argument("--views", type=int, default=64)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=960)
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=0,
                    help="held-out PSNR every N steps (training paused, exact resume): time to within 0.5 dB")
    ap.add_argument("--test-every", type=int, default=8)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--subdivide", default="7", help="render meshes: 4^k x the scene's triangles, e.g. 6,7")
    ap.add_argument("--render-sizes", default="1920x1080,3840x2160")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="reference")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--reuse", action="store_true", help="reuse WORK/run if trained: render part only")
    a = ap.parse_args()
    events.set_stream(sys.stderr)
    work = Path(a.work)
    rows: list[dict] = []
    run = work / "run"
    scene = work / "scene"
    if a.reuse and (run / "checkpoints" / "latest.pt").is_file():
        print(f"reusing the trained run in {run}", flush=True)
        render_bench(a, scene, run, rows)
        return
    same = scene_matches(scene, a.views, a.width, a.height, ss_ref=2)   # an earlier run's scene is reused
    if not same:
        with Timer() as t:
            make_scene(scene, a.views, a.width, a.height, ss_ref=2, workers=a.workers)
        print(f"scene: {a.views} views {a.width}x{a.height} in {t.s:.1f} s", flush=True)
    if not (same and cache_matches(str(run), str(scene), 1, a.test_every, None, None)):
        with Timer() as t:
            build_cache(str(scene), str(run), ss=1, test_every=a.test_every, device=a.device)
        mp = a.views * a.width * a.height / 1e6
        report(rows, {"metric": "cache (rasterize+write), ss=1", "value": mp / t.s, "unit": "Mpix/s"})

    # Training at the reference batch, supersampling 1; rate from the progress events.
    rates: list[float] = []

    class Capture:
        def write(self, s):
            import json
            for line in s.splitlines():
                if '"rays_per_s"' in line:
                    rates.append(json.loads(line)["rays_per_s"])
            sys.stderr.write(s)

        def flush(self):
            pass

    events.set_stream(Capture())
    curve = []                                  # (training seconds, step, held-out PSNR)
    train_s = 0.0
    stops = list(range(a.eval_every, a.iters, a.eval_every)) if a.eval_every else []
    for k, stop in enumerate(stops + [None]):
        with Timer() as t:
            train(str(run), iters=a.iters, resume=k > 0, overwrite=k == 0, device=a.device,
                  preset=a.preset, stop_at=stop)
        train_s += t.s                          # includes checkpoint save + resume: an upper bound
        if a.eval_every:
            psnr = evaluate(str(run), device=a.device, write_images=False)["mean"]["psnr"]
            curve.append((train_s, stop or a.iters, psnr))
            print(f"  step {stop or a.iters}: {train_s:.0f} s training, held-out {psnr:.2f} dB", flush=True)
    events.set_stream(sys.stderr)
    steady = float(np.median(rates[len(rates) // 3:])) if rates else float("nan")
    report(rows, {"metric": "train rays/s (32x49152 batch, ss=1, loading incl.)", "value": steady / 1e6,
                 "target": 20.0, "unit": "M rays/s"})
    report(rows, {"metric": f"train wall time, {a.iters} steps", "value": train_s, "unit": "s"})
    ev = evaluate(str(run), device=a.device, write_images=False)
    report(rows, {"metric": "held-out PSNR after training", "value": ev["mean"]["psnr"], "unit": "dB"})
    report(rows, {"metric": "held-out SSIM after training", "value": ev["mean"]["ssim"], "unit": ""})
    if curve:
        final = curve[-1][2]
        first = next(c for c in curve if c[2] >= final - 0.5)
        report(rows, {"metric": f"time to within 0.5 dB of step-{a.iters} PSNR ({a.views} views)",
                     "value": first[0], "target": 600.0, "higher_is_better": False, "unit": "s"})
        report(rows, {"metric": "PSNR gain over the last eval interval", "value": final - curve[-2][2] if len(curve) > 1 else float("nan"),
                     "unit": "dB"})

    render_bench(a, scene, run, rows, {"psnr_curve": curve})


def render_bench(a, scene: Path, run: Path, rows: list[dict], extra: dict | None = None) -> None:
    """Rendering on a >= 5 M triangle mesh (same surface, subdivided)."""
    model, _ = load_model(RunFolder(run), torch.device(a.device))
    for k in (int(v) for v in a.subdivide.split(",")):
        big = subdivide(load_mesh(scene / "1.obj"), k)
        rast = Rasterizer(big, torch.device(a.device))
        report(rows, {"metric": "render mesh triangles", "value": len(big.faces) / 1e6, "unit": "M"})
        for w, h in (tuple(int(v) for v in size.split("x")) for size in a.render_sizes.split(",")):
            cams = make_flythrough(scene, a.frames, w, h)
            render_rates(model, rast, cams, 2, rows, f"render {w}x{h} ss=2, {len(big.faces) / 1e6:.1f} M tris",
                         TARGETS.get((w, h)))
    if torch.cuda.is_available():
        report(rows, {"metric": "peak GPU memory", "value": torch.cuda.max_memory_allocated() / 2**30, "unit": "GiB"})
    print_table(rows, "XScale-NVS pipeline benchmark")
    write_json(a.out, rows, args=vars(a), **(extra or {}))


if __name__ == "__main__":
    main()
