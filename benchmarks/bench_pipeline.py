"""End-to-end GPU benchmark on the procedural scene: cache, training rate (rays/s, data loading
included), held-out PSNR over time, render frame time at 1920x1080 and 3840x2160 with 2x2
supersampling on a subdivided (>= 5 M triangle) copy of the mesh, with image writing overlapped.

    python benchmarks/bench_pipeline.py --work /tmp/bench --out results/pipeline.json
Prints a table (metric, value, target, ratio) as its last lines."""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend import events  # noqa: E402
from backend.cache import build_cache  # noqa: E402
from backend.checkpoint import load_model  # noqa: E402
from backend.evaluate import evaluate  # noqa: E402
from backend.meshio import Mesh, load_mesh  # noqa: E402
from backend.procedural import make_flythrough, make_scene  # noqa: E402
from backend.raster import Rasterizer  # noqa: E402
from backend.render import render_camera, write_frame  # noqa: E402
from backend.runfolder import RunFolder  # noqa: E402
from backend.train import train  # noqa: E402
from common import Timer, print_table, write_json  # noqa: E402


def subdivide(mesh: Mesh, times: int) -> Mesh:
    """Midpoint subdivision (each triangle -> 4, same surface)."""
    v, f = mesh.vertices.astype(np.float64), mesh.faces.astype(np.int64)
    for _ in range(times):
        e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1)
        uniq, inv = np.unique(e, axis=0, return_inverse=True)
        mid = len(v) + inv.reshape(3, -1).T                       # (F, 3): edges 01, 12, 20
        v = np.concatenate([v, (v[uniq[:, 0]] + v[uniq[:, 1]]) / 2])
        a, b, c = f.T
        m01, m12, m20 = mid.T
        f = np.concatenate([np.stack([a, m01, m20], 1), np.stack([m01, b, m12], 1),
                            np.stack([m20, m12, c], 1), np.stack([m01, m12, m20], 1)])
    return Mesh(v.astype(np.float32), f.astype(np.int32))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/xscale_bench")
    ap.add_argument("--out", default="benchmarks/results/pipeline.json")
    ap.add_argument("--views", type=int, default=64)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=960)
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--frames", type=int, default=24)
    a = ap.parse_args()
    events.set_stream(sys.stderr)
    work = Path(a.work)
    rows = []
    with Timer() as t:
        scene = make_scene(work / "scene", a.views, a.width, a.height, ss_ref=2, workers=16)
    print(f"scene: {a.views} views {a.width}x{a.height} in {t.s:.1f} s", flush=True)
    run = work / "run"
    with Timer() as t:
        build_cache(str(scene), str(run), ss=1, test_every=8, device="cuda")
    mp = a.views * a.width * a.height / 1e6
    rows.append({"metric": "cache (rasterize+write), ss=1", "value": mp / t.s, "unit": "Mpix/s"})

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
    with Timer() as t:
        train(str(run), iters=a.iters, device="cuda", preset="reference")
    events.set_stream(sys.stderr)
    steady = float(np.median(rates[len(rates) // 3:])) if rates else float("nan")
    rows.append({"metric": "train rays/s (32x49152 batch, ss=1, loading incl.)", "value": steady / 1e6,
                 "target": 20.0, "unit": "M rays/s"})
    rows.append({"metric": f"train wall time, {a.iters} steps", "value": t.s, "unit": "s"})
    ev = evaluate(str(run), device="cuda", write_images=False)
    rows.append({"metric": "held-out PSNR after training", "value": ev["mean"]["psnr"], "unit": "dB"})
    rows.append({"metric": "held-out SSIM after training", "value": ev["mean"]["ssim"], "unit": ""})

    # Rendering on a >= 5 M triangle mesh (same surface, subdivided).
    model, _ = load_model(RunFolder(run), torch.device("cuda"))
    big = subdivide(load_mesh(scene / "1.obj"), 7)
    rast = Rasterizer(big, torch.device("cuda"))
    rows.append({"metric": "render mesh triangles", "value": len(big.faces) / 1e6, "unit": "M"})
    for (w, h), target in (((1920, 1080), 30.0), ((3840, 2160), 10.0)):
        cams = make_flythrough(scene, a.frames, w, h)
        render_camera(model, rast, cams[0], 2)                      # warm-up (JIT, allocations)
        with Timer() as t:
            for c in cams:
                render_camera(model, rast, c, 2)
        gpu_fps = len(cams) / t.s
        rows.append({"metric": f"render {w}x{h} ss=2, GPU work", "value": gpu_fps, "target": target,
                     "unit": "frames/s"})
        out = work / f"frames_{w}"
        out.mkdir(parents=True, exist_ok=True)
        pool = ThreadPoolExecutor(4)
        with Timer() as t:
            futs = [pool.submit(write_frame, out / f"f{k:04d}.png", render_camera(model, rast, c, 2), "png")
                    for k, c in enumerate(cams)]
            for f in futs:
                f.result()
        rows.append({"metric": f"render {w}x{h} ss=2, end to end (PNG written)", "value": len(cams) / t.s,
                     "target": 0.8 * target, "unit": "frames/s"})
    rows.append({"metric": "peak GPU memory", "value": torch.cuda.max_memory_allocated() / 2**30, "unit": "GiB"})
    print_table(rows, "XScale-NVS pipeline benchmark")
    write_json(a.out, rows, args=vars(a))


if __name__ == "__main__":
    main()
