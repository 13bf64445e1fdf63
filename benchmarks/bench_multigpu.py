"""Multi-GPU scaling through the command line a user runs: `train` and `render` with --nproc 1, 2
and 4 (as many as the machine has) on one procedural scene and ray cache, side by side.

    python benchmarks/bench_multigpu.py --out results/multigpu       # the whole sweep, ~6 min on H200s

Training (reference preset and batch): rays/s from the progress events (data loading included),
the speed-up over one process, the time spent waiting for ray data, the held-out PSNR of every
run after the same steps, and the per-part step breakdown of each run (XSCALE_PROFILE_STEPS:
CUDA events per part of the last --profile-steps steps, mean over ranks, [slowest rank]).
Multi-process runs use level-parallel training (the default) and, at the processes listed in
--data-parallel, plain data parallel too (XSCALE_TABLE_PARALLEL=off) for comparison.
Rendering: a --frames camera path at 1920x1080 ss=2 rendered by the first run's model with 1 and
with the most processes: frame-loop seconds (the render's done event: model loading excluded),
speed-up, and whether every frame file is byte-identical.

Every command's events and stderr go to OUT/logs/; the tables are printed last and written to
OUT/multigpu.json. A failing run is reported in the table and the sweep goes on."""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend import stepprof  # noqa: E402
from backend.campath import write_camera_path  # noqa: E402
from backend.synthetic.procedural import make_flythrough, make_scene  # noqa: E402
from common import Timer, device_name, print_table, report, write_json  # noqa: E402


