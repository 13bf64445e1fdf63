"""Render server round trip: a camera request to pixels in the client's numpy arrays, through a
real `backend serve` process and the add-on's client (xscale_blender/core/render_server.py, the code
Blender runs), for the viewport (1280x720, ss 1, RGBA) and F12 (1920x1080, ss 2, RGBA + depth).

No training needed: the run folder is written here with an untrained reference-preset model
(frame time does not depend on the weights) on the procedural scene's mesh subdivided to at least
5 M triangles. Every request is a new camera of a flythrough (a camera move). Prints, per size,
the median and p90 of the round trip (request to numpy arrays) and where it goes: the server's render (GPU work), its
packing and device-to-host copy, and the rest (pipe transfer, client).

The Blender side (writing a frame into a render result, creating the viewport's texture) needs
bpy; `--blender` measures the render-result write with the bpy module (any machine, CPU is
fine); without bpy that row is left out.

    python benchmarks/bench_server.py                        # GPU machine: prints the table
    python benchmarks/bench_server.py --blender-only         # where bpy is installed
    blender -b --python benchmarks/bench_server.py -- --blender-only     # in a Blender
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VIEWPORT, FINAL = (1280, 720, 1), (1920, 1080, 2)
TARGET_MS = {VIEWPORT: 50.0, FINAL: 150.0}


def write_run(folder: Path, subdivide: int, preset_name: str = "reference") -> tuple[Path, object, int]:
    """A run folder `backend serve` can load: config.json, mesh, checkpoint of an untrained model."""
    import torch

    from backend.config import preset, to_dict
    from backend.meshio import write_ply
    from backend.model import Manifold
    from backend.synthetic.procedural import make_spec
    from common import subdivide as subdivide_mesh
    spec = make_spec(0)
    mesh = subdivide_mesh(spec.mesh, subdivide)
    folder.mkdir(parents=True, exist_ok=True)
    write_ply(folder / "mesh.ply", mesh)
    lo, hi = mesh.vertices.min(0).tolist(), mesh.vertices.max(0).tolist()
    cfg = preset(preset_name, "cuda").model
    model = Manifold(cfg, lo, hi, n_views=1)
    (folder / "config.json").write_text(json.dumps({"mesh": str(folder / "mesh.ply"), "ss": 2, "aabb": [lo, hi],
                                                    "views": [{"name": "view_0"}]}))
    (folder / "checkpoints").mkdir(exist_ok=True)
    torch.save({"model": model.state_dict(), "model_config": to_dict(cfg), "aabb": [lo, hi], "n_views": 1,
                "step": 0}, folder / "checkpoints" / "latest.pt")
    return folder, spec, len(mesh.faces)


def round_trips(srv, cams, ss: int, options: dict, warmup: int) -> dict:
    totals, render, pack = [], [], []
    for k, c in enumerate(cams):
        t0 = time.perf_counter()
        f = srv.render(c.width, c.height, c.K, c.world_to_camera, ss=ss, **options)
        dt = time.perf_counter() - t0
        assert f.passes["rgba"].shape == (c.height, c.width, 4)
        if k >= warmup:
            sec = f.meta["seconds"]
            totals.append(dt)
            render.append(sec["render"])
            pack.append(sec["pack_copy"])
    ms = lambda a, q: 1000 * float(np.percentile(a, q))  # noqa: E731
    rest = np.array(totals) - np.array(render) - np.array(pack)
    return {"median": ms(totals, 50), "p90": ms(totals, 90), "render": ms(render, 50), "pack": ms(pack, 50),
            "rest": ms(rest, 50), "n": len(totals)}


def blender_write_ms(width: int, height: int, repeats: int = 5) -> dict:
    """Writing a frame (Combined RGBA + Depth) into a Blender render result as the engine does
    (RenderPass.rect.foreach_set), with the bpy module in background mode."""
    import bpy
    times = {"combined": [], "depth": []}
    rgba = np.random.default_rng(0).random((height * width * 4,), dtype=np.float32)
    depth = np.random.default_rng(1).random((height * width,), dtype=np.float32)

    class Probe(bpy.types.RenderEngine):
        bl_idname, bl_label = "XSCALE_BENCH_PROBE", "probe"

        def update_render_passes(self, scene=None, renderlayer=None):
            self.register_pass(scene, renderlayer, "Combined", 4, "RGBA", "COLOR")
            self.register_pass(scene, renderlayer, "Depth", 1, "Z", "VALUE")

        def render(self, depsgraph):
            result = self.begin_result(0, 0, width, height)
            layer = result.layers[0]
            t0 = time.perf_counter()
            layer.passes["Combined"].rect.foreach_set(rgba)
            t1 = time.perf_counter()
            if "Depth" in layer.passes:
                layer.passes["Depth"].rect.foreach_set(depth)
            t2 = time.perf_counter()
            self.end_result(result)
            times["combined"].append(t1 - t0)
            times["depth"].append(t2 - t1)

    bpy.utils.register_class(Probe)
    try:
        scene = bpy.context.scene
        scene.render.engine = Probe.bl_idname
        scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = width, height, 100
        bpy.context.view_layer.use_pass_z = True
        for _ in range(repeats):
            bpy.ops.render.render()
    finally:
        bpy.utils.unregister_class(Probe)
    c, d = np.median(times["combined"][1:]) * 1000, np.median(times["depth"][1:]) * 1000
    return {"combined": float(c), "depth": float(d), "total": float(c + d)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subdivide", type=int, default=7, help="4^k x the scene's 891 triangles (7: 14.6 M)")
    ap.add_argument("--frames", type=int, default=40, help="timed requests per size (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", help="folder for the run (default: a temporary folder)")
    ap.add_argument("--blender", action="store_true", help="also time the render result write (needs bpy)")
    ap.add_argument("--blender-only", action="store_true", help="only the render result write (needs bpy)")
    ap.add_argument("--quick", action="store_true",
                    help="a check that the script runs (CPU): small preset, 1/8 of the sizes, few frames")
    ap.add_argument("--out", default="benchmarks/results/server.json")
    # inside Blender (`blender -b --python bench_server.py -- --blender-only`) the arguments follow "--"
    a = ap.parse_args(sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else None)
    scale, preset_name = (8, "small") if a.quick else (1, "reference")
    if a.quick:
        a.frames, a.warmup, a.subdivide = min(a.frames, 3), min(a.warmup, 1), min(a.subdivide, 1)
    if a.blender_only:
        w = blender_write_ms(FINAL[0], FINAL[1])
        print(f"render result write {FINAL[0]}x{FINAL[1]} (bpy, this CPU): Combined {w['combined']:.1f} ms, "
              f"Depth {w['depth']:.1f} ms, total {w['total']:.1f} ms")
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from backend.synthetic.procedural import make_flythrough
    from common import print_table, report, write_json
    from xscale_blender.core import render_server as rs
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run, spec, n_tris = write_run(Path(a.work or tmp) / "bench_server_run", a.subdivide, preset_name)
        print(f"run folder with {n_tris / 1e6:.1f} M triangles written in {time.perf_counter() - t0:.0f} s", flush=True)
        report(rows, {"metric": "mesh triangles", "value": n_tris / 1e6, "unit": "M"})
        argv = [sys.executable, "-m", "backend", "serve", "--run", str(run), "--device", a.device]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0 = time.perf_counter()
        srv = rs.RenderServer(argv, env).start()
        report(rows, {"metric": "server start (process, model, mesh, rasterizer)", "value": time.perf_counter() - t0,
                      "unit": "s"})
        print(f"server: {srv.info.get('device')}", flush=True)
        results = {}
        try:
            n = a.frames + a.warmup
            for (w, h, ss), label, options in (
                    (VIEWPORT, "viewport", dict(passes=("rgba",), alpha="premultiplied", rows="bottom_up")),
                    ((320, 180, 1), "viewport moving (1/4)", dict(passes=("rgba",), alpha="premultiplied",
                                                                         rows="bottom_up")),
                    (FINAL, "F12", dict(passes=("rgba", "depth"), alpha="premultiplied", rows="bottom_up",
                                        depth_miss=1e10, recycle=True))):
                target = TARGET_MS.get((w, h, ss)) if scale == 1 else None
                w, h = w // scale, h // scale
                r = round_trips(srv, make_flythrough(spec, n, w, h), ss, options, a.warmup)
                name = f"{label} {w}x{h} ss{ss}"
                results[label] = r
                report(rows, {"metric": f"{name}, median", "value": r["median"], "unit": "ms",
                              "target": target, "higher_is_better": False})
                report(rows, {"metric": f"{name}, p90", "value": r["p90"], "unit": "ms",
                              "target": target, "higher_is_better": False})
                report(rows, {"metric": "  server render (GPU work)", "value": r["render"], "unit": "ms"})
                report(rows, {"metric": "  server pack + device-to-host copy", "value": r["pack"], "unit": "ms"})
                report(rows, {"metric": "  transfer (pipe) + client", "value": r["rest"], "unit": "ms"})
        finally:
            srv.stop()
    if a.blender:
        try:
            bw = blender_write_ms(FINAL[0], FINAL[1])
        except ImportError:
            print("(no bpy here: the render result write is not measured; run --blender-only where bpy is)")
        else:
            report(rows, {"metric": "Blender result write 1920x1080 (Combined+Depth)", "value": bw["total"],
                          "unit": "ms"})
            f12 = results["F12"]["median"] + bw["total"]
            report(rows, {"metric": "F12 with the result write, median", "value": f12, "unit": "ms",
                          "target": TARGET_MS[FINAL] if scale == 1 else None, "higher_is_better": False})
    print_table(rows, "XScale-NVS render server round trip")
    write_json(a.out, rows, args=vars(a))


if __name__ == "__main__":
    main()
