"""Write an MVSNet scene folder from converted views (shared by every source kind).

Layout written under DST for downsampling factor k (the layout the reference code reads):
    images_{k}/NAME.jpg|png    photos (copied, linked, undistorted, or resized by k with an area filter)
    cams_{k}/NAME_cam.txt      world_to_camera + K of the photo as written
    masks_{k}/NAME.png         validity mask (8-bit, 255 valid, 0 invalid) of photos that have
                               invalid pixels (undistorted photos); no file: every pixel is valid
    mesh.obj|ply               the scene mesh, in the cameras' world frame (never modified)
    prepare.json               what was converted, from where, and with which options

Photos are written by a pool of threads (decoding, OpenCV's remap and encoding leave the GIL), each
file atomically; undistorted photos already written by an interrupted run with the same inputs
are skipped (masks_{k}/.undistort.json).
"""
from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import events
from ..cameras import Camera, write_mvsnet_cam
from ..errors import InputError
from ..imageio import pillow_errors
from ..meshio import Mesh, load_mesh, write_ply
from ..runfolder import make_dir
from ..scene import IMAGE_EXTS, image_size
from .downsample import block_all, crop_size, downsample_camera, resize_image_file
from .lens import Canvas, Lens, pinhole_canvas

MESH_NAMES = ("1.obj", "mesh.obj", "mesh.ply")   # backend.scene.find_mesh looks in this order
_KEEP_EXTS = {".png", ".jpg", ".jpeg"}


@dataclass
class SourceView:
    name: str            # output name: images_k/NAME.ext and cams_k/NAME_cam.txt
    image: Path          # source photo (full resolution)
    camera: Camera       # camera of the source photo, in the output world frame (with a lens: its
                         # size and pose; K is replaced by the undistorted photo's)
    lens: Lens | None = None     # lens distortion to remove; None for a pinhole photo
    mask: Path | None = None     # validity mask of the source photo (MVSNet scenes), None: all valid


def image_size_any(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG/JPEG from its header; other formats (TIFF, ...) need Pillow."""
    try:
        return image_size(path)
    except InputError:
        pass
    except OSError as e:
        raise InputError(f"{path}: cannot read the image ({e.strerror}).") from None
    try:
        from PIL import Image
    except ImportError:
        raise InputError(f"{path}: only PNG and JPEG can be read without Pillow; convert the photos "
                         "or run 'python -m backend prepare' from the backend environment.") from None
    with pillow_errors(path), Image.open(path) as im:
        return int(im.width), int(im.height)


def safe_name(rel: str) -> str:
    """Output name for a source image path: extension dropped, folders flattened with '_'."""
    stem = rel.replace("\\", "/")
    base, dot, ext = stem.rpartition(".")
    if dot and "/" not in ext:
        stem = base
    return stem.strip("/").replace("/", "_")


def atomic_copy(src: Path, dst: Path, link: bool = False) -> None:
    """Copy (or hard-link, falling back to a copy) through a temporary name, then rename."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    if link:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def find_single_mesh(dirs: list[Path], skip: tuple[str, ...] = ()) -> Path:
    """The single mesh file (.ply/.obj; COLMAP's fused.ply point cloud and the files named in
    `skip` excluded) in `dirs`."""
    cands: list[Path] = []
    for d in dirs:
        if d.is_dir():
            ours = _previous_outputs(d)         # meshes an earlier prepare wrote into this folder
            cands += [p for p in sorted(d.iterdir()) if p.suffix.lower() in (".ply", ".obj")
                      and p.is_file() and p.name != "fused.ply" and p.name not in skip and p.name not in ours
                      and p not in cands]
    if len(cands) == 1:
        return cands[0]
    if not cands:
        raise InputError(f"{dirs[0]}: no mesh (.ply or .obj) found; pass --mesh PATH with the "
                         "reconstructed surface (e.g. meshed-poisson.ply, or the mesh exported from Metashape).")
    raise InputError(f"{dirs[0]}: several meshes found ({', '.join(p.name for p in cands)}); choose one "
                     "with --mesh PATH.")


def depth_range(cam: Camera, verts: np.ndarray) -> tuple[float, float] | None:
    """Near/far camera depth of the mesh vertices seen inside the image (None when none are)."""
    uv, z = cam.project(verts)
    ok = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] <= cam.height)
    if not ok.any():
        return None
    return float(z[ok].min()), float(z[ok].max())


