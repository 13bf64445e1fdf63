"""Structure from motion and dense meshing with pycolmap (the `photos` source's work).

Each function is one stage of backend.prepare.photos: it writes its product at the path it is
given (a `.part` name, renamed by backend.prepare.stages) and returns what the stage's record keeps.
pycolmap is optional (pip install pycolmap; patch-match stereo needs its CUDA build,
pycolmap-cuda12, on Linux; fusion and Poisson meshing run on the CPU): `load()` says how to get it.
"""
from __future__ import annotations

import importlib
import math
import shutil
from pathlib import Path

import numpy as np

from .. import events
from ..errors import InputError
from ..meshio import load_mesh, load_ply_points, write_ply
from .mesh_trim import peel_overhang, smooth_boundary

EXHAUSTIVE_MAX = 60        # photos up to which every pair is matched; beyond, neighbours only
SEQUENTIAL_OVERLAP = 20    # neighbours each photo is matched with (in name order) beyond that
MIN_MODEL = 3              # photos a model needs to count
MAPPERS = ("incremental", "global")   # the first is the default: see reconstruct()
MIN_PHOTO_POINTS = 15      # 3-D points a registered photo must see for its pose to be trusted
ROBUST_LOSS_MEDIANS = 3    # the last bundle adjustment's Cauchy scale, in median point errors: final_lens()
POISSON_MIN_TRIM, POISSON_MAX_TRIM = 5, 10    # Poisson meshing's density trim: see poisson_options()
# --camera-model: the COLMAP camera model each choice maps with; the features are extracted with
# CAMERA_MODEL (one focal length, one radial term, the principal point at the centre). More lens
# parameters while mapping over-fit few photos (5 photos: 2 of 5 registered, or none), so "auto" maps
# with CAMERA_MODEL and refines the lens afterwards, where enough photos hold it (final_lens()).
# benchmarks/NOTES.md, photos only; benchmarks/sfm_cameras.py.
CAMERA_MODELS = {"auto": "SIMPLE_RADIAL", "simple-radial": "SIMPLE_RADIAL", "opencv": "OPENCV"}
DEFAULT_CAMERA_MODEL = "auto"                   # the --camera-model choice when none is given
CAMERA_MODEL = "SIMPLE_RADIAL"
LENS_PHOTOS = 20           # auto: registered photos per camera from which its lens is refined as OPENCV
INSTALL = ("pip install pycolmap in the backend environment (from the repository: "
           "pip install -e \".[photos]\")")
DENSE_INSTALL = ("pip install pycolmap-cuda12 in place of pycolmap on a Linux machine with an NVIDIA GPU, or pass "
                 "--mesh MESH meshed from these cameras by another tool (e.g. OpenMVS, or COLMAP on a CUDA machine)")


# shared libraries pycolmap's Linux wheels need from the system or from other wheels, and how to get them
LIBRARY_FIXES = {
    ("libcudart", "libcurand"): "its CUDA build needs the CUDA 12 runtime: pip install \"cuda-toolkit[cudart,curand]>=12,<13\"",
    ("libSM", "libICE", "libX11", "libXext", "libGL"): "it needs the X11 client libraries, which headless Linux "
                                                        "servers often lack: apt install libsm6 libice6 libx11-6 "
                                                        "libxext6 (dnf install libSM libICE libX11 libXext)",
}


def load(src: Path):
    """The pycolmap module, or InputError saying how to install it, or what an installed one lacks
    to load (pycolmap raises RuntimeError when its compiled core does not load)."""
    try:
        return importlib.import_module("pycolmap")
    except ModuleNotFoundError as e:
        if e.name == "pycolmap":
            raise InputError(f"{src}: making cameras from photos needs pycolmap, which this Python does not "
                             f"have: {INSTALL}.") from None
        reason = e
    except (ImportError, RuntimeError, OSError) as e:
        reason = e.__cause__ or e
    raise InputError(f"{src}: pycolmap is installed but does not load ({' '.join(str(reason).split())}): "
                     f"{load_fix(str(reason))}.") from None


def load_fix(reason: str) -> str:
    """What to do about pycolmap failing to load with `reason`."""
    for libs, fix in LIBRARY_FIXES.items():
        if any(lib in reason for lib in libs):
            return fix
    return "reinstall it (pip install --force-reinstall pycolmap, or pycolmap-cuda12 for its CUDA build)"


