"""The input sources `prepare` converts into a scene folder: one entry each in SOURCES.

`backend prepare` (the --from choices, each source's flags and --help), the check that an option
applies to the source, detection of `--from auto` and Blender's File > Import (the Source Type
menu and its labels) all follow from SOURCES. Standard library only: the command line builds its
parser and the add-on its menu from it without numpy; a source's module loads when it is used.

Adding a source (RealityScan, nerfstudio's transforms.json, photos only, ...):
1. write backend/prepare/NAME.py with
       detect(src: Path) -> bool
           whether SRC (a folder; a file too when the entry has `file`) looks like this source;
           cheap, and False rather than an error
       convert_NAME(src, dst, *, downsample=1, copy_images=True, mesh=None, undistort=True,
                    **its flags) -> dict
           reads the cameras into writer.SourceView's and returns writer.write_scene(...)'s summary
           (with source={"kind": NAME, ...});
2. add its SourceFormat to SOURCES below, with a Flag for each option of its own (IMAGES if it
   reads a photo folder). Its place in SOURCES is its turn in detection.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError


@dataclass(frozen=True)
class Flag:
    """A `prepare` option that only some sources take."""
    name: str                        # the converter's keyword argument
    flag: str                        # on the command line
    help: str
    kind: type = str                 # str, int, or bool (a switch)
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceFormat:
    """One input source; backend/prepare/NAME.py holds its detect(src) and convert_NAME(...)."""
    name: str             # --from NAME, Blender's menu item, the summary's source kind
    label: str            # how menus and --help name it
    folder: str           # what its source folder is called
    looks_for: str        # what detection looks for (said when no source matches)
    description: str      # one line: what it reads (Blender's menu item, its --help group)
    flags: tuple[Flag, ...] = ()
    file: str = ""        # the file SRC may be instead of a folder, if any

    def _module(self):
        return importlib.import_module(f"{__package__}.{self.name}")

    def detect(self, src: Path) -> bool:
        return self._module().detect(src)

    def convert(self, src: str | Path, dst: str | Path, **options) -> dict:
        return getattr(self._module(), f"convert_{self.name}")(src, dst, **options)


IMAGES = Flag("images", "--images", "folder of the photos (default: SRC/images)")

SOURCES = (
    SourceFormat(
        "colmap", "COLMAP", "COLMAP workspace", "a COLMAP model (sparse/ with cameras and images files)",
        "COLMAP sparse model (text or binary) with its photos and a mesh",
        flags=(IMAGES, Flag("model", "--model", "sparse model folder (default: SRC/sparse, SRC/sparse/0, ...)"))),
    SourceFormat(
        "metashape", "Metashape", "Metashape export", "a Metashape cams.xml",
        "Metashape cameras XML with its photos and a mesh", file="a Metashape cameras .xml",
        flags=(IMAGES,
               Flag("xml", "--xml", "cameras XML (default: SRC/cams.xml)"),
               Flag("mesh_frame", "--mesh-frame", "frame of the mesh file: world (Metashape model export, "
                    "default) or the chunk's internal frame", choices=("world", "chunk")),
               Flag("scene_frame", "--scene-frame", "frame to write the scene in (default world; chunk keeps "
                    "coordinates small for geocentric projects)", choices=("world", "chunk")),
               Flag("undistorted", "--images-undistorted", "the photos were undistorted by Metashape with the "
                    "XML's calibration: ignore its distortion terms", kind=bool))),
    SourceFormat(
        "mvsnet", "MVSNet", "MVSNet scene", "an MVSNet scene (cams/)",
        "MVSNet scene (images/, cams/ and a mesh), e.g. to write a downsampled level",
        flags=(Flag("level", "--level", "source level to read (images_LEVEL/, cams_LEVEL/)", kind=int),)),
    SourceFormat(
        "nerfstudio", "nerfstudio", "nerfstudio dataset", "a nerfstudio transforms.json",
        "nerfstudio transforms.json (phone capture apps: Polycam, KIRI, Record3D) with its photos and a mesh",
        file="a nerfstudio transforms.json",
        flags=(IMAGES, Flag("mesh_before_transform", "--mesh-before-transform", "the mesh is in the world before "
                            "the json's applied_transform (e.g. COLMAP's mesh of the same capture)", kind=bool))),
    SourceFormat(
        "realityscan", "RealityScan", "RealityScan export", "a RealityScan export (Bundler .out or XMP camera files)",
        "RealityScan / RealityCapture registration (Bundler .out + image list, or XMP files beside the photos) "
        "with its photos and a mesh", file="a Bundler .out", flags=(IMAGES,)),
    SourceFormat(
        "meshroom", "Meshroom", "Meshroom export", "a Meshroom cameras.sfm (AliceVision SfMData)",
        "Meshroom / AliceVision cameras.sfm or sfm.json (pinhole, radial or Brown lenses) with its photos and a mesh",
        file="a Meshroom .sfm", flags=(IMAGES,)),
    SourceFormat(
        "openmvs", "OpenMVS", "OpenMVS scene", "an OpenMVS scene (.mvs)",
        "OpenMVS scene (.mvs) with its undistorted photos and a mesh", file="an OpenMVS .mvs", flags=(IMAGES,)),
    SourceFormat(
        "photos", "Photos", "folder of photos", "a folder of photos only (no cameras: structure from motion)",
        "photos only: cameras by structure from motion (pycolmap), a mesh from --mesh or dense stereo on CUDA",
        flags=(IMAGES, Flag("mapper", "--mapper", "structure from motion's mapper: incremental (default; "
                            "COLMAP's) or global (GLOMAP: faster on many photos, wrong cameras seen on weakly "
                            "matching ones)", choices=("incremental", "global")),
               Flag("camera_model", "--camera-model", "structure from motion's lens: auto (default: one focal "
                    "length and a centred principal point while mapping, then two focal lengths, distortion and "
                    "the principal point refined once 20 or more photos of a camera registered), simple-radial "
                    "(one focal length, principal point at the centre, always) or opencv (the refined lens from "
                    "the start: mapping itself over-fits few photos)",
                    choices=("auto", "simple-radial", "opencv")))),
)
SCENE_FORMAT = "mvsnet"   # the scene folder's own layout: Blender imports it as it is
CONVERTED = tuple(s for s in SOURCES if s.name != SCENE_FORMAT)    # what Blender converts first

COMMON_OPTIONS = frozenset({"downsample", "copy_images", "mesh", "undistort"})   # every converter takes them
_KEEP_FALSE = frozenset({"copy_images", "undistort"})   # their False is a choice, not "not given"


def all_flags() -> tuple[Flag, ...]:
    """Every source's flags, each once, in the order of SOURCES."""
    return tuple(dict.fromkeys(f for s in SOURCES for f in s.flags))


