"""Out-of-core check: cache and train on a synthetic scene of many large photos and report peak
host memory (RSS), peak GPU memory, cache size on disk and time per view. Host memory must stay
at one view plus one shard whatever the number of photos.

    python benchmarks/bench_outofcore.py --views 300 --width 7680 --height 4320 --work /data/ooc
The photos are JPEG noise over a gently curved surface (caching cost does not depend on content).
Disk: the cache takes about 33 bytes per covered pixel at ss=1 (about 1 GB per 8K photo here), so
300 8K photos need about 300 GB of free disk; the build stops with a message before the disk fills.
Peak memory does not grow with the number of photos: run two sizes to see it."""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import pstats
import resource
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend import events  # noqa: E402
from backend.cache import build_cache  # noqa: E402
from backend.cameras import Camera, look_at, write_mvsnet_cam  # noqa: E402
from backend.meshio import Mesh, write_obj  # noqa: E402
from backend.train import train  # noqa: E402
from common import print_table, write_json  # noqa: E402


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20        # kB on Linux


def make_synthetic(root: Path, n: int, width: int, height: int, seed: int = 0) -> None:
    from PIL import Image
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "cams").mkdir(exist_ok=True)
    g = np.linspace(-1, 1, 64)
    X, Y = np.meshgrid(g, g)
    V = np.stack([X.ravel(), Y.ravel(), 0.1 * np.sin(3 * X.ravel()) * np.cos(2 * Y.ravel())], 1)
    idx = np.arange(64 * 64).reshape(64, 64)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    F = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    write_obj(root / "1.obj", Mesh(V.astype(np.float32), F.astype(np.int32)))
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)   # one photo, reused: cheap

    def photo(k: int) -> None:
        az = 2 * np.pi * k / n
        eye = (1.2 * np.cos(az), 1.2 * np.sin(az), 1.6)
        f = 0.9 * width
        K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
        name = f"{k:08d}"
        Image.fromarray(np.roll(noise, k * 7, axis=1)).save(root / "images" / f"{name}.jpg", quality=90)
        write_mvsnet_cam(root / "cams" / f"{name}_cam.txt", Camera(width, height, K, look_at(eye, (0, 0, 0))))

    with ThreadPoolExecutor(8) as pool:                  # JPEG encoding releases the GIL
        list(pool.map(photo, range(n)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/xscale_ooc")
    ap.add_argument("--out", default="benchmarks/results/outofcore.json")
    ap.add_argument("--views", type=int, default=300)
    ap.add_argument("--width", type=int, default=7680)
    ap.add_argument("--height", type=int, default=4320)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", default="auto")
    ap.add_argument("--profile", action="store_true", help="print where the caching time goes (cProfile)")
    a = ap.parse_args()
    events.set_stream(sys.stderr)
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    make_synthetic(work / "scene", a.views, a.width, a.height)
    rows = [{"metric": "synthetic photos: seconds per view", "value": (time.perf_counter() - t0) / a.views, "unit": "s"},
            {"metric": "disk free before caching", "value": shutil.disk_usage(work).free / 2**30, "unit": "GiB"}]
    t0 = time.perf_counter()
    with cProfile.Profile() if a.profile else contextlib.nullcontext() as prof:
        build_cache(str(work / "scene"), str(work / "run"), ss=1, test_every=0, device=a.device)
    dt = time.perf_counter() - t0
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    disk = sum(p.stat().st_size for p in (work / "run" / "cache").rglob("*") if p.is_file())
    meta = json.loads((work / "run" / "cache" / "meta.json").read_text())
    rows += [{"metric": f"cache {a.views} x {a.width}x{a.height}: seconds per view", "value": dt / a.views, "unit": "s"},
             {"metric": "rays cached (covered pixels)", "value": meta["n_rays"] / 1e9, "unit": "G"},
             {"metric": "cache size on disk", "value": disk / 2**30, "unit": "GiB"},
             {"metric": "cache bytes per ray", "value": disk / meta["n_rays"], "unit": "B"},
             *({"metric": f"  caching phase {k}: seconds per view", "value": v / a.views, "unit": "s"}
               for k, v in meta["seconds"].items()),
             {"metric": "  caching other (setup, first-use compilation): seconds", "value": dt - sum(meta["seconds"].values()), "unit": "s"},
             {"metric": "peak host memory after caching", "value": peak_rss_gib(), "target": 32.0,
              "higher_is_better": False, "unit": "GiB"}]
    if torch.cuda.is_available():
        rows.append({"metric": "peak GPU memory after caching", "value": torch.cuda.max_memory_allocated() / 2**30,
                     "target": 40.0, "higher_is_better": False, "unit": "GiB"})
    t0 = time.perf_counter()
    train(str(work / "run"), iters=a.iters, device=a.device, preset=a.preset, overwrite=True)
    rows.append({"metric": f"train {a.iters} iterations: seconds", "value": time.perf_counter() - t0, "unit": "s"})
    rows.append({"metric": "peak host memory after training", "value": peak_rss_gib(), "target": 32.0,
                 "higher_is_better": False, "unit": "GiB"})
    if torch.cuda.is_available():
        rows.append({"metric": "peak GPU memory after training", "value": torch.cuda.max_memory_allocated() / 2**30,
                     "target": 40.0, "higher_is_better": False, "unit": "GiB"})
    print_table(rows, "XScale-NVS out-of-core benchmark")
    write_json(a.out, rows, args=vars(a))


if __name__ == "__main__":
    main()
