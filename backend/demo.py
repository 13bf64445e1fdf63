"""`backend demo`: the whole job on the embedded procedural scene."""
from __future__ import annotations

import os
import time

from . import events
from .raster import resolve_device
from .runfolder import make_dir

# Scene size and training per device type. CPU: 400 steps of 2,048 rays (the small preset's
# 4,096 rays and 600 steps gave 36.7 dB held-out PSNR for 2.7x the training time; this gives
# 35.2 dB). Measured with one thread (an upper bound for two idle cores): training 0.33 s/step,
# everything else ~30 s, so about 3 minutes in all (a whole run: 180 CPU-s). A machine busy
# with other programs takes longer: 8 min 46 s at a load average of ~7 on 2 cores, with
# OMP_WAIT_POLICY=PASSIVE (backend/cli.py; without it the same run was on course for ~17 min). CUDA: 0.05 s per reference step from the
# training rate in benchmarks/NOTES.md; not timed end to end. `fixed_s` and `step_s` give the
# estimate the demo prints at its start.
SIZES = {"cuda": dict(size=(640, 480), views=48, iters=300, frames=24, batch_rays=None, fixed_s=40.0, step_s=0.05),
         "cpu": dict(size=(160, 120), views=24, iters=400, frames=12, batch_rays=2048, fixed_s=30.0, step_s=0.33)}


def expected_seconds(plan: dict, iters: int) -> float:
    return plan["fixed_s"] + plan["step_s"] * iters


def _minutes(seconds: float) -> str:
    return f"about {max(1, round(seconds / 60))} minute{'s' if round(seconds / 60) > 1 else ''}"


def run_demo(out: str, device: str = "auto", iters: int | None = None) -> dict:
    from .campath import write_camera_path
    from .evaluate import evaluate
    from .fit import fit
    from .synthetic.procedural import make_flythrough, make_scene, scene_matches
    from .render import render_path

    dev = resolve_device(device)
    kind = "cuda" if dev.type == "cuda" else "cpu"
    plan = SIZES[kind]
    size = plan["size"]
    iters = iters if iters is not None else plan["iters"]
    out_p = make_dir(out, "demo --out")
    t0 = time.monotonic()
    where = ("on this GPU (the first run on a machine also compiles the CUDA rasterizer, about half a "
             "minute)" if kind == "cuda" else
             f"on {os.cpu_count()} CPU core(s) (measured for 2 idle cores; longer while other programs "
             "keep the CPU busy)")
    events.log(f"demo: {plan['views']} photos of {size[0]}x{size[1]}, {iters} training steps; expect "
               f"{_minutes(expected_seconds(plan, iters))} {where}")
    scene = out_p / "scene"
    if not scene_matches(scene, plan["views"], *size):
        events.log(f"building the procedural scene in {scene}")
        make_scene(scene, plan["views"], *size, workers=min(16, os.cpu_count() or 1))
    run = out_p / "run"
    # A demo run starts over every time (the scene is reused when it matches).
    result = fit(str(scene), str(run), iters=iters, device=device, overwrite=True,
                 overrides={"batch_rays": plan["batch_rays"]})
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
