"""Meshroom / AliceVision SfMData (cameras.sfm, sfm.json: JSON) -> MVSNet scene.

The format (AliceVision's sfmDataIO/jsonIO): "version" [major, minor, revision] (numbers or numeric
strings), "views" (viewId, poseId, intrinsicId, path, width, height), "intrinsics" and "poses"
(poseId, pose.transform.rotation: 9 numbers, pose.transform.center: 3). AliceVision's pose is
x_cam = R (X - C) with OpenCV camera axes (x right, y down, z forward); the 9 numbers are R's
coefficients in Eigen's storage order, column by column, so read row by row they are R transposed,
the camera-to-world rotation. A pixel is cam2ima(p) = f * distort(p) + principalPoint + (w/2, h/2).

Intrinsics by file version, as AliceVision reads them: before 1.2.0 pxFocalLength is one number
(fx = fy); 1.2.0-1.2.1 pxFocalLength is [fx, fy]; from 1.2.2 focalLength is in mm, fx =
focalLength * width / sensorWidth (sensorWidth 36 when absent), fy = fx / pixelRatio before 1.2.5
and fx * pixelRatio from 1.2.5. principalPoint is the offset from the image centre (w/2, h/2) from
1.2.1, absolute before. Distortion (distortionParams): radial1 (k1), radial3 (k1 k2 k3) and brown
(k1 k2 k3 t1 t2, whose tangential terms are OpenCV's p1 p2 as they are) are backend.prepare.lens's
model exactly and such photos are undistorted; the fisheye, equidistant and 3DE models are refused.

Pixel centres: AliceVision puts pixel (i, j)'s centre at the integer point (i, j): its image
undistortion samples the source at cam2ima(...) with a bilinear sampler whose integer positions
are pixel centres (camera/cameraUndistortImage.hpp, image/Sampler.hpp), and its features come from
detectors with the same convention. Ours has the centre at (i + 0.5, j + 0.5), so the principal
point moves by half a pixel: cx = w/2 + offset_x + 0.5. This is read from the source, not measured
against a Meshroom run (none here); were it wrong, points would land half a pixel off.

Photos: Meshroom writes absolute paths of the machine it ran on, so photos are looked up by file
name in one folder (--images, default the folder of the first path that exists here, else the
.sfm's folder) and never elsewhere. Views without a pose (not reconstructed) are left out; views of
a camera rig are refused (their pose is the rig's, composed with a sub-pose).
"""
from __future__ import annotations

from pathlib import Path, PureWindowsPath

import numpy as np

from ..cameras import Camera
from ..errors import InputError
from .lens import Lens
from .source_files import find_one, from_centre, number, numbers, read_json, rotation
from .writer import SourceView, find_single_mesh, image_size_any, safe_name, write_scene

NAMES = ("cameras.sfm", "sfm.json")
DISTORTION = {"pinhole": (), "radial1": ("k1",), "radial3": ("k1", "k2", "k3"),
              "brown": ("k1", "k2", "k3", "t1", "t2")}
FIX = "export it again from Meshroom (the StructureFromMotion node's cameras.sfm, or ConvertSfMFormat to .sfm/.json)"


