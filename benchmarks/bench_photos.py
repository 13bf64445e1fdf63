"""Photos only -> cameras and mesh -> trained model, beside the same capture trained on its
reference cameras and mesh (the GPU target of the photos-only issue).

    python benchmarks/bench_photos.py --out results/photos.json [--views 20] [--width 800 --height 600]
                                      [--iters 2000] [--work DIR] [--smoke] [--resume]
                                      [--camera-model auto|simple-radial|opencv]

1. A capture scene (backend.synthetic.capture: exposure and white balance per photo, sensor noise,
   JPEG, occluders, close-ups 8x nearer; its cameras carry ~0.3 px of pose error and its mesh is
   degraded, as a photogrammetry tool's would be) in WORK/capture. Its photos alone go to
   WORK/photos, each with the EXIF a camera writes (make, model, 35 mm equivalent focal length;
   inserted without re-encoding the JPEG).
2. `prepare WORK/photos --out WORK/scene_photos`: structure from motion, then, on pycolmap's CUDA
   build, dense stereo, fusion and Poisson meshing; each stage timed from its progress events.
   Without dense stereo (--smoke on a machine without it) the true mesh, carried into the
   recovered cameras' frame by the alignment of step 3, is passed as --mesh.
3. The recovered cameras against the true ones after a similarity alignment of their centres
   (benchmarks/camera_alignment.py). Targets: rotation <= 0.5 deg, centre <= 1 % of the scene
   extent (the true mesh's bounding-box diagonal), every photo registered.
4. `fit` on both scenes with the same settings and the capture's held-out split, then `eval`:
   held-out PSNR/SSIM against the photos, on the pixels each scene's mesh covers. The reference
   scene (WORK/reference: the capture's photos, cameras and mesh) keeps only the photos that
   registered, so that both train on and hold out the same photos (checked by name). Target:
   PSNR of the photos scene within 1 dB of the reference's.

Modes:              default (CUDA build of pycolmap)        --smoke (CPU)
  capture           30 photos 800x600, 2x2 sub-samples      30 photos 640x480, 1 sub-sample
  fit               reference preset, 2000 steps x 262,144  small preset, 30 steps x 1024 rays,
                    rays, --ss 2                            --ss 1
The capture's photos go all round the scene (a third of them close-ups): 16 photos leave ~33
degrees between neighbouring far photos, too wide for structure from motion; 30 leave ~18.
prepare's default (incremental) mapper is used; the global one returned wrong cameras here
(benchmarks/NOTES.md, photos only). The smoke run checks the script, not the targets (which the
close-ups and the scene's intrinsics keep out of reach; fewer or smaller photos give no model).
Progress lines go to stdout as the run goes, the backend's JSON events to stderr; the table is
the last lines of stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
from backend.cameras import Camera  # noqa: E402
from backend.meshio import load_mesh, write_ply, Mesh  # noqa: E402
from backend.prepare.photos import PHASES  # noqa: E402
from backend.prepare.sfm import CAMERA_MODELS, DEFAULT_CAMERA_MODEL  # noqa: E402
from backend.scene import find_mesh  # noqa: E402
from backend.synthetic.capture import make_capture  # noqa: E402
from backend.synthetic.capture_settings import CaptureParams  # noqa: E402
from backend.synthetic.procedural import VIEWS_JSON  # noqa: E402
from backend.synthetic.truth import TRUTH  # noqa: E402
from camera_alignment import camera_errors, recovered_cameras  # noqa: E402
from common import print_table, write_json  # noqa: E402

MODES = {   # views, width, height, ss_ref (capture), iters, preset, batch rays, ss (fit)
    "default": (30, 800, 600, 2, 2000, "reference", 1 << 18, 2),
    "smoke": (30, 640, 480, 1, 30, "small", 1024, 1),
}
ROTATION_TARGET_DEG = 0.5
CENTRE_TARGET = 0.01            # of the scene extent
PSNR_TARGET_DB = 1.0


def say(text: str) -> None:
    print(text, flush=True)


def backend(*args: str, label: str) -> tuple[int, list[dict], float]:
    """`python -m backend ARGS --json`: its events are copied to stderr as they come, its log
    lines and sparse progress summarised on stdout. Exit code, events, seconds."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = last = time.perf_counter()
    got = []
    with subprocess.Popen([sys.executable, "-m", "backend", *args, "--json"], stdout=subprocess.PIPE, text=True,
                          env=env) as proc:
        for line in proc.stdout:
            sys.stderr.write(line)
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if not isinstance(e, dict) or "event" not in e:
                continue
            got.append(e)
            now = time.perf_counter()
            if e.get("event") in ("log", "error"):
                say(f"  {label}: {e.get('message', '')}")
            elif e.get("event") == "progress" and now - last > 20:
                say(f"  {label}: {e.get('phase') or e.get('stage')} {e.get('step')}/{e.get('total')}"
                    f" ({now - t0:.0f} s)")
                last = now
    return proc.returncode, got, time.perf_counter() - t0


