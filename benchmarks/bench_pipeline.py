"""End-to-end GPU benchmark on a procedural scene: cache, training rate (rays/s, data loading
included), held-out PSNR over time, render frame time at 1920x1080 and 3840x2160 with 2x2
supersampling on a subdivided (>= 5 M triangle) copy of the mesh, with image writing overlapped.

    python benchmarks/bench_pipeline.py --work /tmp/bench --out results/pipeline.json
        [--scene-kind procedural|capture-sparse|capture-dense] [--eval-every N] [--no-render]

--scene-kind: the clean procedural scene (default; 64 views 1280x960) or a capture scene of
backend.synthetic.capture (photos with exposure changes, noise, JPEG, pose error, occluders and
a degraded mesh; sparse 16 photos 960x720, dense 120 photos 640x480 unless --views/--width/
--height say otherwise). --eval-every N pauses training every N steps (exact resume) for a
held-out PSNR curve: against the held-out photos (the pipeline's `eval`) and, on capture scenes,
against the clean ground truth at the true cameras, which then decides the curve's rows: the time
to within 0.5 dB of the last step, the best point of the curve, and how far the last step is
below it (target: within 0.3 dB).

--rate-only: the one-GPU training rate and nothing else (no magnified views in a capture scene,
no evaluation, no rendering), e.g. on a realistic 6 MP capture at both supersamplings:
    bench_pipeline.py --scene-kind capture-sparse --width 2832 --height 2128 --ss 2 --rate-only
    bench_pipeline.py --scene-kind capture-sparse --width 2832 --height 2128 --ss 1 --rate-only
(the scene is made once and reused). Rows: rays/s and sub-samples/s, the fraction of time spent
waiting for ray data, and with --profile-steps N the per-part step breakdown (stepprof.py).
Prints a table (metric, value, target, ratio) as its last lines."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend import events, schedule, stepprof  # noqa: E402
from backend.cache import ShardReader, build_cache, cache_matches  # noqa: E402
from backend.config import apply_overrides, preset as preset_config  # noqa: E402
from backend.checkpoint import load_model  # noqa: E402
from backend.evaluate import evaluate  # noqa: E402
from backend.meshio import load_mesh  # noqa: E402
from backend.synthetic.procedural import make_flythrough, make_scene, scene_matches  # noqa: E402
from backend.synthetic.capture import capture_matches, make_capture  # noqa: E402
from backend.synthetic.capture_settings import VARIANTS, CaptureParams  # noqa: E402
from backend.synthetic.truth import load_truth  # noqa: E402
from backend.raster import Rasterizer  # noqa: E402
from backend.runfolder import RunFolder  # noqa: E402
from backend.train import train  # noqa: E402
from bench_render import TARGETS, render_rates  # noqa: E402
from common import Timer, print_table, report, subdivide, write_json  # noqa: E402
from quality_scoring import score_clean  # noqa: E402


KINDS = ("procedural", "capture-sparse", "capture-dense")
PROCEDURAL_SIZE = (64, 1280, 960)
RATE_TARGETS = {1: 40.0, 2: 25.0}     # M rays/s on one GPU at the reference batch, by supersampling
LOAD_WAIT_TARGET = 0.02


def make_bench_scene(a, work: Path) -> tuple[Path, bool]:
    """The benchmark's scene (made once, reused when an earlier run made the same one) and
    whether it was reused."""
    if a.scene_kind == "procedural":
        scene = work / "scene"
        same = scene_matches(scene, a.views, a.width, a.height, ss_ref=a.ss_ref)
        make = lambda: make_scene(scene, a.views, a.width, a.height, ss_ref=a.ss_ref, workers=a.workers)  # noqa: E731
    else:
        variant = a.scene_kind.split("-", 1)[1]
        scene = work / (a.scene_kind + ("-rate" if a.rate_only else ""))
        kw = {"variant": variant, "n_views": a.views, "width": a.width, "height": a.height, "ss_ref": a.ss_ref}
        if a.rate_only:         # photos only: no magnified ground-truth views (nothing scores them)
            kw["params"] = CaptureParams(magnified_factors=())
        same = capture_matches(scene, **kw)
        make = lambda: make_capture(scene, workers=a.workers, **kw)  # noqa: E731
    if not same:
        with Timer() as t:
            make()
        print(f"scene ({a.scene_kind}): {a.views} views {a.width}x{a.height} in {t.s:.1f} s", flush=True)
    return scene, same


def curve_rows(rows: list[dict], curve: list[dict], key: str, what: str, iters: int, views: int) -> None:
    """Time to within 0.5 dB of the last step, best point, and the last step's distance from it."""
    final = curve[-1][key]
    first = next(c for c in curve if c[key] >= final - 0.5)
    best = max(curve, key=lambda c: c[key])
    report(rows, {"metric": f"time to within 0.5 dB of step-{iters} {what} ({views} views)",
                  "value": first["train_s"], "target": 600.0, "higher_is_better": False, "unit": "s"})
    report(rows, {"metric": f"best {what} of the curve (step {best['step']})", "value": best[key], "unit": "dB"})
    gap = best[key] - final
    report(rows, {"metric": f"best minus last {what} (<= 0.3: {'met' if gap <= 0.3 else 'MISSED'})",
                  "value": gap, "unit": "dB"})
    if len(curve) > 1:
        report(rows, {"metric": f"{what} gain over the last eval interval", "value": final - curve[-2][key],
                      "unit": "dB"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/xscale_bench")
    ap.add_argument("--out", default="benchmarks/results/pipeline.json")
    ap.add_argument("--scene-kind", default="procedural", choices=KINDS)
    ap.add_argument("--views", type=int, help="photos (default: 64 procedural, else the capture variant's)")
    ap.add_argument("--width", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--iters", type=int, default=1500, help="training steps; 0: the schedule's for this capture "
                                                             "(backend/schedule.py, the CLI's default on a GPU)")
    ap.add_argument("--epochs", type=float, help="with --iters 0: passes over the rays (schedule.epochs)")
    ap.add_argument("--eval-every", type=int, default=0,
                    help="held-out PSNR every N steps (training paused, exact resume): the curve")
    ap.add_argument("--eval-points", type=int, default=0, help="with --iters 0: a curve of this many points")
    ap.add_argument("--test-every", type=int, help="hold out every k-th photo (default 8; capture scenes: "
                                                   "the scene's own, which the ground truth is made for)")
    ap.add_argument("--ss", type=int, default=1, help="cache supersampling (the pipeline's own default is 2)")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--subdivide", default="7", help="render meshes: 4^k x the scene's triangles, e.g. 6,7")
    ap.add_argument("--render-sizes", default="1920x1080,3840x2160")
    ap.add_argument("--no-render", action="store_true", help="skip the render benchmark (curve runs)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="reference")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--reuse", action="store_true", help="reuse WORK/run if trained: render part only")
    ap.add_argument("--rate-only", action="store_true",
                    help="training rate only: no magnified views, evaluation or rendering")
    ap.add_argument("--ss-ref", type=int, help="supersampling of the scene's photos (default 2; --rate-only: 1)")
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="per-part step breakdown of the last N training steps (XSCALE_PROFILE_STEPS)")
    ap.add_argument("--compile-decoder", action="store_true",
                    help="experiment: the decoder through torch.compile (XSCALE_COMPILE_DECODER=1)")
    a = ap.parse_args()
    if a.compile_decoder:
        from backend.train import COMPILE_ENV
        os.environ[COMPILE_ENV] = "1"
    a.ss_ref = a.ss_ref or (1 if a.rate_only else 2)
    if a.rate_only:
        a.no_render = True
    if a.profile_steps:
        os.environ[stepprof.PROFILE_ENV] = str(a.profile_steps)
    n, w, h = PROCEDURAL_SIZE if a.scene_kind == "procedural" else VARIANTS[a.scene_kind.split("-", 1)[1]]
    a.views, a.width, a.height = a.views or n, a.width or w, a.height or h
    events.set_stream(sys.stderr)
    work = Path(a.work)
    rows: list[dict] = []
    run = work / ("run" if a.scene_kind == "procedural" else f"run-{a.scene_kind}")
    if a.rate_only:
        run = run.with_name(f"{run.name}-rate-{a.width}x{a.height}")
    if a.reuse and (run / "checkpoints" / "latest.pt").is_file():
        print(f"reusing the trained run in {run}", flush=True)
        render_bench(a, work / ("scene" if a.scene_kind == "procedural" else a.scene_kind), run, rows)
        return
    scene, same = make_bench_scene(a, work)
    truth = None if a.rate_only else load_truth(scene)
    if a.test_every is None:
        views_json = scene / "views.json"
        a.test_every = truth.test_every if truth else \
            json.loads(views_json.read_text()).get("test_every", 8) if views_json.is_file() else 8
    if not (same and cache_matches(str(run), str(scene), a.ss, a.test_every, None, None)):
        with Timer() as t:
            build_cache(str(scene), str(run), ss=a.ss, test_every=a.test_every, device=a.device, overwrite=True)
        mp = a.views * a.width * a.height / 1e6
        report(rows, {"metric": f"cache (rasterize+write), ss={a.ss}", "value": mp / t.s, "unit": "Mpix/s"})
    if truth is not None and a.test_every != truth.test_every:
        print(f"note: --test-every {a.test_every} differs from the scene's {truth.test_every}: "
              "no clean ground truth for the held-out photos", flush=True)
        truth = None

    # Training at the reference batch (--preset) or the schedule's, supersampling --ss; rate from the progress events.
    overrides = {}
    if a.iters == 0:
        tc = apply_overrides(preset_config(a.preset, "cuda"), {"schedule.epochs": a.epochs})
        plan = schedule.plan(tc, ShardReader(run).rays, batch_given=False)
        a.iters, overrides = plan.iters, {"batch_rays": plan.batch_rays}
        print(plan.describe(len(RunFolder(run).settings().train_views)), flush=True)
        if a.eval_points:
            a.eval_every = max(1, a.iters // a.eval_points)
    rates: list[float] = []
    waits: list[float] = []

    class Capture:
        def write(self, s):
            for line in s.splitlines():
                if '"rays_per_s"' in line:
                    ev = json.loads(line)
                    rates.append(ev["rays_per_s"])
                    waits.append(ev.get("load_wait", float("nan")))
            sys.stderr.write(s)

        def flush(self):
            pass

    events.set_stream(Capture())
    curve: list[dict] = []                      # training seconds, step, held-out PSNR (photos, clean)
    train_s = 0.0
    stops = list(range(a.eval_every, a.iters, a.eval_every)) if a.eval_every else []
    dev = torch.device(a.device)
    for k, stop in enumerate([*stops, None]):
        with Timer() as t:
            train(str(run), iters=a.iters, resume=k > 0, overwrite=k == 0, device=a.device,
                  preset=a.preset, overrides=overrides, stop_at=stop)
        train_s += t.s                          # includes checkpoint save + resume: an upper bound
        if a.eval_every:
            point = {"train_s": train_s, "step": stop or a.iters,
                     "psnr": evaluate(str(run), device=a.device, write_images=False)["mean"]["psnr"]}
            msg = f"  step {point['step']}: {train_s:.0f} s training, held-out {point['psnr']:.2f} dB (photos)"
            if truth is not None:
                clean = score_clean(run, truth, dev)
                point.update({"clean_" + k2: v for k2, v in clean.items() if k2 != "step"})
                msg += f", {point['clean_psnr']:.2f} dB (clean ground truth)"
            curve.append(point)
            print(msg, flush=True)
    events.set_stream(sys.stderr)
    steady = float(np.median(rates[len(rates) // 3:])) if rates else float("nan")
    wait = float(np.median(waits[len(waits) // 3:])) if waits else float("nan")
    mp = a.width * a.height / 1e6
    n_train = len(RunFolder(run).settings().train_views)
    tag = ", decoder compiled" if a.compile_decoder else ""
    report(rows, {"metric": f"train rays/s ({n_train} photos of {mp:.1f} MP, ss={a.ss}{tag}, loading incl.)",
                  "value": steady / 1e6, "target": RATE_TARGETS.get(a.ss, 20.0), "unit": "M rays/s"})
    report(rows, {"metric": f"  sub-samples/s (x {a.ss * a.ss})", "value": steady * a.ss * a.ss / 1e6,
                  "target": 100.0 if a.ss == 2 else None, "unit": "M/s"})
    report(rows, {"metric": "  time waiting for ray data (load_wait)", "value": wait, "target": LOAD_WAIT_TARGET,
                  "higher_is_better": False, "unit": "fraction"})
    report(rows, {"metric": f"train wall time, {a.iters} steps", "value": train_s, "unit": "s"})
    extra = {"psnr_curve": curve, "scene_kind": a.scene_kind}
    prof_file = run / "profile.json"
    if a.profile_steps and prof_file.is_file():
        prof = json.loads(prof_file.read_text())
        extra["profile"] = prof
        print(f"\nstep breakdown, ms per step, last {a.profile_steps} steps:")
        print(stepprof.table({f"1 GPU ss={a.ss}": prof}))
        print(stepprof.loader_lines({f"ray loading, ss={a.ss}": prof}))
    if a.rate_only:
        print_table(rows, "XScale-NVS training rate")
        write_json(a.out, rows, args=vars(a), **extra)
        return
    ev = evaluate(str(run), device=a.device, write_images=False)
    report(rows, {"metric": "held-out PSNR after training (photos)", "value": ev["mean"]["psnr"], "unit": "dB"})
    report(rows, {"metric": "held-out SSIM after training (photos)", "value": ev["mean"]["ssim"], "unit": ""})
    if truth is not None:
        clean = curve[-1] if curve else {"clean_" + k: v for k, v in score_clean(run, truth, dev).items()}
        report(rows, {"metric": "held-out PSNR after training (clean ground truth)", "value": clean["clean_psnr"],
                      "unit": "dB"})
        report(rows, {"metric": "held-out SSIM after training (clean ground truth)", "value": clean["clean_ssim"],
                      "unit": ""})
    if curve:
        key, what = ("clean_psnr", "clean held-out PSNR") if truth is not None else ("psnr", "held-out PSNR")
        curve_rows(rows, curve, key, what, a.iters, a.views)

    if a.no_render:
        print_table(rows, "XScale-NVS pipeline benchmark")
        write_json(a.out, rows, args=vars(a), **extra)
        return
    render_bench(a, scene, run, rows, extra)


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
