"""Photos only -> scene: structure from motion with pycolmap, then the COLMAP conversion.

SRC is a folder of photos (or SRC/images holds them) with no cameras or model files. The stages,
each kept under DST/sfm/ when finished (backend.prepare.stages: a rerun after a stop or a crash
continues after the last finished one):
    features   SIFT features; one camera per group of photos of the same size and lens (EXIF make,
               model and focal length), its focal length seeded from EXIF where the photos have it
    matching   every pair up to sfm.EXHAUSTIVE_MAX photos, else by GPS or by name order
    mapping    the incremental mapper, or the global one (--mapper global), with the camera model of
               --camera-model (sfm.CAMERA_MODELS), then a robust last bundle adjustment that refines
               the lens as far as the registered photos hold it (sfm.final_lens); photos outside the
               largest model are listed and left out, and a model holding photos that see too few
               of its points is refused (sfm.check_model)
and, when no mesh is given (--mesh, or the single mesh in SRC), on pycolmap's CUDA build:
    dense (undistorted workspace), stereo (per photo; the one stage that needs CUDA), fusion,
    meshing (Poisson, its depth and trim from the fused cloud's size: sfm.poisson_options; then the
               lip the surface grows past the cloud's edges peeled, its boundary smoothed: mesh_trim.py).
Without CUDA and without a mesh the cameras are kept in DST/sfm/sparse (a COLMAP model) and the
command ends with an error saying what the mesh needs. A mesh given with --mesh must be in the frame
of these cameras (structure from motion picks its own frame): one meshed from DST/sfm/sparse by
another tool; prepare with it then continues from the kept cameras. A mesh in another frame (from
another reconstruction) is refused: too few of the model's 3-D points lie on it (mesh_frame.py).
The scene itself is written by the COLMAP path (colmap.py's reading, the writer's undistortion of
the SIMPLE_RADIAL or OPENCV photos).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import events
from ..errors import InputError
from ..scene import IMAGE_EXTS
from ..stopflag import StopFlag
from . import sfm
from .colmap import load_views
from .mesh_frame import MIN_INSIDE, MIN_ON_SURFACE, frame_agreement
from .mesh_trim import BOUNDARY_SMOOTHING, OVERHANG
from .report import some_names
from .stages import Stages, Stopped
from .writer import write_scene

PHOTO_EXTS = frozenset(e.lower() for e in IMAGE_EXTS) | {".tif", ".tiff"}
MESH_EXTS = frozenset({".ply", ".obj"})
WORK = "sfm"                     # DST/sfm: the stages' products and records
PHASES = ("features", "matching", "mapping", "dense", "stereo", "fusion", "meshing")   # the last 4 on CUDA
# Rough seconds per unit on two busy CPU cores (10 photos of 6 MP: features 71 s, matching 5 s for
# 45 pairs, mapping 5 s), for the ETA only.
SECONDS_PER_MEGAPIXEL = 1.2
SECONDS_PER_PAIR = 0.12
SECONDS_PER_PHOTO_MAPPED = 0.5
# The dense stages per megapixel of the registered photos, measured on one H100 and 16 cores (22
# photos of 0.52 MP: undistortion 0.2 s, patch match's two passes 324 s, fusion 2.4 s, Poisson 10.9 s);
# patch match's ETA then follows its depth maps, so a slower GPU corrects it as it goes.
DENSE_SECONDS_PER_MEGAPIXEL = {"dense": 0.05, "stereo": 28.0, "fusion": 0.3, "meshing": 1.0}


def _photos_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in PHOTO_EXTS)


def photo_folder(src: Path) -> Path:
    """SRC/images when it holds photos, else SRC."""
    return src / "images" if (src / "images").is_dir() and _photos_in(src / "images") else src


def detect(src: Path) -> bool:
    """A folder whose files are photos (in it or in its images/), and meshes at most: no cameras,
    no model files."""
    if not src.is_dir():
        return False
    files = [p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")]
    others = [p for p in files if p.suffix.lower() not in PHOTO_EXTS | MESH_EXTS]
    folders = {p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")} - {"images", WORK}
    return not others and not folders and bool(_photos_in(photo_folder(src)))


def convert_photos(src: str | Path, dst: str | Path, *, downsample: int = 1, copy_images: bool = True,
                   mesh: str | Path | None = None, images: str | Path | None = None,
                   undistort: bool = True, mapper: str = sfm.MAPPERS[0],
                   camera_model: str = sfm.DEFAULT_CAMERA_MODEL) -> dict:
    """Photos -> cameras (pycolmap) -> MVSNet scene at `dst` (see the module doc). Returns the
    writer's summary, or {"stopped": True, ...} after a requested stop (a `stopped` event is
    printed; run again to continue)."""
    src = Path(src)
    if not src.is_dir():
        raise InputError(f"{src}: photo folder not found.")
    if not undistort:       # Blender's own Python: structure from motion runs in the backend environment
        from .undistort import NeedsBackend
        raise NeedsBackend(f"{src}: making cameras from photos runs in the backend environment (pycolmap): "
                           "run 'python -m backend prepare' there.")
    image_dir = Path(images) if images else photo_folder(src)
    names = _photos_in(image_dir) if image_dir.is_dir() else []
    if not names:
        raise InputError(f"{image_dir}: no photos ({', '.join(sorted(PHOTO_EXTS))}) found; pass the folder "
                         "that holds them (or --images DIR).")
    if mapper not in sfm.MAPPERS:
        raise InputError(f"--mapper {mapper}: choose one of {', '.join(sfm.MAPPERS)}.")
    if camera_model not in sfm.CAMERA_MODELS:
        raise InputError(f"--camera-model {camera_model}: choose one of {', '.join(sfm.CAMERA_MODELS)}.")
    if len(names) < sfm.MIN_MODEL:
        raise InputError(f"{image_dir}: {len(names)} photo(s); structure from motion needs at least "
                         f"{sfm.MIN_MODEL} overlapping photos (20 or more for a good model).")
    mesh_path = Path(mesh) if mesh else _mesh_in(src)
    if mesh_path is not None and not mesh_path.is_file():
        raise InputError(f"{mesh_path}: mesh file not found; pass --mesh with an existing .ply or .obj.")
    pycolmap = sfm.load(src)
    dense = mesh_path is None and sfm.has_cuda(pycolmap)
    work = Path(dst) / WORK
    sfm.log_to(pycolmap, work)
    with StopFlag():
        try:
            keys = {n: sfm.lens_key(image_dir / n) for n in names}
            stages = _stages(pycolmap, keys, work, dense)
            model, record = _cameras(pycolmap, stages, image_dir, keys, work, mapper, camera_model)
            if mesh_path is not None:
                _check_mesh_frame(pycolmap, mesh_path, model)
            if dense:
                mesh_path = _mesh(pycolmap, stages, model, image_dir, work, record)
        except Stopped as s:
            events.emit("stopped", stage="sfm", phase=s.phase, step=s.done, total=s.total, work=str(work))
            return {"stopped": True, "stage": "sfm", "phase": s.phase, "work": str(work)}
    if mesh_path is None:
        raise InputError(f"{model}: cameras made ({len(record['registered'])} of {len(names)} photos registered) "
                         f"but no mesh: dense meshing needs pycolmap with CUDA; {sfm.DENSE_INSTALL}, then run "
                         "prepare again (it continues from these cameras).")
    views, notes = load_views(model, image_dir)
    source = {"kind": "photos", "images": str(image_dir), "mesh": str(mesh_path), "model": str(model),
              "photos": len(names), "registered": len(record["registered"]),
              "unregistered": record["unregistered"], "mapper": record["mapper"],
              "camera_model": record["camera_model"], "lens": record["lens"],
              "mean_reprojection_error_px": record["mean_reprojection_error_px"]}
    return write_scene(views, mesh_path, dst, downsample=downsample, copy_images=copy_images,
                       source=source, notes=notes, undistort=undistort)


def _mesh_in(src: Path) -> Path | None:
    meshes = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in MESH_EXTS)
    if len(meshes) > 1:
        raise InputError(f"{src}: several meshes found ({', '.join(p.name for p in meshes)}); choose one "
                         "with --mesh PATH.")
    return meshes[0] if meshes else None


def _check_mesh_frame(pycolmap, mesh_path: Path, model: Path) -> None:
    """InputError when the mesh is clearly not in the frame of the cameras: too few of the model's
    3-D points lie on it (mesh_frame.py)."""
    from ..meshio import load_mesh
    points = np.array([p.xyz for p in pycolmap.Reconstruction(model).points3D.values()]).reshape(-1, 3)
    fit = frame_agreement(load_mesh(mesh_path), points)
    if fit.agrees:
        return
    if fit.inside < MIN_INSIDE:
        found = f"{fit.inside} lie inside its bounding box"
    elif fit.on_surface < MIN_ON_SURFACE:
        found = f"only {fit.on_surface:.0%} of the {fit.inside} inside its bounding box lie on its surface"
    else:
        found = f"only {fit.seen:.0%} of its surface has any near it (it spreads far beyond them)"
    raise InputError(f"{mesh_path}: this mesh is not in the frame of the cameras made from the photos (another "
                     f"position, rotation or scale): of the {fit.points} 3-D points structure from motion found, "
                     f"{found}. Pass a mesh made from these cameras (the COLMAP model {model}, e.g. meshed by "
                     "OpenMVS), or run prepare without --mesh on a Linux machine with an NVIDIA GPU "
                     "(pycolmap-cuda12) so that dense stereo makes one.")


def _stages(pycolmap, keys: dict[str, list], work: Path, dense: bool) -> Stages:
    """The stages to run, with their estimated durations (for the ETA)."""
    n = len(keys)
    megapixels = sum(k[0] * k[1] for k in keys.values()) / 1e6
    pairs = n * (n - 1) / 2 if n <= sfm.EXHAUSTIVE_MAX else n * sfm.SEQUENTIAL_OVERLAP
    estimates = {"features": SECONDS_PER_MEGAPIXEL * megapixels, "matching": SECONDS_PER_PAIR * pairs,
                 "mapping": SECONDS_PER_PHOTO_MAPPED * n}
    if dense:                                   # without them no stage would have an ETA
        estimates.update({k: v * megapixels for k, v in DENSE_SECONDS_PER_MEGAPIXEL.items()})
    phases = list(PHASES if dense else PHASES[:3])
    return Stages(work, "sfm", phases, estimates, cancel=pycolmap.CancellationToken)


def _cameras(pycolmap, stages: Stages, image_dir: Path, keys: dict[str, list], work: Path,
             mapper: str, camera_model: str) -> tuple[Path, dict]:
    """Run (or keep) features, matching and mapping; the model folder and the mapping record."""
    names = list(keys)
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(repr(keys[n][:5]), []).append(n)
    gps = all(k[5] for k in keys.values())
    n = len(names)
    photos = {n: [*keys[n][:2], (image_dir / n).stat().st_size] for n in names}
    extracted = stages.run("features", "features.db", {"images": str(image_dir), "photos": photos},
                           lambda part, token: sfm.extract(pycolmap, part, image_dir, list(groups.values()), token))
    events.log(f"features: {n} photo(s), {extracted['cameras']} camera(s) (one per size and lens), "
               f"{extracted['exif_focal']} with an EXIF focal length")
    matched = stages.run("matching", "matches.db", {},
                         lambda part, token: sfm.match(pycolmap, work / "features.db", part, n, gps, token))
    events.log(f"matching: {matched['method']}, {matched['verified_pairs']} verified pair(s)")
    # the final adjustment keys the mapping: models mapped before it are mapped again, once
    settings = {"mapper": mapper, "camera_model": camera_model, "final": f"cauchy x{sfm.ROBUST_LOSS_MEDIANS} median",
                "lens_photos": sfm.LENS_PHOTOS}
    record = stages.run("mapping", "sparse", settings,
                        lambda part, token: sfm.reconstruct(pycolmap, work / "matches.db", image_dir, part, names,
                                                            mapper, token, camera_model))
    events.log(f"mapping ({record['mapper']}): {len(record['registered'])} of {n} photos registered, mean "
               f"reprojection error {record['mean_reprojection_error_px']:.2f} px, camera model "
               f"{record['camera_model']} ({record['lens']})")
    if record["unregistered"]:
        left = record["unregistered"]
        events.emit("log", message=f"warning: {len(left)} of {n} photo(s) did not register and are left out: "
                    + some_names(left)
                    + "; they overlap too little with the others or are blurred", unregistered=left)
    return work / "sparse", record


def _mesh(pycolmap, stages: Stages, model: Path, image_dir: Path, work: Path, record: dict) -> Path:
    """Dense stereo, fusion and Poisson meshing on pycolmap's CUDA build; the mesh's path."""
    ws = work / "dense"
    stages.run("dense", "dense", {"model": record["registered"]},
               lambda part, token: sfm.dense_workspace(pycolmap, model, image_dir, part, token))
    stages.run("stereo", "", {}, lambda _part, token: sfm.stereo(pycolmap, ws, token),
               count=lambda: sfm.stereo_count(ws))
    fused = stages.run("fusion", "fused.ply", {}, lambda part, token: sfm.fuse(pycolmap, ws, part, token))
    meshed = stages.run("meshing", "meshed-poisson.ply", {"overhang": OVERHANG, "smoothing": BOUNDARY_SMOOTHING},
                        lambda part, token: sfm.poisson(pycolmap, work / "fused.ply", fused["points"], part, ws))
    events.log(f"dense: {fused['points']} fused point(s), Poisson mesh of {meshed['faces']} triangle(s) "
               f"(depth {meshed['depth']}, trim {meshed['trim']:g}; {meshed.get('peeled', 0)} past the points' "
               "edges peeled)")
    return work / "meshed-poisson.ply"