def stage_seconds(evs: list[dict]) -> dict[str, float]:
    """Seconds of each structure-from-motion stage that ran (not kept from an earlier run)."""
    out = {}
    for e in evs:
        if e.get("event") == "progress" and e.get("stage") == "sfm" and "elapsed_s" in e and not e.get("skipped"):
            out[e["phase"]] = float(e["elapsed_s"])
    return out


def add_exif(src: Path, dst: Path, cam: Camera) -> None:
    """Copy a JPEG with an EXIF block (make, model, 35 mm equivalent focal length) put right after
    its start marker: the pixels are the same bytes."""
    from PIL import Image
    exif = Image.Exif()
    exif[271], exif[272] = "XScale", "Synthetic capture"
    exif.get_ifd(0x8769)[0xA405] = int(round(cam.K[0, 0] * 36.0 / max(cam.width, cam.height)))
    payload = exif.tobytes()
    data = src.read_bytes()
    dst.write_bytes(data[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:])


def make_inputs(work: Path, views: int, width: int, height: int, ss_ref: int) -> tuple[Path, dict, dict]:
    """The capture scene (reused when made before with the same settings), its photos alone in
    WORK/photos; the capture's views.json and truth/capture.json."""
    scene = make_capture(work / "capture", "sparse", views, width, height, ss_ref=ss_ref, seed=0,
                         params=CaptureParams(magnified_factors=()), workers=os.cpu_count() or 1, reuse=True)
    info = json.loads((scene / VIEWS_JSON).read_text(encoding="utf-8"))
    truth = json.loads((scene / TRUTH / "capture.json").read_text(encoding="utf-8"))
    photos = work / "photos"
    shutil.rmtree(photos, ignore_errors=True)
    photos.mkdir(parents=True)
    for v in truth["views"]:
        add_exif(scene / "images" / f"{v['name']}.jpg", photos / f"{v['name']}.jpg",
                 Camera.from_dict(v["true_camera"]))
    return scene, info, truth


def reference_scene(capture: Path, names: list[str], dst: Path) -> Path:
    """The capture's photos, cameras and mesh for the photos in `names` (stems) only."""
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "images").mkdir(parents=True)
    (dst / "cams").mkdir()
    for n in names:
        shutil.copy(capture / "images" / f"{n}.jpg", dst / "images")
        shutil.copy(capture / "cams" / f"{n}_cam.txt", dst / "cams")
    shutil.copy(capture / "1.obj", dst / "1.obj")
    return dst


