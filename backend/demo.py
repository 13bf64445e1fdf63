"""`backend demo`: the whole job on the embedded procedural scene."""
from __future__ import annotations

import os
import time
from pathlib import Path

from . import events
from .raster import resolve_device


def run_demo(out: str, device: str = "auto", iters: int | None = None) -> dict:
    from .cache import build_cache, cache_matches
    from .campath import write_camera_path
    from .evaluate import evaluate
    from .procedural import make_flythrough, make_scene, scene_matches
    from .render import render_path
    from .train import train

    dev = resolve_device(device)
    gpu = dev.type == "cuda"
    out_p = Path(out)
    t0 = time.monotonic()
    size = (640, 480) if gpu else (160, 120)
    scene = out_p / "scene"
    n_views = 48 if gpu else 24
    if not scene_matches(scene, n_views, *size):
        events.log(f"building the procedural scene in {scene}")
        make_scene(scene, n_views, *size, workers=min(16, os.cpu_count() or 1))
    run = out_p / "run"
    if not cache_matches(str(run), str(scene), 2, 8, None, None):
        build_cache(str(scene), str(run), ss=2, test_every=8, device=device)
    train(str(run), iters if iters is not None else (300 if gpu else 600), device=device)
    ev = evaluate(str(run), device=device)
    cams = make_flythrough(scene, n_frames=24 if gpu else 12, width=size[0], height=size[1])
    path = out_p / "flythrough.json"
    write_camera_path(path, list(range(1, len(cams) + 1)), cams)
    frames = out_p / "flythrough"
    render_path(str(run), str(path), str(frames), device=device)
    summary = {"scene": str(scene), "run": str(run), "eval": str(run / "eval.json"),
               "eval_images": str(run / "eval"), "flythrough": str(frames),
               "psnr": ev["mean"].get("psnr"), "ssim": ev["mean"].get("ssim"),
               "seconds": time.monotonic() - t0}
    events.emit("done", stage="demo", **summary)
    print(f"\nDemo finished in {summary['seconds']:.0f} s. Held-out PSNR {summary['psnr']:.2f} dB, "
          f"SSIM {summary['ssim']:.3f}.\n  comparisons (photo | render | error x4): {summary['eval_images']}"
          f"\n  flythrough frames: {frames}\n  metrics: {summary['eval']}", flush=True)
    return summary