def is_sfm_json(path: Path) -> bool:
    """Whether a .json/.sfm file starts like an AliceVision SfMData (its "version" comes first)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
    except OSError:
        return False
    return b'"version"' in head and b"[" in head.split(b'"version"', 1)[1][:16]


def detect(src: Path) -> bool:
    """An .sfm file, an AliceVision .json, or a folder holding cameras.sfm, sfm.json or one .sfm."""
    if src.is_file():
        return src.suffix.lower() == ".sfm" or (src.suffix.lower() == ".json" and is_sfm_json(src))
    return any((src / n).is_file() for n in NAMES) or any(p.is_file() for p in src.glob("*.sfm"))


def version(data: dict, path: Path) -> tuple[int, int, int]:
    v = data.get("version")
    if not isinstance(v, list) or len(v) != 3:
        raise InputError(f"{path}: no \"version\" [major, minor, revision]; {FIX}.")
    nums = [number(x, f"{path}: \"version\"") for x in v]
    if any(x != int(x) for x in nums):
        raise InputError(f"{path}: \"version\" {v} is not three whole numbers; {FIX}.")
    return tuple(int(x) for x in nums)


def intrinsic(it: dict, ver: tuple[int, int, int], where: str) -> tuple[int, int, np.ndarray, Lens | None]:
    """Size, K (our continuous convention) and lens of one AliceVision intrinsic."""
    def get(key: str, default=None) -> float:
        v = it.get(key, default)
        if v is None:
            raise InputError(f"{where}: no '{key}'; {FIX}.")
        return number(v, f"{where}: '{key}'")

    kind = it.get("type")
    if kind not in DISTORTION:
        raise InputError(f"{where}: camera type {kind!r} is not converted; prepare reads {', '.join(DISTORTION)} "
                         "(fisheye and 3DE lenses cannot become pinhole photos here: set the CameraInit node's "
                         "camera type to radial3 or brown and reconstruct again, or export undistorted photos).")
    w, h = get("width"), get("height")
    if w != int(w) or h != int(h) or w <= 0 or h <= 0:
        raise InputError(f"{where}: image size {w:g}x{h:g} is not a positive whole number of pixels.")
    if ver < (1, 2, 0):
        fx = fy = get("pxFocalLength")
    elif ver < (1, 2, 2):
        fx, fy = numbers(it.get("pxFocalLength"), 2, f"{where}: 'pxFocalLength'")
    else:
        fx = get("focalLength") * w / get("sensorWidth", 36.0)
        ratio = get("pixelRatio", 1.0)
        if not ratio > 0:
            raise InputError(f"{where}: 'pixelRatio' {ratio:g} must be positive.")
        fy = fx / ratio if ver < (1, 2, 5) else fx * ratio
    if not (fx > 0 and fy > 0):
        raise InputError(f"{where}: focal length {fx:g}, {fy:g} px must be positive; the camera was not calibrated.")
    pp = numbers(it.get("principalPoint"), 2, f"{where}: 'principalPoint'")
    if ver < (1, 2, 1):
        pp = pp - (w / 2.0, h / 2.0)            # absolute before 1.2.1
    cx, cy = w / 2.0 + pp[0] + 0.5, h / 2.0 + pp[1] + 0.5      # integer pixel centres -> ours
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    names = DISTORTION[kind]
    d = it.get("distortionParams", [])
    d = [] if d == "" else d                    # AliceVision writes an empty list as ""
    d = numbers(d, len(names), f"{where}: 'distortionParams' of a {kind} camera") if names or d else np.zeros(0)
    lens = None
    if np.any(d):
        k = tuple(float(x) for x in d[:3]) + (0.0,) * (4 - min(3, len(d)))
        p1, p2 = (float(d[3]), float(d[4])) if kind == "brown" else (0.0, 0.0)
        lens = Lens(f"AliceVision {kind}", int(w), int(h), fx, fy, cx, cy, k=k[:4], p1=p1, p2=p2,
                    params=tuple(zip(names, (float(x) for x in d))))
    return int(w), int(h), K, lens


def pose(p: dict, where: str) -> np.ndarray:
    """world_to_camera of one entry of "poses"."""
    t = p.get("pose", {}).get("transform") if isinstance(p.get("pose"), dict) else None
    if not isinstance(t, dict):
        raise InputError(f"{where}: no pose.transform; {FIX}.")
    Rt = numbers(t.get("rotation"), 9, f"{where}: pose.transform.rotation").reshape(3, 3)   # rows of R^T
    C = numbers(t.get("center"), 3, f"{where}: pose.transform.center")
    return from_centre(rotation(Rt.T, f"{where}: pose.transform.rotation"), C)


def _id(v, where: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, str)) or str(v).strip() == "":
        raise InputError(f"{where} is not an id; {FIX}.")
    return str(v)


def _file_name(path: str) -> str:
    return PureWindowsPath(path).name if "\\" in path else Path(path).name


def photo_folder(paths: list[str], sfm: Path) -> Path:
    """The folder of the first photo path that exists on this machine, else the .sfm's folder."""
    for p in paths:
        if Path(p).is_file():
            return Path(p).parent
    return sfm.parent


