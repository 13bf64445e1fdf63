"""RealityScan / RealityCapture exports -> MVSNet scene: a Bundler .out with its image list, or the
XMP camera files RealityScan writes beside the photos.

Bundler v0.3 (Bundler's manual, "Output format"): a camera is "f k1 k2", a 3x3 R and t, with
P = R X + t; its camera looks down -z with y up (x right), and the pixel is
p' = f (1 + k1 |p|^2 + k2 |p|^4) p for p = -P / P.z, measured from the image centre with y up.
In OpenCV axes that is the pinhole K = [f 0 W/2; 0 f H/2] with COLMAP's RADIAL distortion (k1, k2)
and world_to_camera = diag(1, -1, -1) [R | t]. Cameras that were not registered have f = 0 and are
left out. The image list (one photo per camera, in order) lies beside the .out.

XMP (RealityCapture's "XMP camera math"): x = [R t] X with R the row-wise xcr:Rotation
(world to camera, OpenCV axes) and t = -R xcr:Position; the image coordinates are measured from
the image centre in units of the photo's larger side (they lie in -0.5..0.5), with the focal length
FocalLength35mm / 36 and the principal point PrincipalPointU/V in those units, applied after the
radial distortion (1 + k1 r2 + k2 r2^2 + k3 r2^3 + k4 r2^4 of xcr:DistortionCoeficients
"k1 k2 k3 k4 t1 t2"). Tangential terms (t1, t2), skew and an aspect ratio other than 1 are refused:
their exact convention is not published, and a guess would shift pixels silently. RealityCapture's
"internal/external camera parameters" CSV is not read for the same reason (its angle and principal
point conventions are not documented): export XMP or Bundler instead.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path, PureWindowsPath

import numpy as np

from ..cameras import Camera
from ..errors import InputError
from .lens import Lens
from .source_files import from_centre, inside, number, numbers, read_text, rotation, world_to_camera
from .writer import SourceView, find_single_mesh, image_size_any, safe_name, write_scene

XCR = "{http://www.capturingreality.com/ns/xcr/1.1#}"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".JPG", ".JPEG", ".PNG", ".TIF", ".TIFF")
FIX_OUT = "export the registration again from RealityScan (Alignment > Export > Registration > Bundler)"
FIX_XMP = "export the cameras again from RealityScan (Alignment > Export > Metadata (XMP))"
FLIP = np.diag([1.0, -1.0, -1.0])      # Bundler's camera axes (y up, z back) <-> OpenCV's


def _xmp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.xmp") if p.is_file()) if folder.is_dir() else []


def _is_realityscan_xmp(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return b"capturingreality.com/ns/xcr" in fh.read(8192)
    except OSError:
        return False


def detect(src: Path) -> bool:
    """A Bundler .out (the file, or one in the folder), or RealityScan XMP camera files in the folder
    (or its images/): XMP files of other programs (photo editors) do not count."""
    if src.is_file():
        return src.suffix.lower() == ".out"
    if any(p.is_file() for p in src.glob("*.out")):
        return True
    return any(_is_realityscan_xmp(x[0]) for d in (src, src / "images") if (x := _xmp_files(d)))


# --- Bundler -------------------------------------------------------------------------------

def list_file(out: Path) -> Path:
    """The image list beside a Bundler .out."""
    names = (f"{out.stem}.lst", f"{out.stem}.txt", f"{out.name}.list.txt", "list.txt", "imagelist.txt")
    for n in names:
        if (out.parent / n).is_file():
            return out.parent / n
    raise InputError(f"{out}: no image list beside it (looked for {', '.join(names)}); export it with the "
                     "registration (one photo path per camera, in order).")


def read_bundler(out: Path) -> list[tuple[float, float, float, np.ndarray, np.ndarray]]:
    """(f, k1, k2, R, t) per camera of a Bundler v0.3 file."""
    lines = read_text(out, FIX_OUT).splitlines()
    if not lines or not lines[0].startswith("# Bundle file"):
        raise InputError(f"{out}: not a Bundler file (its first line is not '# Bundle file v0.3'); {FIX_OUT}.")
    tok = " ".join(lines[1:]).split()
    try:
        n = int(tok[0])
        int(tok[1])
    except (IndexError, ValueError):
        raise InputError(f"{out}: the second line is not '<num_cameras> <num_points>'; {FIX_OUT}.") from None
    if n < 0 or len(tok) < 2 + 15 * n:
        raise InputError(f"{out}: the file ends before its {n} cameras do; {FIX_OUT}.")
    cams = []
    for i in range(n):
        v = numbers(tok[2 + 15 * i: 17 + 15 * i], 15, f"{out}: camera {i}")
        cams.append((v[0], v[1], v[2], v[3:12].reshape(3, 3), v[12:15]))
    return cams


def bundler_photo(list_path: Path, line: str, images: Path | None, n: int) -> Path:
    """The photo of list line `n`: 'path [0 focal]'. A relative path is inside the list's folder;
    an absolute one (RealityScan writes them) is looked up by its file name in `images` (default:
    the list's folder)."""
    tok = line.split()
    if len(tok) >= 3 and tok[-2] == "0":
        tok = tok[:-2]                      # Bundler's "0 <focal from EXIF>"
    rel = " ".join(tok)
    where = f"{list_path}: line {n + 1}"
    if rel.startswith(("/", "\\")) or PureWindowsPath(rel).drive:
        name = rel.replace("\\", "/").rsplit("/", 1)[-1]
        return (images or list_path.parent) / name
    return inside(list_path.parent, rel, where)


def bundler_views(out: Path, images: Path | None) -> tuple[list[SourceView], list[str]]:
    cams = read_bundler(out)
    lst = list_file(out)
    lines = [ln for ln in read_text(lst, FIX_OUT).splitlines() if ln.strip()]
    if len(lines) != len(cams):
        raise InputError(f"{lst}: lists {len(lines)} photo(s) but {out.name} has {len(cams)} camera(s); use the list "
                         "exported with it.")
    views, skipped = [], 0
    for i, ((f, k1, k2, R, t), line) in enumerate(zip(cams, lines)):
        if f == 0:
            skipped += 1                   # not registered
            continue
        photo = bundler_photo(lst, line, images, i)
        if not photo.is_file():
            raise InputError(f"{photo}: photo of camera {i} not found; keep the photos where the image list says "
                             "(or pass --images DIR with them).")
        rotation(R, f"{out}: camera {i} R")
        w, h = image_size_any(photo)
        K = np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])
        lens = None
        if k1 or k2:
            lens = Lens("Bundler", w, h, f, f, w / 2.0, h / 2.0, k=(k1, k2, 0.0, 0.0), params=(("k1", k1), ("k2", k2)))
        name = safe_name(photo.name)
        views.append(SourceView(name, photo, Camera(w, h, K, world_to_camera(FLIP @ R, FLIP @ t), name), lens=lens))
    notes = [f"{skipped} camera(s) of {out.name} are not registered (f = 0) and were left out."] if skipped else []
    return views, notes


