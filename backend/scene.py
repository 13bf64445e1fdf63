"""MVSNet scene folders: discovery and validation (numpy + stdlib only, no image decoding).

Layout: SCENE/images/ (or images_{k}/) with NAME.jpg|png, SCENE/cams/ (or cams_{k}/) with
NAME_cam.txt, and a mesh SCENE/1.obj (or any single .obj/.ply at the top level, or --mesh).
Optional SCENE/masks/ (or masks_{k}/ beside images_{k}/) with NAME.png: 8-bit, 0 = invalid pixel
(e.g. outside the source photo of an undistorted photo), 255 = valid; a photo without a mask file
is valid everywhere. Invalid pixels never enter the ray cache or the metrics.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from .cameras import Camera, read_mvsnet_cam
from .errors import InputError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
MAX_PHOTO_PIXELS = 2 * 89_478_485     # Pillow decodes no larger image (its decompression-bomb limit)


@dataclass
class View:
    name: str
    image_path: Path
    camera: Camera
    mask_path: Path | None = None      # validity mask (see the module doc); None: all pixels valid


def mask_path_for(image_path: str | Path) -> Path | None:
    """The validity mask of a photo in images[_k]/: masks[_k]/NAME.png when that file exists."""
    image_path = Path(image_path)
    d = image_path.parent
    if not d.name.startswith("images"):
        return None
    p = d.parent / ("masks" + d.name[len("images"):]) / (image_path.stem + ".png")
    return p if p.is_file() else None


@dataclass
class Scene:
    root: Path
    views: list[View]
    mesh_path: Path

    def split(self, test_every: int) -> tuple[list[int], list[int]]:
        """Indices of training and held-out views: every `test_every`-th view is held out
        (0 disables the split)."""
        n = len(self.views)
        if test_every <= 0 or n < 2:
            return list(range(n)), []
        test = [i for i in range(n) if i % test_every == test_every // 2]
        return [i for i in range(n) if i not in test], test


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) read from a PNG or JPEG header without decoding the pixels."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = _png_or_jpeg_size(fh)
    except OSError as e:
        raise InputError(f"{path}: cannot read the image ({e.strerror}).") from None
    except struct.error:              # the header ends early
        size = None
    if size is None:
        raise InputError(f"{path}: not a readable PNG or JPEG image; convert the photos to PNG or JPEG.")
    return size


def _png_or_jpeg_size(fh) -> tuple[int, int] | None:
    head = fh.read(32)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        w, h = struct.unpack(">II", head[16:24])
        return int(w), int(h)
    if head.startswith(b"\xff\xd8"):
        fh.seek(2)
        while True:
            b = fh.read(1)
            while b and b != b"\xff":
                b = fh.read(1)
            while b == b"\xff":
                b = fh.read(1)
            if not b:
                break
            marker = b[0]
            seglen = struct.unpack(">H", fh.read(2))[0]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                _p, h, w = struct.unpack(">BHH", fh.read(5))
                return int(w), int(h)
            fh.seek(seglen - 2, 1)
    return None


def _pick_dir(root: Path, base: str, level: int | None) -> Path:
    if level is not None:
        d = root / f"{base}_{level}"
        if not d.is_dir() and level == 0:
            d = root / base
        if not d.is_dir():
            raise InputError(f"{d}: folder not found (asked for level {level}).")
        return d
    if (root / base).is_dir():
        return root / base
    levels = sorted(int(m.group(1)) for p in root.glob(f"{base}_*")
                    if (m := re.fullmatch(rf"{base}_(\d+)", p.name)) and p.is_dir())
    if not levels:
        raise InputError(f"{root}: no '{base}/' folder (or '{base}_k/'). An MVSNet scene needs "
                         f"'images/' with the photos and 'cams/' with NAME_cam.txt files.")
    return root / f"{base}_{levels[0]}"


def _pick_pair(root: Path, level: int | None) -> tuple[Path, Path]:
    """images/ with cams/, or images_k/ with cams_k/ (lowest k with both) unless `level` is given."""
    if level is not None:
        return _pick_dir(root, "images", level), _pick_dir(root, "cams", level)
    if (root / "images").is_dir() and (root / "cams").is_dir():
        return root / "images", root / "cams"
    levels = sorted(int(m.group(1)) for p in root.glob("images_*")
                    if (m := re.fullmatch(r"images_(\d+)", p.name)) and (root / f"cams_{m.group(1)}").is_dir())
    if levels:
        return root / f"images_{levels[0]}", root / f"cams_{levels[0]}"
    return _pick_dir(root, "images", None), _pick_dir(root, "cams", None)


def find_mesh(root: Path) -> Path:
    for name in ("1.obj", "mesh.obj", "mesh.ply"):
        if (root / name).is_file():
            return root / name
    cands = sorted(list(root.glob("*.obj")) + list(root.glob("*.ply")))
    if len(cands) == 1:
        return cands[0]
    if not cands:
        raise InputError(f"{root}: no mesh found; put the photogrammetry mesh at {root / '1.obj'} "
                         "or pass --mesh PATH.")
    raise InputError(f"{root}: several meshes found ({', '.join(p.name for p in cands)}); "
                     "choose one with --mesh PATH.")


def load_scene(root: str | Path, mesh: str | Path | None = None, level: int | None = None) -> Scene:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: scene folder not found.")
    img_dir, cam_dir = _pick_pair(root, level)
    cam_files = sorted(cam_dir.glob("*_cam.txt"))
    if not cam_files:
        raise InputError(f"{cam_dir}: no camera files (NAME_cam.txt) found.")
    views = []
    for cf in cam_files:
        name = cf.name[: -len("_cam.txt")]
        img = next((img_dir / (name + e) for e in IMAGE_EXTS if (img_dir / (name + e)).is_file()), None)
        if img is None:
            raise InputError(f"{cf}: no image for this camera; expected {img_dir / (name + '.jpg')} "
                             "(or .png). Add the photo or remove the camera file.")
        E, K, depth = read_mvsnet_cam(cf)
        w, h = image_size(img)
        if w * h > MAX_PHOTO_PIXELS:
            raise InputError(f"{img}: the photo is {w}x{h}, more than the {MAX_PHOTO_PIXELS / 1e6:.0f} megapixels "
                             "that can be decoded; a damaged file, or a photo to shrink with an image editor first.")
        for c, size, axis in ((K[0, 2], w, "cx"), (K[1, 2], h, "cy")):
            if not 0.3 * size < c < 0.7 * size:
                raise InputError(
                    f"{img}: image is {w}x{h} but {cf.name} has {axis}={c:.1f}, far from the image "
                    f"centre; the photo and its camera file disagree in size (downsampled images "
                    f"need cams scaled by the same factor: use 'backend prepare --downsample').")
        mask = mask_path_for(img)
        if mask is not None:
            try:
                mw, mh = image_size(mask)
            except (InputError, OSError):
                mw = mh = None
            if (mw, mh) != (w, h):
                raise InputError(f"{mask}: the mask is not a {w}x{h} PNG like its photo {img.name}; delete the "
                                 "masks folder or prepare the scene again.")
        views.append(View(name, img, Camera(w, h, K, E, name, depth), mask))
    mesh_path = Path(mesh) if mesh else find_mesh(root)
    if not mesh_path.is_file():
        raise InputError(f"{mesh_path}: mesh file not found.")
    return Scene(root, views, mesh_path)
