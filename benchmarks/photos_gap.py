"""Where the photos path loses held-out PSNR against the capture's own cameras and mesh: the
recovered cameras, or a Poisson mesh. Runs on a CPU (pycolmap's CPU build), small preset.

    python benchmarks/photos_gap.py --out results/photos_gap.json [--views 30 --width 640 --height 480]
                                    [--iters 600] [--camera-model auto|simple-radial|opencv]
                                    [--poisson DEPTH:TRIM:POINT_WEIGHT[:OVERHANG],...] [--lens square]

On bench_photos.py's capture (its photos with EXIF), three scenes of the same registered photos:
  reference   the capture's cameras and mesh (what bench_photos compares with);
  cameras     the recovered cameras with the true mesh carried into their frame (bench_photos --smoke);
  poisson     the recovered cameras with the mesh of the dense stages, patch match replaced by the true
              mesh's exact depth and normal maps (tests/dense_helpers.py), so fusion and Poisson
              meshing are the only difference from `cameras`.
Each is fitted with the same settings and held out the same photos; the table gives held-out PSNR
and SSIM. `cameras - reference` is what the cameras cost, `poisson - cameras` what the Poisson
surface costs; on a GPU, patch match's noise comes on top (bench_photos.py's gap). --poisson adds a
scene per Poisson setting, meshed from the same fused cloud (e.g. 11:7:4:1.5 = octree depth 11, trim
7, point weight 4, the lip past the points peeled at 1.5 point spacings, 0: not peeled; the last is
mesh_trim.OVERHANG when left out; peeled meshes get their boundary smoothed), to weigh sfm.poisson_options' and mesh_trim's choices.
--lens square renders the capture with square pixels and a principal point near the centre (LENSES),
as most sensors have, instead of the scene's deliberately non-ideal lens (fy = 0.98 fx, off centre).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pycolmap

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))
from backend.errors import InputError  # noqa: E402
from backend.meshio import Mesh, load_mesh, load_ply_points, write_ply  # noqa: E402
from backend.prepare import photos, sfm  # noqa: E402
from backend.prepare.mesh_trim import OVERHANG, peel_overhang, smooth_boundary  # noqa: E402
from backend.scene import find_mesh  # noqa: E402
from backend.synthetic.truth import TRUTH  # noqa: E402
from backend.cameras import Camera  # noqa: E402
from bench_photos import fit_and_eval, make_inputs, reference_scene  # noqa: E402
from camera_alignment import camera_errors, recovered_cameras  # noqa: E402
from common import print_table, write_json  # noqa: E402
from dense_helpers import patch_match_standin  # noqa: E402
from backend.synthetic import procedural  # noqa: E402

# The capture's lens: (cx, cy as fractions of the image, fy / fx). "capture" is procedural.py's own.
LENSES = {"capture": (procedural.CX_FRAC, procedural.CY_FRAC, procedural.FY_OVER_FX),
          "square": (0.504, 0.493, 1.0)}     # a real sensor's: square pixels, centre off by a few px


def use_lens(name: str) -> None:
    """Cameras made from now on in this process (procedural.intrinsics reads these) have lens `name`."""
    procedural.CX_FRAC, procedural.CY_FRAC, procedural.FY_OVER_FX = LENSES[name]


def common_pixel_psnr(runs: dict[str, Path]) -> dict[str, float]:
    """Held-out PSNR of each run on the pixels every run's mesh covers (eval scores each mesh on its
    own pixels, so a mesh that reaches past the surface is scored on the background it covers too).
    Among the runs on the recovered cameras (the same undistorted photos); the reference keeps its own."""
    import torch
    from backend.checkpoint import load_model
    from backend.evaluate import render_scored
    from backend.imageio import read_image
    from backend.metrics import psnr
    from backend.raster import Rasterizer
    from backend.runfolder import RunFolder
    dev, shots = torch.device("cpu"), {}
    for name, path in runs.items():
        run = RunFolder(str(path))
        st = run.settings()
        model, _ = load_model(run, dev)
        rast = Rasterizer(load_mesh(st.mesh), dev)
        for i in st.test_views:
            v = st.views[i]
            pred, mask = render_scored(model, rast, v, st.ss)
            # runs on the recovered cameras share their undistorted photos; the reference's photos differ
            shots.setdefault((v["name"], pred.shape), {})[name] = (pred, v["image"], mask)
    scores = {name: [] for name in runs}
    for by_run in shots.values():
        common = np.logical_and.reduce([m for _, _, m in by_run.values()])
        for name, (pred, image, _) in by_run.items():
            scores[name].append(float(psnr(pred, read_image(image), common)))
    return {name: float(np.mean(s)) for name, s in scores.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/xscale_photos_gap")
    ap.add_argument("--views", type=int, default=30)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--batch-rays", type=int, default=4096)
    ap.add_argument("--camera-model", default=sfm.DEFAULT_CAMERA_MODEL, choices=list(sfm.CAMERA_MODELS))
    ap.add_argument("--poisson", default="", help="more Poisson settings DEPTH:TRIM:POINT_WEIGHT[:OVERHANG], comma-separated")
    ap.add_argument("--lens", default="capture", choices=list(LENSES), help="the photos' lens (see LENSES)")
    a = ap.parse_args()
    use_lens(a.lens)
    variants = [tuple(float(x) for x in v.split(":")) for v in a.poisson.split(",") if v]
    variants = [v + (OVERHANG,) * (4 - len(v)) for v in variants]
    a.preset, a.ss = "small", 1
    work = Path(a.work + ("" if a.lens == "capture" else f"_{a.lens}"))   # a capture is reused by its settings
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    capture, info, truth = make_inputs(work, a.views, a.width, a.height, 1)
    true_cams = {f"{v['name']}.jpg": Camera.from_dict(v["true_camera"]) for v in truth["views"]}
    true_mesh = load_mesh(capture / TRUTH / "true.obj")

    # cameras: structure from motion, then the true mesh carried into the recovered frame
    cams_scene = work / "scene_cameras"
    shutil.rmtree(cams_scene, ignore_errors=True)
    try:
        photos.convert_photos(work / "photos", cams_scene, camera_model=a.camera_model)
    except InputError as e:               # no dense stereo here: the cameras are kept, the mesh is missing
        print(f"prepare (cameras only): {e}")
    rec = recovered_cameras(cams_scene / "sfm" / "sparse")
    err = camera_errors(rec, {n: (c.R, c.center) for n, c in true_cams.items()})
    moved = work / "true_mesh_moved.ply"
    write_ply(moved, Mesh(err.to_truth.inverse().apply(true_mesh.vertices).astype(np.float32), true_mesh.faces))
    photos.convert_photos(work / "photos", cams_scene, mesh=moved, camera_model=a.camera_model)
    registered = sorted(n[:-4] for n in err.centre)
    print(f"cameras: {len(registered)} of {a.views} registered, rotation max {max(err.rotation_deg.values()):.2f} deg")

    # poisson: the same stages with patch match replaced by the true mesh's maps
    poisson_scene = work / "scene_poisson"
    shutil.rmtree(poisson_scene, ignore_errors=True)
    shutil.copytree(cams_scene / "sfm", poisson_scene / "sfm", ignore=shutil.ignore_patterns("dense*", "fused*", "meshed*"))
    centres = {n: c.center for n, c in true_cams.items()}
    real_has_cuda, real_stereo = sfm.has_cuda, sfm.stereo
    sfm.has_cuda, sfm.stereo = (lambda _p: True), patch_match_standin(true_mesh, centres)
    try:
        photos.convert_photos(work / "photos", poisson_scene, camera_model=a.camera_model)
    finally:
        sfm.has_cuda, sfm.stereo = real_has_cuda, real_stereo
    print(f"poisson: {len(load_mesh(find_mesh(poisson_scene)).faces)} triangles")

    scenes = {"poisson": poisson_scene}
    fused = poisson_scene / "sfm" / "fused.ply"
    for depth, trim, weight, overhang in variants:
        name = f"poisson {depth:g}:{trim:g}:{weight:g}:{overhang:g}"
        scene = work / f"scene_poisson_{depth:g}_{trim:g}_{weight:g}_{overhang:g}"
        shutil.rmtree(scene, ignore_errors=True)
        shutil.copytree(cams_scene / "sfm", scene / "sfm", ignore=shutil.ignore_patterns("dense*", "fused*", "meshed*"))
        options = pycolmap.PoissonMeshingOptions()
        options.depth, options.trim, options.point_weight = int(depth), trim, weight
        pycolmap.poisson_meshing(fused, scene / "poisson.ply", options)
        if overhang > 0:
            views = sfm.depth_views(pycolmap, poisson_scene / "sfm" / "dense")
            mesh = peel_overhang(load_mesh(scene / "poisson.ply"), load_ply_points(fused), views, overhang)[0]
            write_ply(scene / "poisson.ply", smooth_boundary(mesh))
        print(f"{name}: {sfm.ply_faces(scene / 'poisson.ply')} triangles")
        try:
            photos.convert_photos(work / "photos", scene, mesh=scene / "poisson.ply", camera_model=a.camera_model)
        except InputError as e:           # trimmed so far that the model's points no longer lie on it
            print(f"{name}: refused: {e}")
            continue
        scenes[name] = scene

    reference = reference_scene(capture, registered, work / "reference")
    te = int(info["test_every"])
    results = {}
    for name, scene in {"reference": reference, "cameras": cams_scene, **scenes}.items():
        run = work / f"run_{name.replace(' ', '_').replace(':', '_')}"
        results[name] = {**fit_and_eval(scene, run, name, a, te), "run": run}
    m = {k: v["eval"]["mean"] for k, v in results.items()}
    common = common_pixel_psnr({k: v["run"] for k, v in results.items()})
    rows = [{"metric": f"held-out PSNR {k}", "value": m[k]["psnr"], "unit": "dB"} for k in m]
    rows += [{"metric": f"held-out PSNR {k}, pixels all cover", "value": common[k], "unit": "dB"} for k in m]
    rows += [{"metric": f"held-out SSIM {k}", "value": m[k]["ssim"], "unit": ""} for k in m]
    rows += [{"metric": "cameras - reference", "value": m["cameras"]["psnr"] - m["reference"]["psnr"], "unit": "dB"},
             *({"metric": f"{k} - cameras", "value": m[k]["psnr"] - m["cameras"]["psnr"], "unit": "dB"} for k in scenes),
             {"metric": "rotation error max", "value": max(err.rotation_deg.values()), "unit": "deg"},
             {"metric": "registered", "value": len(registered), "unit": "photos"},
             {"metric": "total", "value": time.perf_counter() - t0, "unit": "s"}]
    write_json(a.out, rows, settings=vars(a), heldout={k: v["heldout"] for k, v in results.items()},
               eval={k: v["eval"] for k, v in results.items()})
    print_table(rows, f"photos gap: cameras vs Poisson ({a.views} photos {a.width}x{a.height}, {a.iters} steps)")


if __name__ == "__main__":
    main()
