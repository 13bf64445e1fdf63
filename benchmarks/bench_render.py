"""Render speed on its own: frames/s of a camera path and where the frame time goes.

No training needed: the model has the reference architecture with its initial weights (the
frame time does not depend on the weights); the mesh is the procedural scene's, subdivided.
Prints the per-stage GPU time (torch.profiler ranges of backend.raster / backend.render), the
top CUDA kernels, and a table (metric, value, target, ratio) as its last lines.

    python benchmarks/bench_render.py --subdivide 7 --frames 16 --out results/render.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend.model import Manifold  # noqa: E402
from backend.synthetic.procedural import make_flythrough, make_spec  # noqa: E402
from backend.raster import Rasterizer  # noqa: E402
from backend.imageio import _save_png  # noqa: E402
from backend.render import WRITER_THREADS, FrameWriter, HostCopy, frame_buffers, render_tensors  # noqa: E402
from backend.config import preset  # noqa: E402
from common import Timer, print_table, report, subdivide, write_json  # noqa: E402

TARGETS = {(1920, 1080): 30.0, (3840, 2160): 10.0}


def stage_times(prof, n_frames: int) -> dict[str, float]:
    """GPU ms per frame of each named range (raster.*, render.*); nested ranges overlap."""
    out = {}
    for e in prof.key_averages():
        if e.key.startswith(("raster.", "render.")):
            gpu = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
            out[e.key] = (gpu / 1000 / n_frames, e.cpu_time_total / 1000 / n_frames)
    return out


def render_rates(model: Manifold, rast: Rasterizer, cams: list, ss: int, rows: list[dict], label: str,
                 target: float | None = None) -> None:
    """Rows for `cams`: GPU work (frames/s), of which rasterization (ms/frame), and end to end as
    `render` does it (PNG packed on the GPU, pinned copies, writer threads), which should keep
    80 % of both the target and the measured GPU-work rate."""
    render_tensors(model, rast, cams[0], ss)                # warm-up (JIT, allocations)
    with Timer() as t:
        for c in cams:
            render_tensors(model, rast, c, ss)
    gpu_rate = len(cams) / t.s
    report(rows, {"metric": f"{label}, GPU work", "value": gpu_rate, "target": target, "unit": "frames/s"})
    with Timer() as t:
        for c in cams:
            rast.surface(c, ss, normals=False)
    report(rows, {"metric": "  of which rasterization", "value": 1000 * t.s / len(cams), "unit": "ms/frame"})
    with tempfile.TemporaryDirectory() as d, Timer() as t:
        writer = FrameWriter("png")
        for k, c in enumerate(cams):
            writer.submit(Path(d) / f"{k:04d}.png", render_tensors(model, rast, c, ss))
        writer.close()
    report(rows, {"metric": f"{label}, end to end (PNG)", "value": len(cams) / t.s,
                  "target": 0.8 * target if target else None, "unit": "frames/s"})
    report(rows, {"metric": "  end to end / GPU work", "value": len(cams) / t.s / gpu_rate, "target": 0.8, "unit": "x"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/render.json")
    ap.add_argument("--subdivide", type=int, default=7, help="4^k x the scene's 891 triangles")
    ap.add_argument("--frames", type=int, default=48, help="a real path has hundreds; the end-to-end rate includes draining the last frames")
    ap.add_argument("--sizes", default="1920x1080,3840x2160")
    ap.add_argument("--ss", type=int, default=2)
    ap.add_argument("--profile-frames", type=int, default=3)
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = make_spec(0)
    mesh = subdivide(spec.mesh, a.subdivide)
    rast = Rasterizer(mesh, dev)
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    model = Manifold(preset("auto", dev.type).model, lo, hi, n_views=1).to(dev).eval()
    rows: list[dict] = []
    report(rows, {"metric": "render mesh triangles", "value": len(mesh.faces) / 1e6, "unit": "M"})
    stages = {}
    for w, h in (tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")):
        cams = make_flythrough(spec, a.frames, w, h)
        render_rates(model, rast, cams, a.ss, rows, f"render {w}x{h} ss={a.ss}", TARGETS.get((w, h)))
        # What the writer threads alone sustain: the same frames' PNG files from host memory.
        frames = [HostCopy(frame_buffers(render_tensors(model, rast, c, a.ss), "png")).result() for c in cams[:8]]
        for level in (4, 1):
            with tempfile.TemporaryDirectory() as d, Timer() as t, ThreadPoolExecutor(WRITER_THREADS) as pool:
                list(pool.map(lambda k: _save_png(Path(d) / f"{k:04d}.png", frames[k % 8]["rgba"], level), range(len(cams))))
            report(rows, {"metric": f"  PNG writing alone (zlib level {level}), {w}x{h}", "value": len(cams) / t.s, "unit": "frames/s"})
        n = min(a.profile_frames, len(cams))
        if dev.type != "cuda" or n == 0:
            continue
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for c in cams[:n]:
                render_tensors(model, rast, c, a.ss)
            torch.cuda.synchronize()
        st = stage_times(prof, n)
        stages[f"{w}x{h}"] = st
        print(f"\nstages {w}x{h} (ms per frame: GPU, CPU)")
        for k, (g, c) in sorted(st.items()):
            print(f"  {k:24s} {g:9.2f} {c:9.2f}")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
    if dev.type == "cuda":
        report(rows, {"metric": "peak GPU memory", "value": torch.cuda.max_memory_allocated() / 2**30, "unit": "GiB"})
    print_table(rows, "XScale-NVS render benchmark")
    write_json(a.out, rows, args=vars(a), stages=stages)


if __name__ == "__main__":
    main()