def log_to(pycolmap, folder: Path) -> None:
    """COLMAP's own log (every level) into FOLDER/colmap.log.*, off stderr: the stages report progress
    and errors, stderr keeps its one line."""
    folder.mkdir(parents=True, exist_ok=True)
    log = pycolmap.logging
    log.set_log_destination(log.INFO, folder / "colmap.log.")
    for level in (log.WARNING, log.ERROR, log.FATAL):
        log.set_log_destination(level, "")
    log.alsologtostderr, log.logtostderr, log.stderrthreshold = False, False, 3


def has_cuda(pycolmap) -> bool:
    return bool(getattr(pycolmap, "has_cuda", False))


def lens_key(path: Path) -> list:
    """What tells two cameras apart: photo size, and the EXIF make, model and focal length."""
    from PIL import Image
    from ..imageio import pillow_errors
    with pillow_errors(path), Image.open(path) as im:
        exif = im.getexif()
        sub = exif.get_ifd(0x8769)                  # the Exif IFD holds the focal length
        focal = sub.get(0x920A) or exif.get(0x920A)
        return [im.width, im.height, str(exif.get(271, "")).strip(), str(exif.get(272, "")).strip(),
                float(focal) if focal else None, bool(exif.get_ifd(0x8825))]


def extract(pycolmap, db: Path, images: Path, groups: list[list[str]], token) -> dict:
    """SIFT features of every photo into database `db`: one camera per group (same size and lens);
    COLMAP seeds its focal length from the photos' EXIF when they have one."""
    options = pycolmap.FeatureExtractionOptions()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = CAMERA_MODEL
    for names in groups:
        pycolmap.extract_features(db, images, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                                  reader_options=reader, extraction_options=options, device=pycolmap.Device.auto,
                                  cancellation_token=token)
    database = pycolmap.Database.open(db)
    try:
        cams = database.read_all_cameras()
        no_features = sorted(im.name for im in database.read_all_images()
                             if database.num_keypoints_for_image(im.image_id) == 0)
    finally:
        database.close()
    return {"cameras": len(cams), "exif_focal": sum(bool(c.has_prior_focal_length) for c in cams),
            "no_features": no_features}


def match(pycolmap, features_db: Path, db: Path, n_photos: int, gps: bool, token) -> dict:
    """Match features into a copy of the features database: every pair up to EXHAUSTIVE_MAX photos,
    else the nearest photos by GPS when all have it, else each photo's neighbours in name order
    (a capture's photos are usually numbered in the order they were taken)."""
    shutil.copyfile(features_db, db)
    device = pycolmap.Device.auto
    if n_photos <= EXHAUSTIVE_MAX:
        method = "exhaustive"
        pycolmap.match_exhaustive(db, device=device, cancellation_token=token)
    elif gps:
        method = "spatial"
        pycolmap.match_spatial(db, device=device, cancellation_token=token)
    else:
        method = "sequential"
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = SEQUENTIAL_OVERLAP
        pycolmap.match_sequential(db, pairing_options=pairing, device=device, cancellation_token=token)
    database = pycolmap.Database.open(db)
    try:
        pairs = int(database.num_verified_image_pairs())
    finally:
        database.close()
    return {"method": method, "verified_pairs": pairs}


