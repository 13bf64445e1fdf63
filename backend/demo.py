"""`backend demo`: the whole job on the embedded procedural scene."""
from __future__ import annotations

import os
import time

from . import events
from .raster import resolve_device
from .runfolder import make_dir

# Scene size and training steps per device type: minutes on a 2-core CPU, seconds on a GPU.
SIZES = {"cuda": dict(size=(640, 480), views=48, iters=300, frames=24),
         "cpu": dict(size=(160, 120), views=24, iters=600, frames=12)}


def run_demo(out: str, device: str = "auto", iters: int | None = None) -> dict:
    from .campath import write_camera_path
    from .evaluate import evaluate
    from .fit import fit
    from .procedural import make_flythrough, make_scene, scene_matches
    from .render import render_path

    dev = resolve_device(device)
    plan = SIZES["cuda" if dev.type == "cuda" else "cpu"]
    size = plan["size"]
    out_p = make_dir(out, "demo --out")
    t0 = time.monotonic()
    scene = out_p / "scene"
    if not scene_matches(scene, plan["views"], *size):
        events.log(f"building the procedural scene in {scene}")
        make_scene(scene, plan["views"], *size, workers=min(16, os.cpu_count() or 1))
    run = out_p / "run"
    # A demo run starts over every time (the scene is reused when it matches).
    result = fit(str(scene), str(run), iters=iters if iters is not None else plan["iters"], device=device,
                 overwrite=True)
    if result.get("stopped"):
        return result
    ev = evaluate(str(run), device=device)
    cams = make_flythrough(scene, n_frames=plan["frames"], width=size[0], height=size[1])
    path = out_p / "flythrough.json"
    write_camera_path(path, list(range(1, len(cams) + 1)), cams)
    frames = out_p / "flythrough"
    render_path(str(run), str(path), str(frames), device=device)
    summary = {"scene": str(scene), "run": str(run), "eval": str(run / "eval.json"),
               "eval_images": str(run / "eval"), "flythrough": str(frames),
               "psnr": ev["mean"].get("psnr"), "ssim": ev["mean"].get("ssim"),
               "seconds": time.monotonic() - t0}
    events.emit("done", stage="demo", **summary)
    events.text(f"\nDemo finished in {summary['seconds']:.0f} s. Held-out PSNR {summary['psnr']:.2f} dB, "
                f"SSIM {summary['ssim']:.3f}.\n  comparisons (photo | render | error x4): {summary['eval_images']}"
                f"\n  flythrough frames: {frames}\n  metrics: {summary['eval']}")
    return summary
