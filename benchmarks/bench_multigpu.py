"""Data-parallel scaling through the command line a user runs: `train` and `render` with
--nproc 1 and --nproc N on the same procedural scene and ray cache.

    python benchmarks/bench_multigpu.py --nproc 2 --out results/multigpu.json

Reports training rays/s at 1 and N processes (from the progress events, data loading included),
held-out PSNR of both runs (same total batch, so the same result within noise), camera-path
render time at 1 and N processes and whether the frames are byte-identical.
Prints a table (metric, value, target, ratio) as its last lines."""
from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend.campath import write_camera_path  # noqa: E402
from backend.procedural import make_flythrough, make_scene  # noqa: E402
from common import Timer, print_table, report, write_json  # noqa: E402


def backend(*args: str) -> list[dict]:
    """Run `python -m backend ARGS`, return its JSON events (stdout)."""
    p = subprocess.run([sys.executable, "-m", "backend", *args], capture_output=True, text=True)
    if p.returncode:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"backend {' '.join(args)} failed ({p.returncode})")
    out = []
    for line in p.stdout.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--work", default="/tmp/xscale_multigpu")
    ap.add_argument("--out", default="benchmarks/results/multigpu.json")
    ap.add_argument("--views", type=int, default=48)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=960)
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--preset", default="reference")
    ap.add_argument("--train-only", action="store_true", help="skip eval and rendering")
    a = ap.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    rows: list[dict] = []

    scene = make_scene(work / "scene", a.views, a.width, a.height, ss_ref=2, workers=a.workers)
    backend("cache", "--scene", str(scene), "--run", str(work / "run1"), "--ss", "1")
    shutil.copytree(work / "run1", work / f"run{a.nproc}")
    path = work / "path.json"
    write_camera_path(path, list(range(1, a.frames + 1)), make_flythrough(scene, a.frames, 1920, 1080))
    rate, psnr, secs = {}, {}, {}
    for n in (1, a.nproc):
        run = str(work / f"run{n}")
        ev = backend("train", "--run", run, "--iters", str(a.iters), "--preset", a.preset, "--nproc", str(n))
        r = [e["rays_per_s"] for e in ev if "rays_per_s" in e]
        rate[n] = float(np.median(r[len(r) // 3:]))
        report(rows, {"metric": f"train rays/s, {n} process(es)", "value": rate[n] / 1e6, "unit": "M rays/s"})
        wait = [e["load_wait"] for e in ev if "load_wait" in e]
        report(rows, {"metric": f"  time waiting for ray data, {n} process(es)", "value": float(np.median(wait[len(wait) // 3:])),
                "unit": "fraction"})
        if a.train_only:
            continue
        backend("eval", "--run", run)
        psnr[n] = json.loads((Path(run) / "eval.json").read_text())["mean"]["psnr"]
        with Timer() as t:
            backend("render", "--run", run, "--path", str(path), "--out", str(work / f"frames{n}"),
                    "--ss", "2", "--nproc", str(n))
        secs[n] = t.s
        report(rows, {"metric": f"held-out PSNR, {n} process(es), {a.iters} steps", "value": psnr[n], "unit": "dB"})
        report(rows, {"metric": f"render {a.frames} frames 1920x1080 ss=2, {n} process(es), wall", "value": t.s, "unit": "s"})
    n = a.nproc
    report(rows, {"metric": f"training speed-up, {n} vs 1", "value": rate[n] / rate[1], "target": 0.9 * n, "unit": "x"})
    if a.train_only:
        print_table(rows, f"XScale-NVS data-parallel scaling ({n} processes)")
        return write_json(a.out, rows, args=vars(a))
    report(rows, {"metric": f"held-out PSNR difference, {n} vs 1", "value": psnr[n] - psnr[1], "unit": "dB"})
    report(rows, {"metric": f"render speed-up, {n} vs 1 (incl. start-up)", "value": secs[1] / secs[n], "unit": "x"})
    # Different trained models: frames can only be compared for the same run, so render run1 again.
    backend("render", "--run", str(work / "run1"), "--path", str(path), "--out", str(work / "frames1_n"),
            "--ss", "2", "--nproc", str(n))
    names = sorted(p.name for p in (work / "frames1").iterdir())
    same = sum(filecmp.cmp(work / "frames1" / f, work / "frames1_n" / f, shallow=False) for f in names)
    report(rows, {"metric": f"frames byte-identical, {n} processes vs 1", "value": same / max(1, len(names)),
            "target": 1.0, "unit": "fraction"})
    print_table(rows, f"XScale-NVS data-parallel scaling ({n} processes)")
    write_json(a.out, rows, args=vars(a))


if __name__ == "__main__":
    main()