def _subsample(v: np.ndarray, n: int = 200_000) -> np.ndarray:
    return v if len(v) <= n else v[:: int(np.ceil(len(v) / n))]


def _check_names(views: list[SourceView]) -> None:
    seen: dict[str, Path] = {}
    for v in views:
        key = v.name.lower()       # case-insensitive file systems would merge these
        if not v.name or v.name.startswith("."):
            raise InputError(f"{v.image}: cannot derive an output name from this image path; rename the photo.")
        if key in seen:
            raise InputError(f"{v.image}: photos {seen[key].name} and {v.image.name} map to the same output "
                             f"name '{v.name}'; rename one of them.")
        seen[key] = v.image


def _mesh_target(dst: Path, mesh_src: Path, transformed: bool) -> tuple[Path, bool]:
    """Where the mesh goes and whether it must be written. Refuses when another mesh already in
    DST would be picked by the scene loader instead of ours."""
    ext = ".ply" if transformed else mesh_src.suffix.lower()
    ours = dst / ("mesh" + ext)
    same_as_src = ours.exists() and ours.resolve() == mesh_src.resolve()
    if same_as_src and transformed:
        raise InputError(f"{mesh_src}: the mesh must be transformed into the world frame and would overwrite "
                         "itself; write the scene to another folder (--out).")
    previous = _previous_outputs(dst)
    for name in MESH_NAMES:
        p = dst / name
        if p == ours:
            break
        if p.exists():
            if name in previous:
                p.unlink()          # a mesh this tool wrote before, with another extension
                continue
            if p.resolve() == mesh_src.resolve() and not transformed:
                return p, False     # the source mesh already sits where the scene loader looks
            raise InputError(f"{p}: this mesh would be used instead of the prepared {ours.name}; write the "
                             "scene to an empty folder (--out) or move that file away.")
    return ours, not same_as_src