def reconstruct(pycolmap, db: Path, images: Path, out: Path, photos: list[str], mapper: str, token,
                camera_model: str = DEFAULT_CAMERA_MODEL) -> dict:
    """Camera poses and 3-D points with the incremental mapper (COLMAP's default) or the global one
    (GLOMAP). The largest model is written to `out`; photos outside it are listed. The global mapper
    is not the default: on photos that match others weakly (close-ups) it returned wrong cameras
    with a low reprojection error, which check_model() refuses. `camera_model` is a --camera-model
    choice (CAMERA_MODELS): one whose model is not the extracted one maps a copy of the database with
    its cameras changed; every model ends with final_lens()."""
    if mapper == "global" and not hasattr(pycolmap, "global_mapping"):
        raise InputError(f"--mapper global: this pycolmap ({getattr(pycolmap, '__version__', '?')}) has no global mapper; "
                         "upgrade it (pip install -U pycolmap) or use --mapper incremental.")
    work = out.with_name(out.name + "-models")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if CAMERA_MODELS[camera_model] != CAMERA_MODEL:
        db = _with_camera_model(pycolmap, db, work / "database.db", CAMERA_MODELS[camera_model])
    if mapper == "global":
        options = pycolmap.GlobalPipelineOptions()
        options.min_model_size = MIN_MODEL
        models = pycolmap.global_mapping(db, images, work, options)
    else:
        options = pycolmap.IncrementalPipelineOptions()
        options.min_model_size = MIN_MODEL
        models = pycolmap.incremental_mapping(db, images, work, options, cancellation_token=token)
    shutil.rmtree(work, ignore_errors=True)
    if token is not None and token.is_cancelled:
        return {}
    models = sorted(models.values(), key=lambda r: r.num_reg_images(), reverse=True)
    if not models or models[0].num_reg_images() < MIN_MODEL:
        raise InputError(f"{images}: structure from motion found no model: fewer than {MIN_MODEL} of the "
                         f"{len(photos)} photos match each other. The photos need to overlap (each part of the "
                         "subject in three or more photos, from viewpoints a few degrees apart) and to be sharp.")
    best = models[0]
    lens = final_lens(pycolmap, best, camera_model)
    check_model(best, images, mapper)
    out.mkdir(parents=True)
    best.write(out)
    registered = {best.image(i).name for i in best.reg_image_ids()}
    models_used = sorted({best.camera(c).model.name for c in best.cameras})
    return {"mapper": mapper, "camera_model": "/".join(models_used), "lens": lens, "registered": sorted(registered),
            "unregistered": sorted(set(photos) - registered), "other_models": [m.num_reg_images() for m in models[1:]],
            "points": int(best.num_points3D()),
            "mean_reprojection_error_px": float(best.compute_mean_reprojection_error())}


def _with_camera_model(pycolmap, db: Path, copy: Path, camera_model: str) -> Path:
    """A copy of database `db` whose cameras have COLMAP model `camera_model`, with their focal length
    and principal point and no distortion: the cameras matching verified the pairs with."""
    shutil.copyfile(db, copy)
    database = pycolmap.Database.open(copy)
    try:
        for cam in database.read_all_cameras():
            f, cx, cy = cam.params[:3]
            params = {"OPENCV": [f, f, cx, cy, 0, 0, 0, 0]}[camera_model]
            database.update_camera(pycolmap.Camera(camera_id=cam.camera_id, model=camera_model, width=cam.width,
                                                   height=cam.height, params=params,
                                                   has_prior_focal_length=cam.has_prior_focal_length))
    finally:
        database.close()
    return copy


def final_lens(pycolmap, model, choice: str) -> str:
    """The last bundle adjustments of a mapped model, robust: a Cauchy loss whose scale is
    ROBUST_LOSS_MEDIANS times the model's median point error (0.45-0.5 px on the capture scene; 1.6 or
    6.5 times did worse). The incremental mapper's squared error let the few wrong matches it keeps
    turn the cameras (1.6-3 degrees on the capture scene, where the true cameras fit the same matches
    better; 0.2 on 12 photos), and a robust loss discounts them. Then the principal point is refined in
    a second pass: always for opencv, and for auto once every camera has LENS_PHOTOS registered photos
    (its SIMPLE_RADIAL lens then becomes OPENCV: two focal lengths, distortion); on fewer photos
    refining it tilted the cameras instead, and refined in the first pass it let a wrong camera stay
    wrong. What was done, in words."""
    per_camera: dict[int, int] = {}
    for i in model.reg_image_ids():
        cid = model.image(i).camera_id
        per_camera[cid] = per_camera.get(cid, 0) + 1
    fewest = min(per_camera.values())
    final_adjustment(pycolmap, model, robust_scale(model))
    if choice == "opencv" or (choice == "auto" and fewest >= LENS_PHOTOS):
        if choice == "auto":
            as_opencv(pycolmap, model)
        final_adjustment(pycolmap, model, robust_scale(model), principal_point=True)
        return "two focal lengths, distortion and principal point refined" + (
            f", from {fewest} or more registered photos per camera" if choice == "auto" else "")
    return "one focal length and radial distortion, principal point at the centre" + (
        f"; the rest of the lens is refined from {LENS_PHOTOS} registered photos of a camera, this one has {fewest}"
        if choice == "auto" else "")


def robust_scale(model) -> float:
    """The Cauchy scale in pixels of the model's last bundle adjustment (final_lens)."""
    return max(ROBUST_LOSS_MEDIANS * float(np.median([p.error for p in model.points3D.values()])), 0.05)