def load_views(sfm: Path, images: Path | None = None) -> tuple[list[SourceView], list[str]]:
    data = read_json(sfm, FIX)
    if not isinstance(data, dict) or not isinstance(data.get("views"), list):
        raise InputError(f"{sfm}: no \"views\" list; this is not an AliceVision SfMData file ({FIX}).")
    ver = version(data, sfm)
    lists = {k: data.get(k, []) for k in ("views", "intrinsics", "poses")}
    for k, v in lists.items():
        if not isinstance(v, list) or not all(isinstance(e, dict) for e in v):
            raise InputError(f"{sfm}: \"{k}\" is not a list of objects; {FIX}.")
    intr = {_id(it.get("intrinsicId"), f"{sfm}: an intrinsic's intrinsicId"): it for it in lists["intrinsics"]}
    poses = {_id(p.get("poseId"), f"{sfm}: a pose's poseId"): p for p in lists["poses"]}
    paths = []
    for i, v in enumerate(lists["views"]):
        if not isinstance(v.get("path"), str) or not v["path"].strip():
            raise InputError(f"{sfm}: view {i} has no 'path'; {FIX}.")
        paths.append(v["path"])
    folder = Path(images) if images else photo_folder(paths, sfm)
    views, unposed, seen = [], 0, {}
    for v, path in zip(lists["views"], paths):
        vid = _id(v.get("viewId"), f"{sfm}: viewId of {path}")
        where = f"{sfm}: view {vid} ({_file_name(path)})"
        if "rigId" in v and str(v["rigId"]) not in ("-1", "4294967295"):
            raise InputError(f"{where} belongs to a camera rig, which prepare does not convert; reconstruct "
                             "without the rig, or export the cameras as COLMAP or Bundler.")
        pid = str(v.get("poseId", ""))
        if pid not in poses:
            unposed += 1                         # not reconstructed
            continue
        name = _file_name(path)
        if name in seen:
            raise InputError(f"{where}: two photos are named {name} ({seen[name]} and {path}); photos are looked "
                             "up by file name in one folder: give them different names.")
        seen[name] = path
        photo = folder / name
        if not photo.is_file():
            raise InputError(f"{photo}: photo of view {vid} not found; pass --images DIR with the photos "
                             f"(Meshroom's path was {path}).")
        iid = _id(v.get("intrinsicId"), f"{where}: intrinsicId")
        if iid not in intr:
            raise InputError(f"{where}: intrinsic {iid} is not in \"intrinsics\"; {FIX}.")
        w, h, K, lens = intrinsic(intr[iid], ver, f"{sfm}: intrinsic {iid}")
        if image_size_any(photo) != (w, h):
            pw, ph = image_size_any(photo)
            raise InputError(f"{photo}: the photo is {pw}x{ph} but its camera (intrinsic {iid}) is {w}x{h}; pass the "
                             "photos Meshroom reconstructed with, at their size.")
        out = safe_name(name)
        views.append(SourceView(out, photo, Camera(w, h, K, pose(poses[pid], f"{sfm}: pose {pid}"), out), lens=lens))
    notes = [f"{unposed} view(s) of {sfm.name} have no pose (not reconstructed) and were left out."] if unposed else []
    if not views:
        raise InputError(f"{sfm}: no view has a pose; this is the CameraInit output, not the reconstruction: pass "
                         "the StructureFromMotion node's cameras.sfm.")
    return views, notes


def convert_meshroom(src: str | Path, dst: str | Path, *, downsample: int = 1, copy_images: bool = True,
                     mesh: str | Path | None = None, images: str | Path | None = None,
                     undistort: bool = True) -> dict:
    """Meshroom SfMData (the .sfm/.json, or its folder) -> MVSNet scene at `dst`; the mesh is --mesh, else
    the one mesh beside the file (Meshroom's texturedMesh.obj or MeshFiltering's mesh.obj, copied there).
    images: the folder of the photos (default: the folder of the first photo path that exists here)."""
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: Meshroom cameras not found.")
    sfm = find_one(src, "*.sfm", "pass Meshroom's cameras.sfm or the folder holding it", NAMES)
    views, notes = load_views(sfm, Path(images) if images else None)
    mesh_path = Path(mesh) if mesh else find_single_mesh([sfm.parent])
    source = {"kind": "meshroom", "sfm": str(sfm), "mesh": str(mesh_path)}
    return write_scene(views, mesh_path, dst, downsample=downsample, copy_images=copy_images,
                       source=source, notes=notes, undistort=undistort)
