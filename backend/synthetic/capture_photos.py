"""One photo of a capture (`take_photo`, run in worker processes): its occluder, the clean render
through the sensor and JPEG, the written camera with its pose error, and a held-out photo's ground
truth."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cameras import write_mvsnet_cam
from ..colour import linear_to_srgb
from ..imageio import write_png
from ..raster_cpu import rasterize
from . import procedural as P
from .clean_render import culled, render_clean, surface_samples
from .occluders import OCCLUDER_COLOURS, OCCLUDER_ID, make_occluder, with_mesh
from .pose_noise import perturb_pose, reprojection_errors
from .sensor import jpeg_bytes, sensor
from .truth import TRUTH, save_gt


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def take_photo(job: dict) -> dict:
    """One photo's files from its job (make_capture's dict: camera, draws, occluder kind); its
    record for capture.json."""
    out, spec, cam, p = job["out"], job["spec"], job["cam"], job["params"]
    rng = np.random.default_rng([job["seed"], 7, job["index"]])
    pts, depth = surface_samples(spec, cam)
    rec = {"name": cam.name, "closeup": job["closeup"], "held_out": job["held_out"], "ev": job["ev"],
           "wb": list(job["wb"]), "iso": job["iso"], "jpeg_quality": job["quality"], "occluder": None,
           "true_camera": cam.to_dict()}
    scene = spec
    if job["occluder"]:
        occ, info = make_occluder(cam, pts, depth, job["occluder"], rng)
        scene = with_mesh(spec, occ, *OCCLUDER_COLOURS[job["occluder"]])
        c = culled(scene, cam)
        r = rasterize(c.mesh, cam)
        occ_px = r.mask & (c.face_object[np.maximum(r.tri, 0)] == OCCLUDER_ID)
        info["pixels"] = float(occ_px.mean())
        rec["occluder"] = info
        write_png(out / TRUTH / "occluders" / f"{cam.name}.png", np.repeat(occ_px[..., None], 3, 2).astype(np.float32))
    lin, alpha = render_clean(scene, cam, job["ss_ref"])
    raw = sensor(lin, job["ev"], np.asarray(job["wb"]), job["iso"], p, rng)
    srgb8 = np.round(linear_to_srgb(raw) * 255).astype(np.uint8)
    _write_bytes(out / "images" / f"{cam.name}.jpg", jpeg_bytes(srgb8, job["quality"], p.jpeg_subsampling))
    # The written camera: pose noise measured on visible surface points (equal count per photo).
    sample = pts[rng.choice(len(pts), 600, replace=True)] if len(pts) else pts
    written = perturb_pose(cam, sample, float(np.median(depth)) if len(depth) else 1.0, job["reproj_target"], rng) \
        if len(pts) else cam
    P._with_depth(spec, written)
    write_mvsnet_cam(out / "cams" / f"{cam.name}_cam.txt", written)
    err = reprojection_errors(cam, written, sample)
    rec["reproj_rms_px"] = float(np.sqrt(np.mean(err ** 2))) if len(err) else 0.0
    rec["reproj_target_px"] = job["reproj_target"]
    rec["camera"] = written.to_dict()
    if job["held_out"]:
        if scene is not spec:
            lin, alpha = render_clean(spec, cam, job["ss_ref"])
        save_gt(out / TRUTH / "heldout" / f"{cam.name}.npz", linear_to_srgb(lin), alpha)
    return rec
