"""nerfstudio's transforms.json (what phone capture apps export through nerfstudio) -> MVSNet scene.

The format (docs.nerf.studio, "Data conventions"): intrinsics fl_x, fl_y, cx, cy, w, h and the
distortion k1..k4, p1, p2 at the top of the file or per frame (a frame's own values win), a
camera_model, and frames with file_path (relative to the json's folder) and transform_matrix, the
camera-to-world pose with OpenGL/Blender camera axes (x right, y up, z back). Ours are OpenCV's
(y down, z forward): flipping the camera's y and z columns gives the OpenCV camera-to-world.

cx, cy are in the continuous convention (nerfstudio shoots pixel (i, j)'s ray through
(i + 0.5, j + 0.5), and copies COLMAP's principal point unchanged), so K is taken as it is. The
perspective distortion is nerfstudio's: radial 1 + k1 r2 + k2 r2^2 + k3 r2^3 + k4 r2^4 and OpenCV's
tangential p1, p2 - the lens model of backend.prepare.lens as it is; such photos are undistorted.
OPENCV_FISHEYE and the other non-perspective models are refused.

`applied_transform` (3x4, written by ns-process-data) maps the original reconstruction's world
(COLMAP's) to the json's; with --mesh-before-transform the mesh file is taken to be in that
original world and is moved into the json's. `ply_file_path` is used as the mesh when it holds
triangles (nerfstudio's sparse_pc.ply is a point cloud and is not).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cameras import Camera
from ..errors import InputError
from .lens import Lens
from .source_files import has_faces, inside, number, numbers, output_names, read_json, rotation
from .writer import SourceView, find_single_mesh, write_scene

PERSPECTIVE = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")
DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])     # camera axes: OpenGL (y up, z back) <-> OpenCV
FIX = "write it again with ns-process-data or the capture app's nerfstudio export"


def detect(src: Path) -> bool:
    """Whether `src` is a .json file (not AliceVision's sfm.json) or a folder holding transforms.json."""
    if src.is_file():
        from .meshroom import is_sfm_json
        return src.suffix.lower() == ".json" and not is_sfm_json(src)
    return (src / "transforms.json").is_file()


def find_json(src: Path) -> Path:
    if src.is_file():
        return src
    if (src / "transforms.json").is_file():
        return src / "transforms.json"
    raise InputError(f"{src}: no transforms.json; pass the nerfstudio dataset folder or its transforms.json.")


def _intrinsics(meta: dict, frame: dict, where: str) -> tuple[int, int, np.ndarray, Lens | None]:
    def get(key: str, default=None):
        v = frame.get(key, meta.get(key, default))
        if v is None:
            raise InputError(f"{where}: no '{key}' (in the frame or at the top of the file); {FIX}.")
        return number(v, f"{where}: '{key}'")

    model = frame.get("camera_model", meta.get("camera_model", "OPENCV"))
    if model not in PERSPECTIVE:
        raise InputError(f"{where}: camera_model {model!r} is not a perspective camera; prepare converts "
                         f"{', '.join(PERSPECTIVE)} (fisheye photos cannot become pinhole photos here: export "
                         "undistorted perspective frames from the capture app).")
    w, h = get("w"), get("h")
    if w != int(w) or h != int(h) or w <= 0 or h <= 0:
        raise InputError(f"{where}: image size {w:g}x{h:g} is not a positive whole number of pixels.")
    fx, fy, cx, cy = get("fl_x"), get("fl_y", frame.get("fl_x", meta.get("fl_x"))), get("cx"), get("cy")
    if not (fx > 0 and fy > 0):
        raise InputError(f"{where}: focal length fl_x={fx:g}, fl_y={fy:g} must be positive.")
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    d = {n: get(n, 0.0) for n in DISTORTION}
    lens = None
    if any(d.values()):
        if model in ("PINHOLE", "SIMPLE_PINHOLE"):
            terms = ", ".join(n for n in DISTORTION if d[n])
            raise InputError(f"{where}: camera_model {model} has distortion terms ({terms}); set camera_model to "
                             "OPENCV or remove them.")
        lens = Lens(f"nerfstudio {model}", int(w), int(h), fx, fy, cx, cy,
                    k=(d["k1"], d["k2"], d["k3"], d["k4"]), p1=d["p1"], p2=d["p2"],
                    params=tuple((n, d[n]) for n in DISTORTION))
    return int(w), int(h), K, lens


def _pose(frame: dict, where: str) -> np.ndarray:
    """world_to_camera (OpenCV axes) of a frame's transform_matrix."""
    M = frame.get("transform_matrix")
    if not isinstance(M, list) or len(M) not in (3, 4) or not all(isinstance(r, list) for r in M):
        raise InputError(f"{where}: 'transform_matrix' must be a 4x4 (or 3x4) list of rows; {FIX}.")
    rows = [numbers(r, 4, f"{where}: a row of 'transform_matrix'") for r in M]
    c2w = np.eye(4)
    c2w[:len(rows)] = rows
    if len(rows) == 4 and not np.allclose(c2w[3], [0, 0, 0, 1]):
        raise InputError(f"{where}: the last row of 'transform_matrix' is not 0 0 0 1.")
    rotation(c2w[:3, :3], f"{where}: the 3x3 part of 'transform_matrix'")
    return np.linalg.inv(c2w @ GL_TO_CV)


def applied_transform(meta: dict, where: str) -> np.ndarray | None:
    """The json's applied_transform as a 4x4 similarity (original world -> json world), if any."""
    A = meta.get("applied_transform")
    if A is None:
        return None
    if not isinstance(A, list) or len(A) not in (3, 4):
        raise InputError(f"{where}: 'applied_transform' must be a 3x4 list of rows; {FIX}.")
    T = np.eye(4)
    T[:3] = [numbers(r, 4, f"{where}: a row of 'applied_transform'") for r in A[:3]]
    s = np.cbrt(np.linalg.det(T[:3, :3]))
    if not s > 0:
        raise InputError(f"{where}: 'applied_transform' is not a rotation, translation and scale.")
    rotation(T[:3, :3] / s, f"{where}: 'applied_transform' (scale removed)")
    return T


def load_views(path: Path, images: Path | None = None) -> tuple[list[SourceView], dict, list[str]]:
    """Views of a transforms.json (in its world frame), the json itself and notes for the user."""
    meta = read_json(path, FIX)
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames or not all(isinstance(f, dict) for f in frames):
        raise InputError(f"{path}: no 'frames' list; this is not a nerfstudio transforms.json ({FIX}).")
    base = Path(images) if images else path.parent
    rels = []
    for i, f in enumerate(frames):
        rel = f.get("file_path")
        if not isinstance(rel, str) or not rel.strip():
            raise InputError(f"{path}: frame {i} has no 'file_path'; {FIX}.")
        rels.append(rel)
    views, notes, masks = [], [], 0
    for i, (frame, rel, name) in enumerate(zip(frames, rels, output_names(rels))):
        where = f"{path}: frame {i} ({rel})"
        photo = inside(base, rel, f"{path}: frame {i}")
        if not photo.is_file():
            raise InputError(f"{photo}: photo of frame {i} not found; the file_path entries are relative to the "
                             f"json's folder (or pass --images DIR).")
        w, h, K, lens = _intrinsics(meta, frame, where)
        views.append(SourceView(name, photo, Camera(w, h, K, _pose(frame, where), name), lens=lens))
        masks += "mask_path" in frame
    if masks:
        notes.append(f"{masks} frame(s) have a mask_path; masks are not carried into the scene (every pixel "
                     "of the photos is used).")
    return views, meta, notes


def find_mesh(src: Path, json_path: Path, meta: dict) -> Path:
    """The json's ply_file_path when it is a mesh, else the single mesh beside the json."""
    ply = meta.get("ply_file_path")
    skip = ()
    if isinstance(ply, str) and ply:
        p = inside(json_path.parent, ply, f"{json_path}: ply_file_path")
        if p.is_file() and has_faces(p):
            return p
        skip = (p.name,)
    folder = src if src.is_dir() else json_path.parent
    return find_single_mesh([folder], skip=skip)


def convert_nerfstudio(src: str | Path, dst: str | Path, *, downsample: int = 1, copy_images: bool = True,
                       mesh: str | Path | None = None, images: str | Path | None = None,
                       mesh_before_transform: bool = False, undistort: bool = True) -> dict:
    """nerfstudio dataset (folder with transforms.json, or the json) -> MVSNet scene at `dst`.

    images: the folder the file_path entries are relative to (default: the json's folder).
    mesh_before_transform: the mesh file is in the world before the json's applied_transform.
    undistort=False: raise NeedsBackend instead of undistorting (see write_scene).
    """
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: nerfstudio dataset not found.")
    json_path = find_json(src)
    views, meta, notes = load_views(json_path, Path(images) if images else None)
    mesh_path = Path(mesh) if mesh else find_mesh(src, json_path, meta)
    mesh_T = None
    if mesh_before_transform:
        mesh_T = applied_transform(meta, str(json_path))
        if mesh_T is None:
            notes.append("--mesh-before-transform: the json has no applied_transform, so the mesh is used as it is.")
    source = {"kind": "nerfstudio", "json": str(json_path), "mesh": str(mesh_path),
              "mesh_before_transform": bool(mesh_before_transform)}
    return write_scene(views, mesh_path, dst, downsample=downsample, copy_images=copy_images,
                       mesh_transform=mesh_T, source=source, notes=notes, undistort=undistort)