# --- XMP -----------------------------------------------------------------------------------

def _photo_for(xmp: Path) -> Path | None:
    for ext in IMAGE_EXTS:
        p = xmp.with_suffix(ext)
        if p.is_file():
            return p
    return None


def xmp_camera(xmp: Path, photo: Path) -> tuple[np.ndarray, np.ndarray, Lens | None] | None:
    """K, world_to_camera and lens of one XMP file; None when it holds no pose."""
    try:
        root = ET.fromstring(read_text(xmp, FIX_XMP))
    except ET.ParseError as e:
        raise InputError(f"{xmp}: not readable XML ({e}); {FIX_XMP}.") from None
    desc = next((d for d in root.iter() if d.find(f"{XCR}Rotation") is not None or f"{XCR}FocalLength35mm" in d.attrib),
                None)
    if desc is None:
        raise InputError(f"{xmp}: no RealityScan camera (xcr:FocalLength35mm, xcr:Rotation); {FIX_XMP}.")
    rot, pos = desc.find(f"{XCR}Rotation"), desc.find(f"{XCR}Position")
    if rot is None or pos is None:
        return None                         # a calibration or a prior without a pose

    def attr(name: str, default: str | None = None) -> float:
        v = desc.get(f"{XCR}{name}", default)
        if v is None:
            raise InputError(f"{xmp}: no xcr:{name}; {FIX_XMP}.")
        return number(v, f"{xmp}: xcr:{name}")

    f35, ppu, ppv = attr("FocalLength35mm"), attr("PrincipalPointU", "0"), attr("PrincipalPointV", "0")
    if attr("Skew", "0") != 0 or attr("AspectRatio", "1") != 1:
        raise InputError(f"{xmp}: the camera has skew or an aspect ratio other than 1, which prepare does not "
                         "convert; align with those fixed, or export undistorted photos with their cameras.")
    R = rotation(numbers((rot.text or "").split(), 9, f"{xmp}: xcr:Rotation").reshape(3, 3), f"{xmp}: xcr:Rotation")
    C = numbers((pos.text or "").split(), 3, f"{xmp}: xcr:Position")
    dist_el = desc.find(f"{XCR}DistortionCoeficients")
    d = numbers((dist_el.text or "").split(), 6, f"{xmp}: xcr:DistortionCoeficients") if dist_el is not None \
        else np.zeros(6)
    model = desc.get(f"{XCR}DistortionModel", "brown3")
    if d[4] or d[5] or model not in ("brown3", "brown4", "brown3t2", "brown4t2", "none", "perspective"):
        raise InputError(f"{xmp}: distortion model {model} with tangential terms t1={d[4]:g}, t2={d[5]:g}; prepare "
                         "converts the radial Brown models only (set Alignment > Distortion model to Brown3 or "
                         "Brown4, or export undistorted photos).")
    w, h = image_size_any(photo)
    s = max(w, h)
    f = f35 / 36.0 * s
    if not f > 0:
        raise InputError(f"{xmp}: xcr:FocalLength35mm {f35:g} must be positive.")
    cx, cy = w / 2.0 + ppu * s, h / 2.0 + ppv * s
    K = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    lens = None
    if np.any(d[:4]):
        lens = Lens(f"RealityScan {model}", w, h, f, f, cx, cy, k=tuple(float(x) for x in d[:4]),
                    params=tuple(zip(("k1", "k2", "k3", "k4"), (float(x) for x in d[:4]))))
    return K, from_centre(R, C), lens