def either(items: list[str]) -> str:
    """'a', 'a or b', 'a, b, or c'."""
    return ", ".join(items[:-1]) + ", or " + items[-1] if len(items) > 2 else " or ".join(items)


def inputs() -> str:
    """What SRC may be, in words."""
    files = [s.file for s in SOURCES if s.file]
    return f"a folder ({', '.join(s.folder for s in SOURCES)})" + (f" or {either(files)}" if files else "")


def source_format(name: str) -> SourceFormat:
    for s in SOURCES:
        if s.name == name:
            return s
    raise InputError(f"--from {name}: choose one of auto, {', '.join(s.name for s in SOURCES)}.")


def detect_source(src: str | Path) -> str:
    """The name of the first source in SOURCES that `src` looks like."""
    src = Path(src)
    if not (src.is_file() or src.is_dir()):
        raise InputError(f"{src}: source folder not found.")
    for s in SOURCES:
        if (src.is_dir() or s.file) and s.detect(src):
            return s.name
    if src.is_file():
        raise InputError(f"{src}: expected {inputs()}.")
    raise InputError(f"{src}: cannot tell what this is; expected {either([s.looks_for for s in SOURCES])}; "
                     "pass --from KIND.")


def convert(src: str | Path, dst: str | Path, source: str = "auto", **options) -> dict:
    """Convert any supported source into an MVSNet scene; options as in the specific converters
    (None values are ignored). undistort=False raises NeedsBackend, before writing anything, when
    photos need undistorting (the Blender import converts in Blender's Python, without OpenCV)."""
    fmt = source_format(detect_source(src) if source == "auto" else source)
    opts = {k: v for k, v in options.items() if v is not None and v is not False or k in _KEEP_FALSE}
    extra = sorted(set(opts) - COMMON_OPTIONS - {f.name for f in fmt.flags})
    if extra:
        flags = {f.name: f.flag for f in all_flags()}
        raise InputError(f"{src}: {', '.join(flags.get(e, e) for e in extra)} does not apply to {fmt.name} input.")
    return fmt.convert(src, dst, **opts)
