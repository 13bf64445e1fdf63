"""Rasterizers side by side on one GPU: frame time, agreement, large meshes and frames, cache rate.

For each rasterizer (`triton`, the default, and `nvdiffrast` where it is installed) on the
procedural scene's mesh subdivided to 14.6 M triangles (and --big-subdivide for ~58 M): ms per
frame of `Rasterizer.surface` (candidate triangles + the exact resolve, what rendering and the
ray cache call) and of the candidate pass alone, at each of --sizes with --ss; agreement with the
first rasterizer (same triangle after the exact resolve, same surface point within 1e-6 of the
scene's extent, same coverage) and with the exact CPU rasterizer on windows of the frames (the
truth); the ray-cache build rate (Mpix/s) of the procedural scene.
Prints a table (metric, value, target, ratio) as its last lines.

    python benchmarks/bench_raster.py --out results/raster.json [--rasterizers triton,nvdiffrast]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend.synthetic.procedural import make_flythrough, make_scene, make_spec  # noqa: E402
from backend.raster import ENV, Rasterizer  # noqa: E402
from common import Timer, print_table, report, subdivide, write_json  # noqa: E402

FRAME_TARGET_MS = {(1920, 1080): 19.0}          # nvdiffrast's time on an H100 before this rasterizer


def available(names: list[str]) -> list[str]:
    out = []
    for n in names:
        try:
            Rasterizer(subdivide(make_spec(0).mesh, 0), torch.device("cuda"), kind=n).surface(
                make_flythrough(make_spec(0), 1, 64, 48)[0], 1)
            out.append(n)
        except Exception as e:       # not installed or cannot build here: say so, measure the rest
            print(f"rasterizer {n}: not available ({type(e).__name__}: {str(e)[:200]})", flush=True)
    return out


def frame_ms(rast: Rasterizer, cams: list, ss: int) -> tuple[float, float]:
    """ms per frame of surface() and of the candidate pass alone."""
    rast.surface(cams[0], ss, normals=False)
    with Timer() as t:
        for c in cams:
            rast.surface(c, ss, normals=False)
    big = [c.scaled(ss) for c in cams]
    with Timer() as u:
        for c in big:
            rast.triangle_ids(rast.v, rast.f, c, *rast._depth_range(c))
    return 1000 * t.s / len(cams), 1000 * u.s / len(cams)


def agreement(a: Rasterizer, b: Rasterizer, cams: list, ss: int, extent: float) -> dict:
    same = covered = cover_diff = 0
    worst = 0.0
    for c in cams:
        big = c.scaled(ss)
        ta, za, *_ = a.hits(big)
        tb, zb, *_ = b.hits(big)
        hit = (ta >= 0) | (tb >= 0)
        covered += int(hit.sum())
        same += int((hit & (ta == tb)).sum())
        cover_diff += int(((ta >= 0) != (tb >= 0)).sum())
        sa, sb = a.surface(c, ss, normals=False), b.surface(c, ss, normals=False)
        both = sa.mask & sb.mask
        if both.any():
            worst = max(worst, float((sa.xyz[both] - sb.xyz[both]).norm(dim=-1).max()) / extent)
    return {"same": same / max(covered, 1), "cover_diff": cover_diff / max(covered, 1), "xyz": worst}


def crops_vs_exact(rasts: dict, mesh, cams: list, ss: int, n_crops: int, size: int = 64) -> dict:
    """Each rasterizer against the exact CPU rasterizer (raster_cpu) on `n_crops` windows of
    size x size samples per camera: % of covered samples with the exact triangle, % the exact one
    covers and it misses, % it covers and the exact one does not."""
    from backend.cameras import Camera
    from backend.raster_cpu import rasterize
    from backend.meshio import Mesh
    out = {n: [0, 0, 0, 0] for n in rasts}           # covered, same, missing, extra
    rng = np.random.default_rng(0)
    for cam in cams:
        big = cam.scaled(ss)
        uv, z = big.project(mesh.vertices.astype(np.float64))
        fu, fv, fz = uv[:, 0][mesh.faces], uv[:, 1][mesh.faces], z[mesh.faces]
        lo_u, hi_u, lo_v, hi_v = fu.min(1), fu.max(1), fv.min(1), fv.max(1)
        behind = (fz <= 0).any(1)                    # such triangles' boxes are unbounded: keep them
        for _ in range(n_crops):
            x0, y0 = int(rng.integers(0, big.width - size)), int(rng.integers(0, big.height - size))
            keep = np.nonzero(behind | ((hi_u >= x0) & (lo_u <= x0 + size) & (hi_v >= y0) & (lo_v <= y0 + size)))[0]
            K = big.K.copy()
            K[0, 2] -= x0
            K[1, 2] -= y0
            crop = Camera(size, size, K, big.world_to_camera)
            ref = rasterize(Mesh(mesh.vertices, mesh.faces[keep]), crop).tri
            ref = np.where(ref >= 0, keep[np.maximum(ref, 0)] if len(keep) else -1, -1)
            for n, r in rasts.items():
                tri = r.hits(big)[0][y0:y0 + size, x0:x0 + size].cpu().numpy()
                hit = (tri >= 0) | (ref >= 0)
                o = out[n]
                o[0] += int(hit.sum())
                o[1] += int((hit & (tri == ref)).sum())
                o[2] += int(((ref >= 0) & (tri < 0)).sum())
                o[3] += int(((tri >= 0) & (ref < 0)).sum())
    return {n: {"same": o[1] / max(o[0], 1), "missing": o[2] / max(o[0], 1), "extra": o[3] / max(o[0], 1)}
            for n, o in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/raster.json")
    ap.add_argument("--rasterizers", default="triton,nvdiffrast")
    ap.add_argument("--subdivide", type=int, default=7, help="4^k x the scene's 891 triangles (7: 14.6 M)")
    ap.add_argument("--big-subdivide", type=int, default=8, help="a large-site mesh (8: 58 M); 0: skip")
    ap.add_argument("--sizes", default="1920x1080,3840x2160,7680x4320")
    ap.add_argument("--ss", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--agree-frames", type=int, default=4)
    ap.add_argument("--cache-views", type=int, default=32, help="procedural photos for the cache rate; 0: skip")
    ap.add_argument("--crops", type=int, default=4, help="windows per frame compared with the exact CPU rasterizer")
    a = ap.parse_args()
    dev = torch.device("cuda")
    names = available(a.rasterizers.split(","))
    spec = make_spec(0)
    rows: list[dict] = []
    meshes = [(a.subdivide, subdivide(spec.mesh, a.subdivide))]
    if a.big_subdivide:
        meshes.append((a.big_subdivide, None))
    for k, mesh in meshes:
        mesh = mesh or subdivide(spec.mesh, k)
        extent = float((mesh.vertices.max(0) - mesh.vertices.min(0)).max())
        rasts = {n: Rasterizer(mesh, dev, kind=n) for n in names}
        report(rows, {"metric": f"mesh triangles (subdivide {k})", "value": len(mesh.faces) / 1e6, "unit": "M"})
        for w, h in (tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")):
            n_frames = a.frames if w * h <= 3840 * 2160 else max(2, a.frames // 4)
            cams = make_flythrough(spec, n_frames, w, h)
            for n, r in rasts.items():
                surf, ids = frame_ms(r, cams, a.ss)
                tgt = FRAME_TARGET_MS.get((w, h)) if k == 7 else None
                report(rows, {"metric": f"{n} {w}x{h} ss{a.ss} surface", "value": surf, "unit": "ms/frame",
                              "target": tgt, "higher_is_better": False})
                report(rows, {"metric": f"  {n} of which candidates", "value": ids, "unit": "ms/frame"})
            if a.crops and w * h <= 3840 * 2160:
                for n, g in crops_vs_exact(rasts, mesh, cams[:2], a.ss, a.crops).items():
                    report(rows, {"metric": f"  {n} vs exact: same triangle", "value": 100 * g["same"], "unit": "%",
                                  "target": 99.99})
                    report(rows, {"metric": f"  {n} vs exact: samples missed", "value": 100 * g["missing"], "unit": "%"})
                    report(rows, {"metric": f"  {n} vs exact: samples covered in excess", "value": 100 * g["extra"],
                                  "unit": "%"})
            if len(rasts) > 1 and w * h <= 3840 * 2160:
                ref, *others = names
                for n in others:
                    g = agreement(rasts[ref], rasts[n], cams[:a.agree_frames], a.ss, extent)
                    report(rows, {"metric": f"  {n} vs {ref}: same triangle", "value": 100 * g["same"], "unit": "%",
                                  "target": 99.99})
                    report(rows, {"metric": f"  {n} vs {ref}: coverage differs", "value": 100 * g["cover_diff"], "unit": "%"})
                    report(rows, {"metric": f"  {n} vs {ref}: max point distance / extent", "value": g["xyz"], "unit": ""})
        report(rows, {"metric": "  peak GPU memory", "value": torch.cuda.max_memory_allocated() / 2**30, "unit": "GiB"})
        del rasts
        torch.cuda.empty_cache()
    if a.cache_views:
        from backend.cache import build_cache
        work = Path(tempfile.mkdtemp(prefix="bench_raster_"))
        scene = make_scene(work / "scene", n_views=a.cache_views, width=1280, height=960, workers=os.cpu_count() or 1)
        mpix = a.cache_views * 1280 * 960 / 1e6
        for n in names:
            os.environ[ENV] = n
            shutil.rmtree(work / "run", ignore_errors=True)
            with Timer() as t:
                build_cache(str(scene), str(work / "run"), ss=a.ss, test_every=8, device="cuda")
            report(rows, {"metric": f"{n} cache build ss{a.ss} (rasterize + write)", "value": mpix / t.s,
                          "unit": "Mpix/s", "target": 11.5})
        os.environ.pop(ENV, None)
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows, "XScale-NVS rasterizers")
    write_json(a.out, rows, args=vars(a))


if __name__ == "__main__":
    main()