def as_opencv(pycolmap, model) -> None:
    """The model's SIMPLE_RADIAL cameras as OPENCV ones (fx = fy = f, k1 = k), in place: their two focal
    lengths, principal point and distortion can then be refined by final_adjustment()."""
    for cid in model.cameras:
        cam = model.camera(cid)
        if cam.model.name == "SIMPLE_RADIAL":
            f, cx, cy, k = cam.params
            cam.model = pycolmap.CameraModelId.OPENCV
            cam.params = [f, f, cx, cy, k, 0.0, 0.0, 0.0]


def final_adjustment(pycolmap, model, loss_px: float = 0.0, principal_point: bool = False) -> None:
    """A last bundle adjustment of every registered photo (through the adjuster:
    pycolmap.bundle_adjustment turns COLMAP's log on stderr back on). `loss_px` > 0: a Cauchy loss of
    that scale in pixels instead of squared error, so that the few wrong matches a model keeps do not
    pull the cameras; `principal_point`: refine it too."""
    options = pycolmap.BundleAdjustmentOptions()
    options.refine_principal_point, options.print_summary = principal_point, False
    if loss_px > 0:
        solver = getattr(options, "ceres", options)      # pycolmap 4 moved the solver's options into .ceres
        solver.loss_function_type = pycolmap.LossFunctionType.CAUCHY
        solver.loss_function_scale = loss_px
    config = pycolmap.BundleAdjustmentConfig()
    for i in model.reg_image_ids():
        config.add_image(i)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    pycolmap.create_default_bundle_adjuster(options, config, model).solve()
    model.update_point_3d_errors()              # the mean reprojection error reads them


def weak_photos(model) -> list[str]:
    """Registered photos that see fewer than MIN_PHOTO_POINTS of the model's 3-D points."""
    return sorted(model.image(i).name for i in model.reg_image_ids() if model.image(i).num_points3D < MIN_PHOTO_POINTS)


def check_model(model, images: Path, mapper: str) -> None:
    """InputError when photos are registered on too few points: a pose a handful of points hold
    is a guess, and wrong edges of the view graph (how the global mapper failed) also turn the
    photos around them, while the reprojection error stays low."""
    weak = weak_photos(model)
    if weak:
        other = "global" if mapper == "incremental" else "incremental"
        raise InputError(
            f"{images}: the {mapper} mapper's model is not trustworthy: {len(weak)} of its "
            f"{model.num_reg_images()} photos ({', '.join(weak[:5])}{', ...' if len(weak) > 5 else ''}) see fewer "
            f"than {MIN_PHOTO_POINTS} of its 3-D points; run again with --mapper {other}, or add photos between "
            "them and their neighbours (close-ups need intermediate distances).")


# --- dense: patch-match stereo needs pycolmap's CUDA build; the other stages run on the CPU ---------

def dense_workspace(pycolmap, sparse: Path, images: Path, out: Path, token) -> dict:
    """Undistorted photos and their model, the workspace of patch-match stereo."""
    pycolmap.undistort_images(out, sparse, images, cancellation_token=token)
    return {}


def stereo(pycolmap, workspace: Path, token) -> dict:
    """Depth and normal maps of every photo, in the workspace itself, so that the maps an interrupted
    run wrote stay for the rerun: COLMAP's patch match skips a photo whose depth and normal maps
    exist. It writes them in place, so a map cut short by a kill would pass for done: such maps are
    removed first (that photo is done again)."""
    cut = drop_partial_maps(workspace)
    if cut:
        events.log(f"stereo: {len(cut)} map(s) an interrupted run left incomplete will be made again "
                   f"({', '.join(cut[:3])}{', ...' if len(cut) > 3 else ''})")
    pycolmap.patch_match_stereo(workspace, cancellation_token=token)
    return {"depth_maps": len(list((workspace / "stereo" / "depth_maps").glob("*.geometric.bin")))}


def stereo_count(workspace: Path) -> tuple[int, int, str]:
    """How far patch match is: depth maps written of the photometric then the geometric pass (a
    map per photo each), for the stage's progress."""
    photos = sum(1 for _ in (workspace / "images").iterdir()) if (workspace / "images").is_dir() else 0
    maps = workspace / "stereo" / "depth_maps"
    done = sum(1 for p in maps.glob("*.bin") if p.name.endswith((".photometric.bin", ".geometric.bin"))) \
        if maps.is_dir() else 0
    return min(done, 2 * photos), 2 * photos, "depth maps"