def _read_info(dst: Path) -> dict:
    try:
        info = json.loads((dst / "prepare.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _previous_outputs(dst: Path) -> set[str]:
    """Mesh files an earlier run of this tool wrote into DST (safe to replace)."""
    meshes = _read_info(dst).get("meshes", [])
    return {str(m) for m in meshes} if isinstance(meshes, list) else set()


def _workers(n: int) -> int:
    return max(1, min(n, 8, os.cpu_count() or 1))


def write_scene(views: list[SourceView], mesh_src: Path, dst: str | Path, *, downsample: int = 1,
                copy_images: bool = True, mesh_transform: np.ndarray | None = None,
                source: dict | None = None, notes: list[str] | None = None, level: int | None = None,
                undistort: bool = True, undistortion: dict | None = None) -> dict:
    """Write images_{level}/, cams_{level}/, masks_{level}/ and the mesh under `dst`; returns a
    summary dict. `level` (default: the factor k) is the total downsampling relative to the
    original photos.

    copy_images=False hard-links the photos instead of copying them (same drive only, else
    copied); photos are always re-written when resized, undistorted or not PNG/JPEG.
    mesh_transform (4x4 similarity) maps the mesh file's coordinates to the cameras' world.
    undistort=False raises NeedsBackend (before writing anything) when a photo needs undistorting:
    the Blender import converts in Blender's Python, which has no OpenCV. `undistortion` is the
    record of an earlier undistortion of these photos (re-levelled MVSNet scenes).
    """
    k = int(downsample)
    if k < 1 or k != downsample:
        raise InputError(f"--downsample {downsample}: the factor must be a whole number >= 1.")
    if not views:
        raise InputError(f"{mesh_src.parent}: no views to write (no camera has both a pose and a photo).")
    _check_names(views)
    lenses = [v.lens for v in views if v.lens is not None and not v.lens.is_pinhole]
    if lenses:
        from .undistort import NeedsBackend, require_libraries
        if not undistort:
            raise NeedsBackend(f"{views[0].image.parent}: the photos have lens distortion "
                               f"({lenses[0].describe()}) and are undistorted in the backend environment "
                               "(OpenCV): run 'python -m backend prepare' there.")
        require_libraries()
    notes = list(notes or [])
    dst = Path(dst)
    make_dir(dst, "--out")

    mesh = load_mesh(mesh_src)
    if mesh_transform is not None:
        v = mesh.vertices.astype(np.float64) @ mesh_transform[:3, :3].T + mesh_transform[:3, 3]
        _warn_precision(v, notes)
        mesh = Mesh(v.astype(np.float32), mesh.faces)
    mesh_out, write_mesh = _mesh_target(dst, mesh_src, mesh_transform is not None)
    verts = _subsample(mesh.vertices.astype(np.float64))

    level = k if level is None else int(level)
    img_dir, cam_dir = dst / f"images_{level}", dst / f"cams_{level}"
    make_dir(img_dir, "scene")
    make_dir(cam_dir, "scene")
    from .undistort import masks_dir_for
    mask_dir = masks_dir_for(img_dir)
    job = _Job(k, copy_images, img_dir, cam_dir, mask_dir, verts)
    if lenses:
        from .undistort import MapCache, read_manifest
        for lens in dict.fromkeys(lenses):
            job.canvases[lens] = c = pinhole_canvas(lens, k)
            if c.outline_lost > 0:
                notes.append(f"the {lens.describe()} lens folds over inside the {lens.width}x{lens.height} photo: "
                             f"{c.outline_lost:.0%} of its border lies beyond where the distortion can be inverted "
                             "and is left out (marked invalid); the calibration is suspect there.")
        job.done_before = read_manifest(mask_dir)
        uses: dict[Lens, int] = {}
        for lens in lenses:
            uses[lens] = uses.get(lens, 0) + 1
        job.maps = MapCache(uses, job.canvases)
    if lenses or any(v.mask is not None for v in views):
        make_dir(mask_dir, "scene")

    # Photos of one lens together: its map is built once and freed when they are done.
    rank = {lens: r for r, lens in enumerate(dict.fromkeys(lenses))}
    order = sorted(range(len(views)), key=lambda i: (rank.get(views[i].lens, len(rank)), i))
    progress = events.Progress("prepare", len(views))
    results: list[_Written | None] = [None] * len(views)
    manifest = dict(job.done_before)
    n_undistorted = 0
    pool = ThreadPoolExecutor(_workers(len(views)))
    try:
        futures = {pool.submit(job.write, views[i]): i for i in order}
        for n, fut in enumerate(as_completed(futures), 1):
            i = futures[fut]
            res = results[i] = fut.result()
            if res.key is not None:              # undistorted: record it so a rerun can skip it
                from .undistort import write_manifest
                manifest[views[i].name] = {"key": res.key, "max_shift_px": res.shift}
                write_manifest(mask_dir, manifest)
                n_undistorted += 1
            progress.update(n, view=views[i].name, undistorted=n_undistorted)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    written = [r for r in results if r is not None]
    out_views = [r.camera for r in written]

    cropped = {r.camera.name: r.cropped for r in written if r.cropped}
    if cropped:
        sizes = sorted({tuple(c) for c in cropped.values()})
        notes.append(f"{len(cropped)} photo(s) were cropped on the right/bottom by "
                     + ", ".join(f"{a}x{b}" for a, b in sizes)
                     + f" px so their size divides by {k}; K is unchanged by the crop.")
    keep = {f"{v.name}_cam.txt" for v in views}
    stale = [p for p in cam_dir.glob("*_cam.txt") if p.name not in keep]
    for p in stale:
        p.unlink()              # cams of photos not in this conversion would be loaded as views
    if stale:
        notes.append(f"removed {len(stale)} camera file(s) left in {cam_dir.name}/ by an earlier run.")
    _clean_masks(mask_dir, {r.camera.name for r in written if r.masked},
                 {views[i].name for i, r in enumerate(results) if r is not None and r.key is not None}, manifest)

    record = undistortion
    undistorted = [(v, r) for v, r in zip(views, results) if r is not None and r.key is not None]
    if undistorted:
        models = sorted({v.lens.describe() for v, _ in undistorted})
        shift = max(r.shift for _, r in undistorted)
        resumed = sum(r.skipped for _, r in undistorted)
        record = {"views": len(undistorted), "models": models, "max_shift_px": shift,
                  "masks_dir": str(mask_dir), "skipped_already_written": resumed,
                  "canvas": _resolutions([r.camera for _, r in undistorted])}
        notes.append(f"{len(undistorted)} photo(s) undistorted ({'; '.join(models)}): largest pixel shift "
                     f"{shift:.2f} px at full resolution; pixels outside the source photos are marked invalid "
                     f"in {mask_dir.name}/" + (f" ({resumed} already written by an earlier run)" if resumed else "")
                     + ".")

    if write_mesh:
        if mesh_transform is not None:
            write_ply(mesh_out, mesh)
        else:
            atomic_copy(mesh_src, mesh_out, link=not copy_images)

    summary = {
        "scene": str(dst), "source": source or {}, "downsample": k, "level": level, "views": len(out_views),
        "images_dir": str(img_dir), "cams_dir": str(cam_dir), "mesh": str(mesh_out),
        "mesh_vertices": int(len(mesh.vertices)), "mesh_faces": int(len(mesh.faces)),
        "resolutions": _resolutions(out_views), "cropped": cropped, "undistortion": record,
        "masks": sum(r.masked for r in written), "notes": notes,
    }
    # One prepare.json per scene folder, one entry per level (several k can share a folder).
    info = _read_info(dst)
    levels = info.get("levels") if isinstance(info.get("levels"), dict) else {}
    levels[str(level)] = summary
    owned = _previous_outputs(dst) | ({mesh_out.name} if write_mesh else set())
    meshes = sorted(n for n in owned if (dst / n).exists())
    atomic_write_text(dst / "prepare.json", json.dumps({"levels": levels, "meshes": meshes}, indent=2) + "\n")
    for n in notes:
        events.log(n)
    return summary


@dataclass
class _Written:
    camera: Camera                  # camera of the photo as written
    cropped: list[int] | None = None
    masked: bool = False            # a mask was written for it
    key: str | None = None          # undistorted photos: fingerprint of its inputs
    shift: float = 0.0              # undistorted photos: largest pixel shift
    skipped: bool = False           # undistorted photos: already written by an earlier run


class _Job:
    """Writes one view's photo, mask and camera file (runs in the worker threads)."""

    def __init__(self, k: int, copy_images: bool, img_dir: Path, cam_dir: Path, mask_dir: Path, verts: np.ndarray):
        self.k, self.copy_images, self.verts = k, copy_images, verts
        self.img_dir, self.cam_dir, self.mask_dir = img_dir, cam_dir, mask_dir
        self.canvases: dict[Lens, Canvas] = {}
        self.done_before: dict[str, dict] = {}
        self.maps = None

    def write(self, v: SourceView) -> _Written:
        cam, k = v.camera, self.k
        w, h = image_size_any(v.image)
        if (w, h) != (cam.width, cam.height):
            raise InputError(f"{v.image}: the photo is {w}x{h} but its camera says {cam.width}x{cam.height}; "
                             "use the photos exported with these cameras (same size).")
        ext = v.image.suffix if v.image.suffix.lower() in _KEEP_EXTS else ".png"
        if ext not in IMAGE_EXTS:
            ext = ext.lower()
        out_img = self.img_dir / (v.name + ext)
        out_mask = self.mask_dir / f"{v.name}.png"
        if v.lens is not None and not v.lens.is_pinhole:
            res = self._undistort(v, out_img, out_mask)
        elif k == 1 and v.image.suffix.lower() in _KEEP_EXTS:
            if out_img.resolve() != v.image.resolve():
                atomic_copy(v.image, out_img, link=not self.copy_images)
            res = _Written(Camera(cam.width, cam.height, cam.K, cam.world_to_camera, v.name))
            if v.mask is not None:
                if out_mask.resolve() != v.mask.resolve():
                    atomic_copy(v.mask, out_mask, link=not self.copy_images)
                res.masked = True
        else:
            cw, ch = crop_size(w, h, k)
            resize_image_file(v.image, out_img, k, (cw, ch))
            out_cam = downsample_camera(cam, k)
            out_cam.name = v.name
            res = _Written(out_cam, [w - cw, h - ch] if (cw, ch) != (w, h) else None)
            if v.mask is not None:
                from ..imageio import read_mask
                from .undistort import save_mask
                save_mask(block_all(read_mask(v.mask, w, h)[:ch, :cw], k), out_mask)
                res.masked = True
        res.camera.depth_range = depth_range(res.camera, self.verts)
        write_mvsnet_cam(self.cam_dir / f"{v.name}_cam.txt", res.camera)
        return res

    def _undistort(self, v: SourceView, out_img: Path, out_mask: Path) -> _Written:
        from .undistort import undistort_photo, view_key
        lens, k = v.lens, self.k
        canvas = self.canvases[lens]
        K = canvas.K.copy()
        K[:2] /= k
        out_cam = Camera(canvas.width // k, canvas.height // k, K, v.camera.world_to_camera, v.name)
        key = view_key(v.image, lens, canvas, k, out_img.name)
        before = self.done_before.get(v.name)
        if isinstance(before, dict) and before.get("key") == key and out_img.is_file() and out_mask.is_file():
            self.maps.release(lens)
            return _Written(out_cam, masked=True, key=key, shift=float(before.get("max_shift_px", 0.0)),
                            skipped=True)
        try:
            maps = self.maps.get(lens)
            undistort_photo(v.image, lens, maps, k, out_img, out_mask)
        finally:
            self.maps.release(lens)
        return _Written(out_cam, masked=True, key=key, shift=maps[3])


def _clean_masks(mask_dir: Path, masked: set[str], undistorted: set[str], manifest: dict) -> None:
    """Remove masks (and manifest entries) an earlier run left for photos that have none now:
    the scene loader would apply them."""
    if not mask_dir.is_dir():
        return
    for p in mask_dir.glob("*.png"):
        if p.stem not in masked:
            p.unlink()
    from .undistort import MANIFEST, write_manifest
    kept = {n: e for n, e in manifest.items() if n in undistorted}
    if kept:
        if kept != manifest:
            write_manifest(mask_dir, kept)
    else:
        (mask_dir / MANIFEST).unlink(missing_ok=True)
    if not any(mask_dir.iterdir()):
        mask_dir.rmdir()


def _resolutions(cams: list[Camera]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in cams:
        key = f"{c.width}x{c.height}"
        out[key] = out.get(key, 0) + 1
    return out


def _warn_precision(v: np.ndarray, notes: list[str]) -> None:
    """Mesh files store float32: far from the origin (geocentric coordinates) that rounds away detail."""
    extent = float(np.ptp(v, axis=0).max()) if len(v) else 0.0
    err = float(np.abs(v).max()) * 2.0 ** -24
    if extent > 0 and err > 1e-5 * extent:
        notes.append(f"the transformed mesh lies far from the origin, where its float32 coordinates round by up "
                     f"to {err:.3g} (extent {extent:.3g}); keep the chunk's frame (--scene-frame chunk) or "
                     "export in a local coordinate system to keep full precision.")
