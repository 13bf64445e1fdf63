"""How close structure from motion's cameras come to the true ones, per camera model and final
bundle adjustment, on the scenes that decided sfm.CAMERA_MODELS. CPU (pycolmap's CPU build).

    python benchmarks/sfm_cameras.py --out results/sfm_cameras.json [--scenes arc12,few5,capture,square]

Scenes (photos rendered from known cameras):
  arc12    tests/test_prepare_photos.py's 12 photos 400x300 on a 120-degree arc (square pixels, centred
           principal point)
  few5     five of them (p03-p07, 44 degrees of arc), where extra lens terms can over-fit
  capture  bench_photos.py's capture, 30 photos 640x480 (every third a close-up 8x nearer, JPEG, noise,
           occluders; its lens deliberately off: fy = 0.98 fx, principal point at (0.52, 0.47))
  square   the same capture with a real sensor's lens (photos_gap.LENSES["square"]: square pixels,
           the principal point a few pixels off centre)
Per scene, features and exhaustive matching once (prepare's own stages), then each camera model's
mapping, then final bundle adjustments of that model (FINALS); each scored against the truth after
a similarity of the camera centres (camera_alignment.py), and by the largest rotation error
between pairs of photos (frame-free).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (ROOT, HERE, ROOT / "tests"):
    sys.path.insert(0, str(p))
from backend.cameras import Camera  # noqa: E402
from backend.errors import InputError  # noqa: E402
from backend.meshio import load_mesh  # noqa: E402
from backend.prepare import photos, sfm  # noqa: E402
from backend.synthetic.truth import TRUTH  # noqa: E402
from camera_alignment import camera_errors, recovered_cameras  # noqa: E402
from common import write_json  # noqa: E402

# final bundle adjustments tried on each mapped model: name -> passes, each (Cauchy loss scale in px:
# None for sfm.robust_scale's, 0 for squared error; principal point refined; SIMPLE_RADIAL cameras turned
# OPENCV first). sfm.final_lens: "robust" is simple-radial's (and auto's below sfm.LENS_PHOTOS photos),
# "robust, then pp" opencv's and auto's from LENS_PHOTOS photos (its lens turned OPENCV); "squared, pp"
# was opencv's before; "robust, pp" is the principal point refined in the one robust pass.
FINALS = {"as mapped": (), "squared, pp": ((0.0, True, False),), "robust": ((None, False, False),),
          "robust, pp": ((None, True, True),), "robust, then pp": ((None, False, False), (None, True, True))}


def make_scene(name: str, work: Path) -> tuple[Path, dict[str, Camera], float]:
    """Photo folder, true cameras by photo name, and the scene's extent (mesh bounding-box diagonal)."""
    if name in ("arc12", "few5"):
        from helpers import photo_arc
        mesh, truth = photo_arc(work / "arc" / "photos", 12, 400, 300)
        folder = work / "arc" / "photos"
        if name == "few5":
            folder = work / "few5"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            truth = {n: c for n, c in truth.items() if 3 <= int(n[1:3]) <= 7}
            for n in truth:
                shutil.copy(work / "arc" / "photos" / n, folder / n)
        return folder, truth, float(np.linalg.norm(np.ptp(mesh.vertices, axis=0)))
    import bench_photos
    from photos_gap import use_lens
    use_lens(name if name == "square" else "capture")
    capture, _, truth = bench_photos.make_inputs(work / name, 30, 640, 480, 1)
    true = {f"{v['name']}.jpg": Camera.from_dict(v["true_camera"]) for v in truth["views"]}
    mesh = load_mesh(capture / TRUTH / "true.obj")
    return work / name / "photos", true, float(np.linalg.norm(np.ptp(mesh.vertices, axis=0)))


def pairwise_rotation_max(rec: dict, truth: dict[str, Camera]) -> float:
    """The largest error of a relative rotation between two registered photos (needs no alignment)."""
    names, worst = sorted(set(rec) & set(truth)), 0.0
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = (rec[a][0] @ rec[b][0].T) @ (truth[a].R @ truth[b].R.T).T
            worst = max(worst, math.degrees(math.acos(np.clip((np.trace(d) - 1) / 2, -1, 1))))
    return worst


def score(model_dir: Path, truth: dict[str, Camera], extent: float, n_photos: int) -> dict:
    rec = recovered_cameras(model_dir)
    err = camera_errors(rec, {n: (c.R, c.center) for n, c in truth.items()})
    return {"registered": f"{len(err.centre)}/{n_photos}", "rotation_max_deg": max(err.rotation_deg.values()),
            "rotation_mean_deg": float(np.mean(list(err.rotation_deg.values()))),
            "centre_max_pct": 100 * max(err.centre.values()) / extent,
            "pairwise_rotation_max_deg": pairwise_rotation_max(rec, truth)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "xscale_sfm_cameras"))
    ap.add_argument("--scenes", default="arc12,few5,capture,square")
    ap.add_argument("--models", default="simple-radial,opencv", help="--camera-model choices to map with (auto "
                    "maps as simple-radial; its last adjustment is one of FINALS)")
    a = ap.parse_args()
    import pycolmap
    work, rows = Path(a.work), []
    for name in a.scenes.split(","):
        folder, truth, extent = make_scene(name, work)
        n_photos = len(photos._photos_in(folder))
        for model in a.models.split(","):
            dst = work / f"scene_{name}"             # features and matching are kept between models
            t0 = time.perf_counter()
            real, sfm.final_lens = sfm.final_lens, lambda *_a, **_k: "as mapped"   # the mapping as it is
            try:
                photos.convert_photos(folder, dst, camera_model=model)
            except InputError as e:
                if not (dst / "sfm" / "sparse").is_dir() or "cameras made" not in str(e):
                    rows.append({"scene": name, "model": model, "final": "-", "registered": f"failed: {str(e)[:80]}"})
                    continue
            finally:
                sfm.final_lens = real
            mapped = time.perf_counter() - t0
            for final, how in FINALS.items():
                out = dst / "sfm" / "sparse"
                if how:
                    m = pycolmap.Reconstruction(out)
                    t1 = time.perf_counter()
                    for loss, pp, opencv in how:
                        loss = sfm.robust_scale(m) if loss is None else loss
                        if opencv:
                            sfm.as_opencv(pycolmap, m)
                        sfm.final_adjustment(pycolmap, m, loss_px=loss, principal_point=pp)
                    out = work / "final"
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir(parents=True)
                    m.write(out)
                    took = time.perf_counter() - t1
                else:
                    took = mapped
                rows.append({"scene": name, "model": model, "final": final, **score(out, truth, extent, n_photos),
                             "seconds": took})
                print(json.dumps(rows[-1]), flush=True)
    write_json(a.out, rows, settings=vars(a))
    cols = ["scene", "model", "final", "registered", "rotation_max_deg", "rotation_mean_deg", "centre_max_pct",
            "pairwise_rotation_max_deg", "seconds"]
    print("\nstructure from motion against the true cameras (rotation in degrees, centre in % of the scene extent)")
    print("| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols) + " |")


if __name__ == "__main__":
    main()
