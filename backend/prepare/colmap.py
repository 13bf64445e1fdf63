"""COLMAP sparse model (cameras + images, .txt or .bin) -> MVSNet scene.

COLMAP's camera frame is OpenCV's (x right, y down, z forward), an image pose (QW QX QY QZ,
TX TY TZ) is world-to-camera with a Hamilton quaternion, and its pixel convention is ours: the
upper-left image corner is (0, 0) and the upper-left pixel centre (0.5, 0.5). So PINHOLE
(fx fy cx cy) and SIMPLE_PINHOLE (f cx cy) map to K exactly. Photos of SIMPLE_RADIAL, RADIAL,
OPENCV and FULL_OPENCV cameras are undistorted (backend.prepare.lens / undistort); a model whose
distortion parameters are all zero is a pinhole. Fisheye and other non-perspective models are
refused: `colmap image_undistorter` turns them into pinhole photos first.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cameras import Camera
from ..errors import InputError
from .lens import COLMAP_UNDISTORTABLE, Lens, colmap_lens
from .source_files import leaves_folder
from .writer import SourceView, find_single_mesh, safe_name, write_scene

# model id -> (name, number of params, index of first distortion param or None)
MODELS: dict[int, tuple[str, int, int | None]] = {
    0: ("SIMPLE_PINHOLE", 3, None), 1: ("PINHOLE", 4, None), 2: ("SIMPLE_RADIAL", 4, 3),
    3: ("RADIAL", 5, 3), 4: ("OPENCV", 8, 4), 5: ("OPENCV_FISHEYE", 8, 4), 6: ("FULL_OPENCV", 12, 4),
    7: ("FOV", 5, 4), 8: ("SIMPLE_RADIAL_FISHEYE", 4, 3), 9: ("RADIAL_FISHEYE", 5, 3),
    10: ("THIN_PRISM_FISHEYE", 12, 4), 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16, 4),
    12: ("SIMPLE_DIVISION", 4, 3), 13: ("DIVISION", 5, 4), 14: ("SIMPLE_FISHEYE", 3, None),
    15: ("FISHEYE", 4, None), 16: ("EUCM", 6, 4), 17: ("EQUIRECTANGULAR", 2, None),
}
MODEL_IDS = {name: mid for mid, (name, _, _) in MODELS.items()}
UNDISTORT_HINT = ("undistort the photos first with 'colmap image_undistorter --image_path IMAGES "
                  "--input_path sparse/0 --output_path dense' (it crops them to pinhole views) and prepare "
                  "from 'dense'")


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray      # (w, x, y, z), world-to-camera rotation
    tvec: np.ndarray      # world-to-camera translation
    camera_id: int
    name: str


# --- reading ----------------------------------------------------------------------------

def read_cameras_text(path: Path) -> dict[int, ColmapCamera]:
    cams = {}
    for n, line in enumerate(_text_lines(path), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        tok = s.split()
        try:
            cid, model, w, h = int(tok[0]), tok[1], int(tok[2]), int(tok[3])
            params = np.array([float(x) for x in tok[4:]])
        except (ValueError, IndexError):
            raise InputError(f"{path}: line {n} is not 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...'.") from None
        cams[cid] = ColmapCamera(cid, model, w, h, params)
    return cams


def read_images_text(path: Path) -> dict[int, ColmapImage]:
    images = {}
    lines = _text_lines(path)
    i = 0
    while i < len(lines):
        s = lines[i].strip()
        i += 1
        if not s or s.startswith("#"):
            continue
        tok = s.split()
        try:
            iid = int(tok[0])
            q = np.array([float(x) for x in tok[1:5]])
            t = np.array([float(x) for x in tok[5:8]])
            cid = int(tok[8])
            name = " ".join(tok[9:])
            if len(q) != 4 or len(t) != 3 or not name:
                raise ValueError
        except (ValueError, IndexError):
            raise InputError(f"{path}: line {i} is not 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'.") from None
        images[iid] = ColmapImage(iid, q, t, cid, name)
        i += 1                      # the next line lists the image's 2D points (possibly empty)
    return images


def read_cameras_binary(path: Path) -> dict[int, ColmapCamera]:
    cams = {}
    with _open_binary(path) as fh:
        try:
            (n,) = _unpack(fh, "<Q")
            for _ in range(n):
                cid, mid, w, h = _unpack(fh, "<iiQQ")
                if mid not in MODELS:
                    raise InputError(f"{path}: camera {cid} has unknown camera model id {mid}; "
                                     "export the model as text (colmap model_converter --output_type TXT).")
                name, nparams, _ = MODELS[mid]
                params = np.array(_unpack(fh, f"<{nparams}d"))
                cams[cid] = ColmapCamera(cid, name, w, h, params)
        except struct.error:
            raise InputError(f"{path}: the file ends early; it is truncated or not a COLMAP cameras.bin.") from None
    return cams


def read_images_binary(path: Path) -> dict[int, ColmapImage]:
    images = {}
    with _open_binary(path) as fh:
        try:
            (n,) = _unpack(fh, "<Q")
            for _ in range(n):
                rec = _unpack(fh, "<i7di")
                name = bytearray()
                while (c := fh.read(1)) != b"\x00":
                    if not c:
                        raise struct.error("eof")
                    name += c
                (npts,) = _unpack(fh, "<Q")
                fh.seek(24 * npts, 1)           # x, y (double) and point3D id (int64) per point
                iid = int(rec[0])
                images[iid] = ColmapImage(iid, np.array(rec[1:5]), np.array(rec[5:8]), int(rec[8]),
                                          name.decode("utf-8", "replace"))
        except struct.error:
            raise InputError(f"{path}: the file ends early; it is truncated or not a COLMAP images.bin.") from None
    return images


def read_model(model_dir: Path) -> tuple[dict[int, ColmapCamera], dict[int, ColmapImage]]:
    """Cameras and images of a sparse model folder; binary files win over text, as in COLMAP."""
    def pick(stem: str) -> Path:
        for ext in (".bin", ".txt"):
            if (model_dir / (stem + ext)).is_file():
                return model_dir / (stem + ext)
        raise InputError(f"{model_dir}: no {stem}.bin or {stem}.txt; point to a COLMAP sparse model folder "
                         "(e.g. sparse/0, or the 'sparse' folder written by image_undistorter).")
    cp, ip = pick("cameras"), pick("images")
    cams = read_cameras_binary(cp) if cp.suffix == ".bin" else read_cameras_text(cp)
    imgs = read_images_binary(ip) if ip.suffix == ".bin" else read_images_text(ip)
    return cams, imgs


def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror}).") from None


def _open_binary(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror}).") from None


def _unpack(fh, fmt: str) -> tuple:
    size = struct.calcsize(fmt)
    data = fh.read(size)
    if len(data) != size:
        raise struct.error("eof")
    return struct.unpack(fmt, data)


# --- conversion -------------------------------------------------------------------------

def qvec_to_rotmat(q: np.ndarray) -> np.ndarray:
    """Hamilton quaternion (w, x, y, z) -> rotation matrix (normalised first, as COLMAP does)."""
    n = float(np.linalg.norm(q))
    if not np.isfinite(n) or n == 0:
        raise ValueError("zero quaternion")
    w, x, y, z = np.asarray(q, np.float64) / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def camera_lens(cam: ColmapCamera, where: Path) -> tuple[np.ndarray, Lens | None]:
    """K of a COLMAP camera and its lens distortion (None for a pinhole); InputError for models
    that cannot be turned into pinhole photos here (fisheye and other non-perspective models)."""
    model = cam.model.upper()
    if model not in MODEL_IDS:
        raise InputError(f"{where}: camera {cam.id} has unknown model '{cam.model}'.")
    _, nparams, dist0 = MODELS[MODEL_IDS[model]]
    p = cam.params
    if len(p) != nparams:
        raise InputError(f"{where}: camera {cam.id} ({model}) has {len(p)} parameters, expected {nparams}.")
    distorted = dist0 is not None and bool(np.any(p[dist0:] != 0))
    if "FISHEYE" in model or model in ("FOV", "EUCM"):
        raise InputError(f"{where}: camera {cam.id} uses the fisheye model {model}; prepare undistorts only "
                         "perspective lenses (SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV), a pinhole photo cannot "
                         f"hold a fisheye's field of view; {UNDISTORT_HINT}.")
    if dist0 is None and model not in ("SIMPLE_PINHOLE", "PINHOLE"):
        raise InputError(f"{where}: camera {cam.id} uses the non-perspective {model} model; {UNDISTORT_HINT}.")
    if distorted and model not in COLMAP_UNDISTORTABLE:
        raise InputError(f"{where}: camera {cam.id} uses the {model} model, which prepare does not undistort "
                         f"(it handles SIMPLE_RADIAL, RADIAL, OPENCV and FULL_OPENCV); {UNDISTORT_HINT}.")
    single_f = model.startswith("SIMPLE_") or model == "RADIAL"
    fx = p[0]
    fy = p[0] if single_f else p[1]
    cx, cy = (p[1], p[2]) if single_f else (p[2], p[3])
    if not (fx > 0 and fy > 0 and np.isfinite(p).all()) or cam.width <= 0 or cam.height <= 0:
        raise InputError(f"{where}: camera {cam.id} has invalid intrinsics (f={fx}, {fy}, size "
                         f"{cam.width}x{cam.height}).")
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return K, (colmap_lens(model, p, cam.width, cam.height) if distorted else None)


def world_to_camera(img: ColmapImage, where: Path) -> np.ndarray:
    try:
        R = qvec_to_rotmat(img.qvec)
    except ValueError:
        raise InputError(f"{where}: image {img.id} ({img.name}) has an invalid quaternion.") from None
    if not np.all(np.isfinite(img.tvec)):
        raise InputError(f"{where}: image {img.id} ({img.name}) has a non-finite translation.")
    E = np.eye(4)
    E[:3, :3], E[:3, 3] = R, img.tvec
    return E


def find_model(src: Path) -> Path:
    """The sparse model folder under `src`: src itself, src/sparse (image_undistorter output),
    src/dense/sparse, src/dense/0/sparse (automatic_reconstructor), then src/sparse/0 (usually
    still distorted, so tried last)."""
    for d in (src, src / "sparse", src / "dense" / "sparse", src / "dense" / "0" / "sparse", src / "sparse" / "0"):
        if any((d / f"cameras{e}").is_file() for e in (".bin", ".txt")):
            return d
    raise InputError(f"{src}: no COLMAP model found (looked for cameras.bin/.txt in ., sparse, dense/sparse, "
                     "dense/0/sparse, sparse/0); pass the COLMAP workspace or the model folder (--model).")


def detect(src: Path) -> bool:
    """Whether `src` holds a COLMAP model where find_model looks."""
    try:
        find_model(src)
    except InputError:
        return False
    return True


def find_images(src: Path, model_dir: Path) -> Path:
    for d in (model_dir.parent / "images", model_dir.parent.parent / "images", src / "images"):
        if d.is_dir():
            return d
    raise InputError(f"{src}: no 'images' folder next to the model {model_dir}; pass --images DIR "
                     "(the photos the model was made from).")


def load_views(model_dir: Path, images_dir: Path) -> tuple[list[SourceView], list[str]]:
    """Views of a COLMAP model with their photos (in the model's world frame)."""
    cams, imgs = read_model(model_dir)
    if not imgs:
        raise InputError(f"{model_dir}: the model has no registered images.")
    views, notes = [], []
    Ks: dict[int, tuple[np.ndarray, Lens | None]] = {}
    for img in sorted(imgs.values(), key=lambda im: im.name):
        if img.camera_id not in cams:
            raise InputError(f"{model_dir}: image {img.name} refers to camera {img.camera_id}, which is not "
                             "in the cameras file; export the model again.")
        if img.camera_id not in Ks:
            Ks[img.camera_id] = camera_lens(cams[img.camera_id], model_dir)
        cam = cams[img.camera_id]
        K, lens = Ks[img.camera_id]
        path = photo_path(images_dir, img, model_dir)
        if not path.is_file():
            raise InputError(f"{path}: photo of image {img.id} not found; pass --images DIR with the "
                             "photos the model refers to.")
        views.append(SourceView(safe_name(img.name), path,
                                Camera(cam.width, cam.height, K, world_to_camera(img, model_dir), safe_name(img.name)),
                                lens=lens))
    return views, notes


def photo_path(images_dir: Path, img: ColmapImage, model_dir: Path) -> Path:
    """The photo of `img`: its name is a path relative to the images folder, which must stay
    inside it (no '..', no absolute path or drive) so that no file from elsewhere is copied into the
    scene."""
    if leaves_folder(img.name):
        raise InputError(f"{model_dir}: image {img.id} is named '{img.name}', a path outside the images folder; "
                         "COLMAP names photos by their path inside it: fix the name in the model.")
    return images_dir / img.name


def convert_colmap(src: str | Path, dst: str | Path, *, downsample: int = 1, copy_images: bool = True,
                   mesh: str | Path | None = None, images: str | Path | None = None,
                   model: str | Path | None = None, undistort: bool = True) -> dict:
    """COLMAP workspace -> MVSNet scene at `dst`. Returns a summary dict.

    src: a workspace with images/ and sparse/0 (photos with lens distortion are undistorted), an
    image_undistorter output folder (images/ + sparse/), or the model folder itself.
    model/images/mesh override what is found under src. undistort=False: raise NeedsBackend
    instead of undistorting (see write_scene).
    """
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: COLMAP folder not found.")
    model_dir = Path(model) if model else find_model(src)
    images_dir = Path(images) if images else find_images(src, model_dir)
    if not images_dir.is_dir():
        raise InputError(f"{images_dir}: image folder not found.")
    mesh_path = Path(mesh) if mesh else find_single_mesh([src, model_dir.parent, model_dir.parent.parent])
    views, notes = load_views(model_dir, images_dir)
    source = {"kind": "colmap", "model": str(model_dir), "images": str(images_dir), "mesh": str(mesh_path)}
    return write_scene(views, mesh_path, dst, downsample=downsample, copy_images=copy_images,
                       source=source, notes=notes, undistort=undistort)
