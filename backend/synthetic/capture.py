"""A procedural scene that behaves like a real photo set ("capture" mode), with exact ground truth.

The true scene is procedural.py's (same shapes, texture and shading) tessellated finer
(`DETAIL`), so that curved surfaces are close to their analytic shapes. What the pipeline gets is
what a photogrammetry capture would give it:

* photos: rendered from the TRUE poses with `procedural.reference_render` (linear light), then
  per-photo exposure (2**ev, ev uniform in +-`exposure_ev`, shifted so that the log-mean over the
  training photos is 0) and white-balance gains (red and blue: log gain ~ N(0, `wb_sigma`), also
  log-mean 0 over the training photos; green 1), sensor noise in linear light (shot noise with
  `full_well_e` electrons at linear 1.0 and ISO 100, divided by ISO / 100, plus `read_noise_e`
  electrons of read noise; ISO log-uniform in `iso`), the sRGB transfer curve (clipped to
  [0, 1]), 8 bits, and JPEG (Pillow, quality uniform in `jpeg_quality`, chroma subsampled as
  cameras do, `jpeg_subsampling`);
* unmodelled occluders: in a fraction `occluded_fraction` of the photos (one held-out photo, the
  others training photos) a pole or a box (alternately) stands between the camera and the scene,
  at 35-60 % of the way (geometry present in that photo only, never in the mesh);
* cameras (cams/*_cam.txt): the true poses perturbed (a small rotation and camera-centre shift,
  random direction) so that the RMS reprojection error of the visible surface points is
  `reproj_rms_px` pixels at the photo resolution over the whole set (per photo it varies by
  a log-normal factor of spread `reproj_spread`); the achieved values are measured and stored;
* mesh (1.obj): the true mesh simplified by vertex clustering (cells of `cluster_cell`, each
  cluster's vertex at the point that best fits its faces' planes, clamped to the cluster's
  vertices' bounding box; fewer triangles, sharp edges kept, slight chord error on curved
  parts), displaced along its normals by a smooth field of at most `displacement` world units
  (three sinusoids of about `displacement_freq` cycles per unit), with `holes` small holes
  (faces within about `hole_radius` of a point on the surface deleted) and `blobs` floating blobs
  (small closed lumpy spheres of radius in `blob_radius`, `blob_offset` in front of a wall).

One module each: sensor.py (photos), occluders.py, pose_noise.py (cameras), mesh_degradation.py
(mesh), magnified.py and truth.py (ground truth); capture_photos.py takes one photo.

Scale, for choosing parameters: the far photos are ~6 units from the scene with a 55 degree
horizontal field of view, so one pixel spans ~6.5e-3 units at 960 px wide (9.8e-3 at 640 px,
0.065 at 96 px); close-ups are 8x nearer. The default displacement (6e-3) is ~0.9 px at the far
photos of the 960 px sparse set, ~0.6 px at the 640 px dense set, and about a tenth of the finest
texture period (0.05 units).

Layout: `procedural.make_cameras` "multiscale" (every third photo is a close-up 8x nearer than
the far orbit), every `test_every`-th photo held out (procedural.pick_test_every: at least two far
and two close-up held-out photos when possible). Variants: `sparse` (16 photos of which 12 train,
960x720 by default) and `dense` (120 photos of which 105 train, 640x480).

Ground truth (SCENE/truth/; truth.py): capture.json (every setting, per-photo exposure,
white balance, ISO, JPEG quality, occluder, true and written camera, reprojection error; mesh
statistics; the magnified views), true.obj (the true mesh; also make_spec(seed, detail)),
heldout/NAME.npz (the clean render of every held-out photo at its TRUE pose: true mesh, no
occluder, neutral exposure and white balance, no noise, no JPEG), occluders/NAME.png (the
occluder's pixels), magnified.json (camera path, backend.campath format) with magnified/NAME.npz:
for a few surface points seen by at least two training photos, cameras 1x, 2x, 4x and 8x closer
than the nearest training photo that sees the point (on the line from the point to that photo's
centre, looking at the point, the photos' intrinsics), their clean renders and the nearest photo
resampled into the view (for side-by-side crops). Ground-truth images are sRGB in [0, 1] stored as
uint16 with the coverage alpha. The benchmark renders held-out views at their true cameras: the
written held-out cameras carry pose noise like every other photo's, so that the pipeline's own
`eval` sees a realistic input.

Magnified points are chosen within 60 degrees of the normal of the photos that see them, away
from the mesh's holes and with no blob in front of the nearest photo.

Everything is seeded: the same arguments give byte-identical folders whatever `workers` (only
the timings in capture.json differ). Usage:

    from backend.synthetic.capture import make_capture
    from backend.synthetic.truth import load_truth
    scene = make_capture("capture_dense", "dense", workers=16)      # or width=, height=, params=
    truth = load_truth(scene)                                        # held-out and magnified views
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..cameras import Camera
from ..campath import write_camera_path
from ..meshio import Mesh, write_obj
from . import procedural as P
from .capture_photos import take_photo
from .capture_settings import DETAIL, GENERATOR, VERSION, CaptureParams, settings
from .geometry import in_frame, segments_blocked
from .magnified import choose_magnified, magnified_camera, render_magnified
from .mesh_degradation import degrade_mesh
from .sensor import photometric_params
from .truth import TRUTH


def _run(fn, jobs: list[dict], workers: int) -> list:
    """fn over the per-view jobs, in `workers` processes when more than one."""
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            return list(pool.map(fn, jobs))
    return [fn(j) for j in jobs]


def capture_matches(out_dir: str | Path, **kw) -> bool:
    """True when OUT holds a complete capture scene (views.json is written last) made with
    these settings (keyword arguments of make_capture)."""
    try:
        info = json.loads((Path(out_dir) / P.VIEWS_JSON).read_text(encoding="utf-8"))
        return info.get("generator") == GENERATOR and info.get("version") == VERSION \
            and info["settings"] == settings(**kw)
    except (OSError, KeyError, TypeError, ValueError):
        return False


def make_capture(out_dir: str | Path, variant: str = "sparse", n_views: int | None = None,
                 width: int | None = None, height: int | None = None, ss_ref: int = 2, seed: int = 0,
                 params: CaptureParams | None = None, workers: int = 1, reuse: bool = False) -> Path:
    """Write a capture scene (module docstring): images/*.jpg, cams/*_cam.txt (perturbed poses),
    1.obj (the degraded mesh), truth/ (ground truth) and views.json (settings, close-up and
    held-out flags; written last). Returns the folder. `workers` > 1 renders in processes.
    `reuse`: keep OUT as it is when it already holds this scene (capture_matches)."""
    kw = {"variant": variant, "n_views": n_views, "width": width, "height": height, "ss_ref": ss_ref,
          "seed": seed, "params": params}
    out = Path(out_dir)
    if reuse and capture_matches(out, **kw):
        return out
    st = settings(**kw)
    p = params or CaptureParams()
    n, W, H = st["n_views"], st["width"], st["height"]
    t0 = time.perf_counter()
    (out / P.VIEWS_JSON).unlink(missing_ok=True)
    for d in ("images", "cams", f"{TRUTH}/heldout", f"{TRUTH}/occluders", f"{TRUTH}/magnified"):
        (out / d).mkdir(parents=True, exist_ok=True)
        for old in (out / d).iterdir():                        # a different earlier scene
            old.unlink()
    coarse = P.make_spec(seed)
    spec = P.make_spec(seed, DETAIL)
    cams, close = P.make_cameras(coarse, n, W, H, "multiscale", seed)
    test_every = P.pick_test_every(close)
    held = np.array([i % test_every == test_every // 2 for i in range(n)])
    train = [i for i in range(n) if not held[i]]
    rng = np.random.default_rng([seed, 2])
    photo = photometric_params(n, ~held, p, rng)
    targets = p.reproj_rms_px * np.exp(p.reproj_spread * rng.standard_normal(n))
    targets *= p.reproj_rms_px / np.sqrt(np.mean(targets ** 2))
    n_occ = round(p.occluded_fraction * n)
    # One held-out photo among them (when there are two or more; its ground truth must not show
    # the occluder), the others among the training photos.
    occluded = set(rng.choice(np.nonzero(held)[0], 1).tolist()) if n_occ >= 2 else set()
    occluded |= set(rng.choice(train, min(n_occ - len(occluded), len(train)), replace=False).tolist())
    first = int(rng.integers(2))                                # poles and boxes alternate
    kinds = {i: ("pole", "box")[(first + k) % 2] for k, i in enumerate(sorted(occluded))}
    mesh, mesh_stats = degrade_mesh(spec, p, np.random.default_rng([seed, 3]))
    eyes = np.stack([cam.center for cam in cams])
    for b in mesh_stats["blobs"]:                              # photos that see each blob's centre
        c = np.array(b["centre"])
        idx = [i for i, cam in enumerate(cams) if in_frame(cam, c[None])[0]]
        hidden = segments_blocked(eyes[idx], np.repeat(c[None], len(idx), 0), coarse.mesh, tol=0.0)
        b["seen_by"] = [cams[i].name for i, h in zip(idx, hidden) if not h]
    write_obj(out / "1.obj", mesh)
    write_obj(out / TRUTH / "true.obj", spec.mesh)
    t_mesh = time.perf_counter() - t0

    jobs = [{"out": out, "spec": spec, "cam": cams[i], "params": p, "seed": seed, "index": i,
             "ss_ref": ss_ref, "closeup": bool(close[i]), "held_out": bool(held[i]),
             "ev": float(photo["ev"][i]), "wb": photo["wb"][i].tolist(), "iso": float(photo["iso"][i]),
             "quality": int(photo["quality"][i]), "reproj_target": float(targets[i]),
             "occluder": kinds.get(i)} for i in range(n)]
    views = _run(take_photo, jobs, workers)
    t_photos = time.perf_counter() - t0 - t_mesh

    # Magnified views: 1x..8x closer than the nearest training photo that sees the point.
    nb = mesh_stats["body_vertices"]
    blob_faces = mesh.faces[mesh_stats["body_triangles"]:]
    blob_mesh = Mesh(mesh.vertices, blob_faces) if len(blob_faces) else None
    body = Mesh(mesh.vertices[:nb], mesh.faces[:mesh_stats["body_triangles"]])
    targets_m = choose_magnified(coarse, spec, body, blob_mesh, cams, close, train, p,
                                 np.random.default_rng([seed, 5]))
    by_name = {c.name: c for c in cams}
    mag, mjobs = [], []
    for t, tg in enumerate(targets_m):
        near = by_name[tg["nearest_photo"]]
        for fct in p.magnified_factors:
            name = f"m{t}_{fct:g}x"
            cam = magnified_camera(tg["point"], near.center, fct, near.K, W, H, name)
            mag.append({"name": name, "target": t, "factor": float(fct), "camera": cam.to_dict(),
                        "distance": float(np.linalg.norm(cam.center - np.array(tg["point"])))})
            mjobs.append({"out": out, "spec": spec, "cam": cam, "photo_cam": near, "ss_ref": ss_ref})
    _run(render_magnified, mjobs, workers)
    write_camera_path(out / TRUTH / "magnified.json", list(range(len(mag))),
                      [Camera.from_dict(m["camera"]) for m in mag])
    t_mag = time.perf_counter() - t0 - t_mesh - t_photos

    per = np.array([v["reproj_rms_px"] for v in views])
    truth = {"generator": GENERATOR, "version": VERSION, "settings": st, "test_every": test_every,
             "held_out": [c.name for c, h in zip(cams, held) if h],
             "reproj_rms_px": float(np.sqrt(np.mean(per ** 2))),
             "mesh": mesh_stats, "views": views, "magnified_targets": targets_m, "magnified": mag,
             "background_linear": spec.background.tolist(),
             "seconds": {"mesh": t_mesh, "photos": t_photos, "magnified": t_mag, "workers": workers}}
    (out / TRUTH / "capture.json").write_text(json.dumps(truth, indent=1), encoding="utf-8")
    info = {"generator": GENERATOR, "version": VERSION, "seed": seed, "detail": DETAIL, "layout": "multiscale",
            "ss_ref": ss_ref, "width": W, "height": H, "variant": variant, "test_every": test_every,
            "background_linear": spec.background.tolist(), "settings": st,
            "views": [{"name": c.name, "closeup": bool(cl), "held_out": bool(h)}
                      for c, cl, h in zip(cams, close, held)]}
    tmp = out / (P.VIEWS_JSON + ".tmp")
    tmp.write_text(json.dumps(info, indent=1), encoding="utf-8")
    tmp.replace(out / P.VIEWS_JSON)
    return out