def fit_and_eval(scene: Path, run: Path, label: str, a, test_every: int) -> dict:
    code, _, fit_s = backend("fit", "--scene", str(scene), "--run", str(run), "--iters", str(a.iters),
                             "--preset", a.preset, "--batch-rays", str(a.batch_rays), "--ss", str(a.ss),
                             "--test-every", str(test_every), "--overwrite", label=f"fit {label}")
    if code != 0:
        fail(f"fit of the {label} scene failed (exit {code}); its events are on stderr")
    code, _, eval_s = backend("eval", "--run", str(run), label=f"eval {label}")
    if code != 0:
        fail(f"eval of the {label} scene failed (exit {code}); its events are on stderr")
    ev = json.loads((run / "eval.json").read_text(encoding="utf-8"))
    say(f"{label}: fit {fit_s:.1f} s, held-out PSNR {ev['mean'].get('psnr', float('nan')):.2f} dB")
    return {"fit_s": fit_s, "eval_s": eval_s, "eval": ev, "heldout": [v["view"] for v in ev["views"]]}


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def pycolmap_dense() -> bool | None:
    """Whether pycolmap runs dense stereo here (its CUDA build); None without pycolmap."""
    try:
        import pycolmap
    except ImportError:
        return None
    return bool(getattr(pycolmap, "has_cuda", False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON file of the results")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "xscale_bench_photos"),
                    help="scratch folder (the capture scene is reused when made before)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run (the true mesh without dense stereo)")
    ap.add_argument("--camera-model", default=DEFAULT_CAMERA_MODEL, choices=list(CAMERA_MODELS),
                    help="prepare's --camera-model (benchmarks/NOTES.md, photos only)")
    ap.add_argument("--resume", action="store_true",
                    help="keep WORK/scene_photos from an interrupted run: prepare continues from its finished stages")
    for k in ("views", "width", "height", "iters"):
        ap.add_argument("--" + k, type=int, help="override the mode's value")
    a = ap.parse_args()
    mode = "smoke" if a.smoke else "default"
    views, width, height, ss_ref, iters, a.preset, a.batch_rays, a.ss = MODES[mode]
    views, width, height = a.views or views, a.width or width, a.height or height
    a.iters = a.iters or iters
    dense = pycolmap_dense()
    if dense is None or (not dense and not a.smoke):
        print("error: this benchmark needs pycolmap's CUDA build for dense stereo "
              f"({'pycolmap is not installed' if dense is None else 'pycolmap.has_cuda is False'}): "
              "pip install pycolmap-cuda12 on a Linux machine with an NVIDIA GPU, or run with --smoke "
              "(needs pycolmap) to check the script with the true mesh", file=sys.stderr)
        sys.exit(2)
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    capture, info, truth = make_inputs(work, views, width, height, ss_ref)
    capture_s = time.perf_counter() - t0
    say(f"capture: {views} photos {width}x{height} in {capture_s:.1f} s ({capture})")

    scene_p = work / "scene_photos"
    if not a.resume:
        shutil.rmtree(scene_p, ignore_errors=True)
    model_arg = ["--camera-model", a.camera_model]
    code, evs, prepare_s = backend("prepare", str(work / "photos"), "--out", str(scene_p), *model_arg, label="prepare")
    stages = stage_seconds(evs)
    true_cams = {f"{v['name']}.jpg": Camera.from_dict(v["true_camera"]) for v in truth["views"]}
    model = scene_p / "sfm" / "sparse"
    if not model.is_dir():
        fail(f"prepare made no cameras (exit {code}); its events are on stderr")
    rec = recovered_cameras(model)
    err = camera_errors(rec, {n: (c.R, c.center) for n, c in true_cams.items()})
    true_mesh = load_mesh(work / "capture" / TRUTH / "true.obj")
    extent = float(np.linalg.norm(np.ptp(true_mesh.vertices, axis=0)))
    mesh_kind = "dense (Poisson)"
    if code != 0:
        if dense:
            fail(f"prepare failed (exit {code}); its events are on stderr")
        # no dense stereo here: the true mesh, carried into the recovered cameras' frame
        to_rec = err.to_truth.inverse()
        write_ply(work / "true_mesh_moved.ply", Mesh(to_rec.apply(true_mesh.vertices).astype(np.float32),
                                                     true_mesh.faces))
        code, evs, again_s = backend("prepare", str(work / "photos"), "--out", str(scene_p), "--mesh",
                                     str(work / "true_mesh_moved.ply"), *model_arg, label="prepare")
        prepare_s += again_s
        mesh_kind = "true mesh, moved (no dense stereo)"
        if code != 0:
            fail(f"prepare with the true mesh failed (exit {code}); its events are on stderr")
    triangles = len(load_mesh(find_mesh(scene_p)).faces)
    registered = sorted(n[:-4] for n in err.centre)
    say(f"prepare: {prepare_s:.1f} s, {len(registered)} of {views} photos registered, rotation error max "
        f"{max(err.rotation_deg.values()):.3f} deg, centre error max {100 * max(err.centre.values()) / extent:.3f} % "
        f"of the extent, mesh {triangles} triangles ({mesh_kind})")

    reference = reference_scene(capture, registered, work / "reference")
    te = int(info["test_every"])
    ref = fit_and_eval(reference, work / "run_reference", "reference", a, te)
    pho = fit_and_eval(scene_p, work / "run_photos", "photos", a, te)
    same_heldout = ref["heldout"] == pho["heldout"]
    if not same_heldout:
        say(f"WARNING: the held-out photos differ: reference {ref['heldout']}, photos {pho['heldout']}")

    rot, cen = list(err.rotation_deg.values()), [100 * c / extent for c in err.centre.values()]
    nan = {"psnr": float("nan"), "ssim": float("nan")}          # no held-out pixel covered by the mesh
    rp, pp = {**nan, **ref["eval"]["mean"]}, {**nan, **pho["eval"]["mean"]}
    rows = [{"metric": f"prepare {p}", "value": stages[p], "unit": "s"} for p in PHASES if p in stages]
    rows += [
        {"metric": "prepare total (scene writing and check included)", "value": prepare_s, "unit": "s"},
        {"metric": "photos registered", "value": len(registered), "target": views, "unit": "photos"},
        {"metric": "rotation error max", "value": max(rot), "target": ROTATION_TARGET_DEG, "unit": "deg",
         "higher_is_better": False},
        {"metric": "rotation error mean", "value": float(np.mean(rot)), "unit": "deg"},
        {"metric": "centre error max", "value": max(cen), "target": 100 * CENTRE_TARGET, "unit": "% extent",
         "higher_is_better": False},
        {"metric": "centre error mean", "value": float(np.mean(cen)), "unit": "% extent"},
        {"metric": f"mesh triangles, {mesh_kind}", "value": triangles, "unit": "triangles"},
        {"metric": "fit reference", "value": ref["fit_s"], "unit": "s"},
        {"metric": "fit photos", "value": pho["fit_s"], "unit": "s"},
        {"metric": "held-out PSNR reference", "value": rp["psnr"], "unit": "dB"},
        {"metric": "held-out PSNR photos", "value": pp["psnr"], "unit": "dB"},
        {"metric": "held-out SSIM reference", "value": rp["ssim"], "unit": ""},
        {"metric": "held-out SSIM photos", "value": pp["ssim"], "unit": ""},
        {"metric": "PSNR reference - photos", "value": rp["psnr"] - pp["psnr"], "unit": "dB"},
        {"metric": "total", "value": time.perf_counter() - t_all, "unit": "s"},
    ]
    targets = {"rotation": max(rot) <= ROTATION_TARGET_DEG, "centre": max(cen) <= 100 * CENTRE_TARGET,
               "registered": len(registered) == views, "psnr": bool(rp["psnr"] - pp["psnr"] <= PSNR_TARGET_DB),
               "same_heldout": same_heldout}
    write_json(a.out, rows, mode=mode, settings={"views": views, "width": width, "height": height,
                                                 "ss_ref": ss_ref, "iters": a.iters, "preset": a.preset,
                                                 "camera_model": a.camera_model,
                                                 "batch_rays": a.batch_rays, "ss": a.ss, "test_every": te},
               capture_s=capture_s, stages_s=stages, mesh=mesh_kind, targets=targets,
               heldout={"reference": ref["heldout"], "photos": pho["heldout"]},
               unregistered=sorted(set(true_cams) - set(rec)),
               cameras={n: {"rotation_deg": err.rotation_deg[n], "centre_pct_extent": 100 * err.centre[n] / extent}
                        for n in err.centre},
               eval={"reference": ref["eval"], "photos": pho["eval"]})
    say("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    print_table(rows, f"photos -> model vs reference cameras and mesh ({mode}, {views} photos {width}x{height})")
    say(f"wrote {a.out}")


if __name__ == "__main__":
    main()
