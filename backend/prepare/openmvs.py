"""OpenMVS scene (.mvs, the "MVSI" archive of libs/MVS/Interface.h) -> MVSNet scene.

The archive (little-endian, as OpenMVS writes it on every platform it runs on): "MVSI", a uint32
version (1-7; a file without the header is version 0) and 4 reserved bytes, then the Interface:
platforms, images, then points (not read). Integers are uint32, counts and string lengths uint64,
a string its bytes, matrices double and row-major. A platform is its name, its cameras (name,
bandName from version 4, width and height from version 1, K, R, C: the camera relative to the
platform) and its poses (R, C: world to platform rotation and the platform's centre). An image is
its name, maskName from version 5, platformID, cameraID, poseID, its ID from version 3, and from
version 7 minDepth, avgDepth, maxDepth (float) and its view scores (uint32 ID, uint32 points, four
floats each). The image's camera is Interface.h's Platform::GetPose: R = Rcam Rpose, C = Rpose^T Ccam
+ Cpose, with x_cam = R (X - C) in OpenCV axes; poseID 0xFFFFFFFF marks an image without a pose.

K is in pixels when the camera has a resolution, else normalised by the photo's larger side
(MAX(width, height), Camera::GetNormalizationScale). OpenMVS puts pixel (i, j)'s centre at the
integer point (i, j) (Camera::ComposeK puts the centre of the image at (w - 1) / 2, and rescaling
K maps c to (c + 0.5) s - 0.5), so the principal point moves by half a pixel into our convention.
OpenMVS works on undistorted photos: there is no lens distortion to remove; a skewed K is refused.
Interface::transform (from version 2: absolute to relative coordinates) is not applied: the cameras
and the meshes OpenMVS writes share the relative frame.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..cameras import Camera
from ..errors import InputError
from .source_files import find_one, from_centre, has_faces, inside, rotation
from .writer import SourceView, find_single_mesh, image_size_any, safe_name, write_scene

MAGIC = b"MVSI"
MAX_VERSION = 7
NO_ID = 0xFFFFFFFF
FIX = "write it again with OpenMVS (e.g. InterfaceCOLMAP, or the scene.mvs a densify step wrote)"


class Reader:
    """Little-endian reads from the archive's bytes; an InputError when the file ends early."""

    def __init__(self, data: bytes, path: Path, pos: int = 0):
        self.data, self.path, self.pos = data, path, pos

    def take(self, fmt: str):
        n = struct.calcsize("<" + fmt)
        if self.pos + n > len(self.data):
            raise InputError(f"{self.path}: the file ends early (at byte {len(self.data)}); it is truncated or not an "
                             f"OpenMVS scene; {FIX}.")
        v = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += n
        return v if len(v) > 1 else v[0]

    def count(self, item_size: int) -> int:
        n = self.take("Q")
        if n * item_size > len(self.data) - self.pos:
            raise InputError(f"{self.path}: a list of {n} items does not fit in the file; it is damaged or not an "
                             f"OpenMVS scene; {FIX}.")
        return n

    def string(self) -> str:
        n = self.count(1)
        raw = self.data[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{self.path}: a name at byte {self.pos - n} is not UTF-8 text; {FIX}.") from None

    def matrix(self) -> np.ndarray:
        return np.array(self.take("9d"), np.float64).reshape(3, 3)

    def point(self) -> np.ndarray:
        return np.array(self.take("3d"), np.float64)


def detect(src: Path) -> bool:
    """An .mvs file, or a folder holding one."""
    if src.is_file():
        return src.suffix.lower() == ".mvs"
    return any(p.is_file() for p in src.glob("*.mvs"))


def read_scene(path: Path) -> tuple[int, list, list]:
    """(version, platforms [(cameras [(width, height, K, R, C)], poses [(R, C)])], images
    [(name, platformID, cameraID, poseID)])."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror}).") from None
    r = Reader(data, path)
    version = 0
    if data[:4] == MAGIC:
        r.pos = 4
        version = r.take("I")
        r.take("I")                                  # reserved
        if version > MAX_VERSION:
            raise InputError(f"{path}: OpenMVS scene version {version} is newer than prepare reads (up to "
                             f"{MAX_VERSION}); write it with an older OpenMVS, or convert from the source capture.")
    platforms = []
    for _ in range(r.count(8)):
        r.string()
        cams = []
        for _ in range(r.count(8 + 9 * 8 * 2 + 3 * 8)):
            r.string()
            if version > 3:
                r.string()                           # bandName
            w, h = r.take("2I") if version > 0 else (0, 0)
            cams.append((w, h, r.matrix(), r.matrix(), r.point()))
        poses = [(r.matrix(), r.point()) for _ in range(r.count(9 * 8 + 3 * 8))]
        platforms.append((cams, poses))
    images = []
    for _ in range(r.count(8 + 12)):
        name = r.string()
        if version > 4:
            r.string()                               # maskName
        ids = r.take("3I")
        if version > 2:
            r.take("I")                              # global ID
        if version > 6:
            r.take("3f")                             # min, average, max depth
            scores = r.count(24)                     # view scores: skipped
            r.pos += 24 * scores
        images.append((name, *ids))
    return version, platforms, images


def _photo(mvs: Path, name: str, images: Path | None, i: int) -> Path:
    """Relative names are inside the .mvs's folder (or --images); absolute ones are looked up by file
    name in --images (default: the .mvs's folder)."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return (images or mvs.parent) / norm.rsplit("/", 1)[-1]
    return inside(images or mvs.parent, name, f"{mvs}: image {i}")


def load_views(mvs: Path, images: Path | None = None) -> tuple[list[SourceView], list[str]]:
    version, platforms, imgs = read_scene(mvs)
    views, unposed = [], 0
    for i, (name, pid, cid, poseid) in enumerate(imgs):
        where = f"{mvs}: image {i} ({name})"
        if poseid == NO_ID:
            unposed += 1
            continue
        if pid >= len(platforms) or cid >= len(platforms[pid][0]) or poseid >= len(platforms[pid][1]):
            raise InputError(f"{where}: platform {pid}, camera {cid} or pose {poseid} does not exist; {FIX}.")
        w0, h0, K, Rc, Cc = platforms[pid][0][cid]
        Rp, Cp = platforms[pid][1][poseid]
        photo = _photo(mvs, name, images, i)
        if not photo.is_file():
            raise InputError(f"{photo}: photo of image {i} not found; the image names are relative to the .mvs file's "
                             "folder (or pass --images DIR with the photos).")
        w, h = image_size_any(photo)
        if w0 and (w0, h0) != (w, h):
            raise InputError(f"{photo}: the photo is {w}x{h} but its camera is {w0}x{h0}; pass the undistorted photos "
                             "OpenMVS used, at their size.")
        K = K.copy()
        if not w0:
            K[:2] *= max(w, h)                      # normalised by the larger side
        if K[0, 1] != 0 or not np.allclose(K[2], [0, 0, 1]) or K[1, 0] != 0 or not (K[0, 0] > 0 and K[1, 1] > 0):
            raise InputError(f"{where}: K {K.ravel().tolist()} is not a pinhole matrix without skew; {FIX}.")
        K[0, 2] += 0.5                              # integer pixel centres -> ours
        K[1, 2] += 0.5
        rotation(Rc, f"{where}: its camera's R")
        R = rotation(Rc @ rotation(Rp, f"{where}: its pose's R"), f"{where}: R")
        C = Rp.T @ Cc + Cp
        out = safe_name(photo.name)
        views.append(SourceView(out, photo, Camera(w, h, K, from_centre(R, C), out)))
    notes = [f"{unposed} image(s) of {mvs.name} have no pose and were left out."] if unposed else []
    if not views:
        raise InputError(f"{mvs}: no image has a pose; {FIX}.")
    return views, notes


def convert_openmvs(src: str | Path, dst: str | Path, *, downsample: int = 1, copy_images: bool = True,
                    mesh: str | Path | None = None, images: str | Path | None = None,
                    undistort: bool = True) -> dict:
    """OpenMVS scene (the .mvs, or its folder) -> MVSNet scene at `dst`; the mesh is --mesh, else the
    one mesh beside the .mvs (point clouds such as scene_dense.ply are skipped)."""
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: OpenMVS scene not found.")
    mvs = find_one(src, "*.mvs", "pass the OpenMVS scene (.mvs) or its folder")
    views, notes = load_views(mvs, Path(images) if images else None)
    if mesh:
        mesh_path = Path(mesh)
    else:
        clouds = tuple(p.name for p in mvs.parent.glob("*.ply") if not has_faces(p))
        mesh_path = find_single_mesh([mvs.parent], skip=clouds)
    source = {"kind": "openmvs", "mvs": str(mvs), "mesh": str(mesh_path)}
    return write_scene(views, mesh_path, dst, downsample=downsample, copy_images=copy_images,
                       source=source, notes=notes, undistort=undistort)