def drop_partial_maps(workspace: Path) -> list[str]:
    """Remove the depth and normal maps whose data is shorter than their header says; their names."""
    cut = []
    for folder in ("depth_maps", "normal_maps"):
        for path in sorted((workspace / "stereo" / folder).glob("*.bin")):
            if not complete_map(path):
                path.unlink()
                cut.append(f"{folder}/{path.name}")
    return cut


def complete_map(path: Path) -> bool:
    """Whether a COLMAP dense map file (text header `width&height&channels&`, then float32 values)
    holds all the values its header announces."""
    with open(path, "rb") as f:
        head = f.read(64)
    parts = head.split(b"&", 3)
    try:
        w, h, c = (int(x) for x in parts[:3])
    except ValueError:
        return False
    header = len(parts[0]) + len(parts[1]) + len(parts[2]) + 3
    return len(parts) == 4 and path.stat().st_size == header + 4 * w * h * c


def fuse(pycolmap, workspace: Path, out: Path, token) -> dict:
    cloud = pycolmap.stereo_fusion(out, workspace, output_type="ply", cancellation_token=token)
    # the points' visibility beside it is for Delaunay meshing only: Poisson meshing reads points and normals
    out.with_name(out.name + ".vis").unlink(missing_ok=True)
    return {"points": int(cloud.num_points3D())}


def poisson_options(pycolmap, points: int):
    """Octree depth and trim for a cloud of `points` fused points. Poisson meshing gives each point
    the depth at which the octree is about as dense as the points around it (one more per 4x the
    points) and trims the surface where that density is below `trim`: COLMAP's fixed depth 13 and
    trim 10 trimmed a cloud of 20 thousand points (8 photos of 320x240) to an empty mesh. So the
    trim follows the cloud, one below 1/2 log2 of its points (there: 6, which kept the surface the
    photos see to within 0.3 % of its size; 7 dropped a quarter of it, 5 kept blobs of 1 %), up to
    COLMAP's 10 from 4 million points on, and the depth stays 3 above it, as in COLMAP's defaults."""
    options = pycolmap.PoissonMeshingOptions()
    trim = min(POISSON_MAX_TRIM, max(POISSON_MIN_TRIM, math.floor(0.5 * math.log2(max(points, 1))) - 1))
    options.trim, options.depth = float(trim), trim + 3
    return options


def depth_views(pycolmap, workspace: Path):
    """(K, cam_from_world, depth) of each photo of a dense workspace with a geometric depth map, one
    map in memory at a time; K in the maps' pixels, whose centres lie on whole numbers."""
    model = pycolmap.Reconstruction(workspace / "sparse")
    for image in model.images.values():
        path = workspace / "stereo" / "depth_maps" / f"{image.name}.geometric.bin"
        if not complete_map(path):
            continue
        depth_map = pycolmap.DepthMap()
        depth_map.read(path)
        depth = np.asarray(depth_map.to_array(), np.float32)
        camera = model.cameras[image.camera_id]
        K = np.array(camera.calibration_matrix(), np.float64)
        K[:2] *= np.array([[depth.shape[1] / camera.width], [depth.shape[0] / camera.height]])  # maps made smaller
        K[:2, 2] -= 0.5
        yield K, np.asarray(image.cam_from_world().matrix(), np.float64), depth


def poisson(pycolmap, cloud: Path, points: int, out: Path, workspace: Path | None = None) -> dict:
    """Poisson meshing of the fused cloud, then the lip it grows past the cloud's edges that the
    workspace's depth maps do not see peeled, and its boundary smoothed (mesh_trim.py)."""
    options = poisson_options(pycolmap, points)
    pycolmap.poisson_meshing(cloud, out, options)
    faces = ply_faces(out) if out.is_file() else 0
    if not faces:
        raise InputError(f"{cloud}: Poisson meshing of its {points} fused points made no mesh (too few points, or "
                         "photos that overlap too little); pass --mesh MESH made by another tool.")
    views = depth_views(pycolmap, workspace) if workspace is not None else ()
    mesh, peeled = peel_overhang(load_mesh(out), load_ply_points(cloud), views)
    write_ply(out, smooth_boundary(mesh))
    return {"depth": options.depth, "trim": options.trim, "faces": faces - peeled, "peeled": peeled}


def ply_faces(path: Path) -> int:
    """The face count a PLY file's header declares (Poisson meshing writes a header alone when it
    trims everything away)."""
    with open(path, "rb") as f:
        for line in f:
            words = line.split()
            if words[:2] == [b"element", b"face"] and len(words) == 3:
                return int(words[2])
            if words[:1] == [b"end_header"]:
                break
    return 0