class Runner:
    """Runs `python -m backend ...` commands, keeps their output in OUT/logs/NAME.*"""

    def __init__(self, logs: Path, timeout: float):
        self.logs, self.timeout = logs, timeout
        logs.mkdir(parents=True, exist_ok=True)

    def backend(self, name: str, *args: str, env: dict | None = None) -> tuple[list[dict], float, str]:
        """(events, wall seconds, error or '')."""
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-m", "backend", *args], capture_output=True, text=True,
                               env={**os.environ, **(env or {})}, timeout=self.timeout)
            out, err, rc = p.stdout, p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = (e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")) + "\nTIMEOUT"
            rc = -1
        wall = time.perf_counter() - t0
        (self.logs / f"{name}.events").write_text(out)
        (self.logs / f"{name}.stderr").write_text(err)
        evs = []
        for line in out.splitlines():
            if line.startswith("{"):
                try:
                    evs.append(json.loads(line))
                except ValueError:
                    pass
        msg = ""
        if rc != 0:
            errs = [e.get("message", "") for e in evs if e.get("event") == "error"]
            msg = (errs[-1] if errs else err.strip().splitlines()[-1] if err.strip() else f"exit {rc}")[:200]
            print(f"  {name}: FAILED ({msg}); see {self.logs / name}.stderr", flush=True)
        return evs, wall, msg


def run_folder(base: Path, name: str) -> Path:
    """A run folder sharing the base run's ray cache (a link: nothing is copied)."""
    r = base.parent / name
    shutil.rmtree(r, ignore_errors=True)
    r.mkdir()
    shutil.copy2(base / "config.json", r / "config.json")
    (r / "cache").symlink_to((base / "cache").resolve(), target_is_directory=True)
    return r


def median_tail(values: list[float]) -> float:
    return float(np.median(values[len(values) // 3:])) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", default="1,2,4", help="process counts to run (those above the GPU count are skipped)")
    ap.add_argument("--data-parallel", default="max",
                    help="process counts that also run plain data parallel (comma list, 'max', 'all' or 'none')")
    ap.add_argument("--work", default="/tmp/xscale_multigpu")
    ap.add_argument("--out", default="benchmarks/results/multigpu")
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--width", type=int, default=960)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--ss", type=int, default=2, help="cache supersampling (the pipeline's default, 2)")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--profile-steps", type=int, default=20)
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--workers", type=int, default=min(64, os.cpu_count() or 1))
    ap.add_argument("--preset", default="reference")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per command")
    ap.add_argument("--no-render", action="store_true")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--render-size", default="1920x1080")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU check of the script itself: tiny scene, small preset, processes on the CPU")
    a = ap.parse_args()
    import torch
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if a.smoke:
        a.views, a.width, a.height, a.iters, a.frames, a.preset = 6, 64, 48, 12, 4, "small"
        a.render_size, a.profile_steps, have = "64x48", 4, 4
    counts = [n for n in (int(v) for v in a.gpus.split(",")) if n == 1 or n <= have]
    top = max(counts)
    named = {"max": {top} - {1}, "all": set(counts) - {1}, "none": set()}
    dp = named[a.data_parallel] if a.data_parallel in named else \
        {int(v) for v in a.data_parallel.split(",") if v} - {1}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    runner = Runner(out / "logs", a.timeout)
    rows: list[dict] = []
    results: dict = {"args": vars(a), "gpus_found": have, "train": [], "render": {}}

    with Timer() as t:
        scene = make_scene(work / "scene", a.views, a.width, a.height, ss_ref=2, workers=a.workers)
    print(f"scene: {a.views} views {a.width}x{a.height} in {t.s:.1f} s", flush=True)
    base = work / "run_cache"
    evs, wall, err = runner.backend("cache", "cache", "--scene", str(scene), "--run", str(base), "--ss", str(a.ss))
    if err:
        raise SystemExit(f"cache failed: {err}")
    rays = next((e.get("rays") for e in evs if e.get("event") == "done"), None)
    print(f"cache: {rays} rays at ss={a.ss} in {wall:.1f} s", flush=True)

    # --- training ---------------------------------------------------------------------------------
    runs = [(n, "levels" if n > 1 else "one") for n in counts] + [(n, "data") for n in counts if n in dp]
    runs.sort(key=lambda r: (r[0], r[1] != "one" and r[1] != "levels"))
    profiles: dict[str, dict] = {}
    one_rate = one_psnr = one_step = None
    for n, mode in runs:
        label = "1 GPU" if n == 1 else f"{n} GPUs, {'level' if mode == 'levels' else 'data'} parallel"
        column = "1 GPU" if n == 1 else f"{n} GPUs {mode}"
        name = f"train_{n}_{mode}"
        r = run_folder(base, name)
        env = {"XSCALE_PROFILE_STEPS": str(a.profile_steps),
               "XSCALE_TABLE_PARALLEL": "off" if mode == "data" else "auto"}
        evs, wall, err = runner.backend(name, "train", "--run", str(r), "--iters", str(a.iters), "--preset",
                                        a.preset, "--nproc", str(n), env=env)
        rec = {"gpus": n, "mode": mode, "label": label, "wall_s": wall, "error": err}
        rates = [e["rays_per_s"] for e in evs if "rays_per_s" in e]
        waits = [e["load_wait"] for e in evs if "load_wait" in e]
        rec["rays_per_s"] = median_tail(rates)
        rec["load_wait"] = median_tail(waits)
        prof_file = r / "profile.json"
        if prof_file.is_file():
            prof = json.loads(prof_file.read_text())
            profiles[column] = prof
            rec["step_ms_profiled"] = prof["step_ms_max"]          # the slowest rank sets the pace
            rec["rays_per_s_profiled"] = prof["batch_rays"] / (prof["step_ms_max"] / 1e3)
        if not err and not a.no_eval:
            eevs, _, eerr = runner.backend(f"eval_{n}_{mode}", "eval", "--run", str(r))
            if not eerr and (r / "eval.json").is_file():
                rec["psnr"] = json.loads((r / "eval.json").read_text())["mean"]["psnr"]
        if n == 1 and not err:
            one_rate, one_psnr = rec["rays_per_s"], rec.get("psnr")
            one_step = rec.get("step_ms_profiled")
        results["train"].append(rec)
        report(rows, {"metric": f"train rays/s, {label}", "value": rec["rays_per_s"] / 1e6, "unit": "M rays/s"})
        if n > 1 and one_rate:
            target = {2: 1.8, 4: 3.4}.get(n, 0.85 * n) if mode == "levels" else None
            report(rows, {"metric": f"  speed-up over 1 GPU, {label}", "value": rec["rays_per_s"] / one_rate,
                          "target": target, "unit": "x"})
        if "step_ms_profiled" in rec:
            report(rows, {"metric": f"  step time, profiled (slowest rank), {label}", "value": rec["step_ms_profiled"],
                          "unit": "ms"})
            if n > 1 and one_step:
                report(rows, {"metric": f"  speed-up from the step times, {label}",
                              "value": one_step / rec["step_ms_profiled"], "unit": "x"})
        report(rows, {"metric": f"  waiting for ray data, {label}", "value": rec["load_wait"], "unit": "fraction"})
        if "psnr" in rec:
            report(rows, {"metric": f"  held-out PSNR after {a.iters} steps, {label}", "value": rec["psnr"], "unit": "dB"})
            if n > 1 and one_psnr is not None:
                report(rows, {"metric": f"  |PSNR - 1 GPU|, {label}", "value": abs(rec["psnr"] - one_psnr),
                              "target": 0.2, "higher_is_better": False, "unit": "dB"})
        write_json(out / "multigpu.json", rows, **results)

    # --- rendering ----------------------------------------------------------------------------------
    if not a.no_render and results["train"] and not results["train"][0]["error"]:
        path = work / "path.json"
        rw, rh = (int(v) for v in a.render_size.split("x"))
        write_camera_path(path, list(range(1, a.frames + 1)), make_flythrough(scene, a.frames, rw, rh))
        model_run = work / f"train_{counts[0]}_one"
        secs, walls = {}, {}
        for n in sorted({1, top}):
            name = f"render_{n}"
            evs, wall, err = runner.backend(name, "render", "--run", str(model_run), "--path", str(path),
                                            "--out", str(work / f"frames{n}"), "--ss", "2", "--nproc", str(n))
            done = [e for e in evs if e.get("event") == "done"]
            if err or not done:
                continue
            secs[n], walls[n] = done[-1]["seconds"], wall
            report(rows, {"metric": f"render {a.frames} frames {a.render_size} ss=2, {n} GPU(s), frame loop",
                          "value": a.frames / secs[n], "unit": "frames/s"})
            report(rows, {"metric": f"  wall incl. start-up, {n} GPU(s)", "value": wall, "unit": "s"})
        if 1 in secs and top in secs and top > 1:
            report(rows, {"metric": f"render speed-up, {top} GPUs vs 1 (frame loop)", "value": secs[1] / secs[top],
                          "target": 3.5 if top == 4 else 0.875 * top, "unit": "x"})
            names = sorted(p.name for p in (work / "frames1").iterdir())
            same = sum(filecmp.cmp(work / "frames1" / f, work / f"frames{top}" / f, shallow=False) for f in names)
            report(rows, {"metric": f"frames byte-identical, {top} GPUs vs 1", "value": same / max(1, len(names)),
                          "target": 1.0, "unit": "fraction"})
        results["render"] = {"seconds": secs, "wall_s": walls}

    print_table(rows, f"XScale-NVS multi-GPU scaling ({', '.join(map(str, counts))} processes, ss={a.ss}, "
                      f"{a.views} views {a.width}x{a.height}, {a.iters} steps)")
    if profiles:
        print(f"\nstep breakdown, ms per step (mean over ranks [slowest rank]), last {a.profile_steps} steps, "
              f"{device_name()}")
        print(stepprof.table(profiles))
        print("\nray loading (the rank reading slowest):\n" + stepprof.loader_lines(profiles))
        results["profiles"] = profiles
    write_json(out / "multigpu.json", rows, **results)


if __name__ == "__main__":
    main()