def xmp_views(folder: Path) -> tuple[list[SourceView], list[str]]:
    xmps = [x for x in _xmp_files(folder) if _is_realityscan_xmp(x)]
    views, unposed, missing = [], [], []
    for xmp in xmps:
        photo = _photo_for(xmp)
        if photo is None:
            missing.append(xmp.name)
            continue
        cam = xmp_camera(xmp, photo)
        if cam is None:
            unposed.append(xmp.name)
            continue
        K, E, lens = cam
        w, h = image_size_any(photo)
        name = safe_name(photo.name)
        views.append(SourceView(name, photo, Camera(w, h, K, E, name), lens=lens))
    if not views:
        raise InputError(f"{folder}: no RealityScan XMP file with a pose has its photo beside it "
                         f"({len(missing)} without photo, {len(unposed)} without pose); {FIX_XMP}, next to the photos.")
    notes = []
    if missing:
        notes.append(f"{len(missing)} XMP file(s) have no photo of the same name beside them and were skipped "
                     f"(e.g. {missing[0]}).")
    if unposed:
        notes.append(f"{len(unposed)} XMP file(s) hold no pose (xcr:Rotation, xcr:Position) and were skipped.")
    return views, notes


# --- conversion ----------------------------------------------------------------------------

def find_export(src: Path) -> tuple[str, Path]:
    """("bundler", the .out) or ("xmp", the folder of the XMP files)."""
    if src.is_file():
        return "bundler", src
    outs = sorted(p for p in src.glob("*.out") if p.is_file())
    if len(outs) == 1:
        return "bundler", outs[0]
    if len(outs) > 1:
        raise InputError(f"{src}: several Bundler files ({', '.join(p.name for p in outs)}); pass the one to use.")
    for d in (src, src / "images"):
        if any(_is_realityscan_xmp(x) for x in _xmp_files(d)):
            return "xmp", d
    raise InputError(f"{src}: no Bundler .out and no RealityScan XMP files; {FIX_XMP}, or {FIX_OUT}.")


def convert_realityscan(src: str | Path, dst: str | Path, *, downsample: int = 1, copy_images: bool = True,
                        mesh: str | Path | None = None, images: str | Path | None = None,
                        undistort: bool = True) -> dict:
    """RealityScan export (folder, or the Bundler .out) -> MVSNet scene at `dst`; the mesh is the one
    mesh file beside the export (export it in the same coordinate system as the cameras).
    images: where the photos are (Bundler: those its list names by absolute path; XMP: the folder
    of the photos and their XMP files)."""
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: RealityScan export not found.")
    kind, path = find_export(src)
    if kind == "bundler":
        views, notes = bundler_views(path, Path(images) if images else None)
    else:
        views, notes = xmp_views(Path(images) if images else path)
    if not views:
        raise InputError(f"{path}: no registered camera; {FIX_OUT}.")
    base = src if src.is_dir() else src.parent
    mesh_path = Path(mesh) if mesh else find_single_mesh([base])
    source = {"kind": "realityscan", "format": kind, "cameras": str(path), "mesh": str(mesh_path)}
    return write_scene(views, mesh_path, dst, downsample=downsample, copy_images=copy_images,
                       source=source, notes=notes, undistort=undistort)
