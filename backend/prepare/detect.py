"""Pick the converter for a source path (COLMAP workspace, Metashape export, MVSNet scene)."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError

KINDS = ("colmap", "metashape", "mvsnet")
# Options each converter understands (the CLI passes everything it parsed).
_OPTIONS = {
    "colmap": {"downsample", "copy_images", "mesh", "images", "model", "undistort"},
    "metashape": {"downsample", "copy_images", "mesh", "images", "xml", "mesh_frame", "scene_frame",
                  "undistorted", "undistort"},
    "mvsnet": {"downsample", "copy_images", "mesh", "level", "undistort"},
}
_KEEP_FALSE = {"copy_images", "undistort"}     # options whose False is a choice, not "not given"
_FLAGS = {"images": "--images", "model": "--model", "xml": "--xml", "mesh_frame": "--mesh-frame",
          "scene_frame": "--scene-frame", "undistorted": "--images-undistorted", "level": "--level"}


def detect_source(src: str | Path) -> str:
    src = Path(src)
    if src.is_file():
        if src.suffix.lower() == ".xml":
            return "metashape"
        raise InputError(f"{src}: expected a folder (COLMAP workspace, Metashape export, MVSNet scene) or a "
                         "Metashape cameras .xml.")
    if not src.is_dir():
        raise InputError(f"{src}: source folder not found.")
    from .colmap import find_model
    try:
        find_model(src)
        return "colmap"
    except InputError:
        pass
    if (src / "cams.xml").is_file() or (src / "cameras.xml").is_file() or len(list(src.glob("*.xml"))) == 1:
        return "metashape"
    if (src / "cams").is_dir() or any(p.is_dir() for p in src.glob("cams_*")):
        return "mvsnet"
    raise InputError(f"{src}: cannot tell what this is; expected a COLMAP model (sparse/ with cameras and "
                     "images files), a Metashape cams.xml, or an MVSNet scene (cams/); pass --from KIND.")


def convert(src: str | Path, dst: str | Path, source: str = "auto", **options) -> dict:
    """Convert any supported source into an MVSNet scene; options as in the specific converters
    (None values are ignored). undistort=False raises NeedsBackend, before writing anything, when
    photos need undistorting (the Blender import converts in Blender's Python, without OpenCV)."""
    kind = detect_source(src) if source == "auto" else source
    if kind not in KINDS:
        raise InputError(f"--from {source}: choose one of auto, {', '.join(KINDS)}.")
    opts = {k: v for k, v in options.items() if v is not None and v is not False or k in _KEEP_FALSE}
    extra = sorted(set(opts) - _OPTIONS[kind])
    if extra:
        raise InputError(f"{src}: {', '.join(_FLAGS.get(e, e) for e in extra)} does not apply to {kind} input.")
    if kind == "colmap":
        from .colmap import convert_colmap as fn
    elif kind == "metashape":
        from .metashape import convert_metashape as fn
    else:
        from .mvsnet import convert_mvsnet as fn
    return fn(src, dst, **opts)
