"""Scene preparation: COLMAP / Metashape / MVSNet sources -> MVSNet scene folder, and `check`.

Numpy + standard library only (no torch, no bpy): the Blender import operator calls these
functions in Blender's own Python. Pillow is needed only to resize or re-encode photos, OpenCV only
to undistort them; both are imported inside the functions that do so (undistort=False raises
NeedsBackend instead, so Blender hands such sources to the backend environment).

Public API:
    convert_colmap(src, dst, ...)      COLMAP sparse model + photos (undistorted here if needed) + mesh
    convert_metashape(src, dst, ...)   Metashape cams.xml + photos (undistorted here if needed) + mesh
    convert_mvsnet(src, dst, ...)      existing MVSNet scene (e.g. to add a downsampled level)
    convert(src, dst, source="auto")   detect the source kind, then one of the above
    check_scene(scene) -> dict         validation report; format_report(report) -> str
"""
from __future__ import annotations

from .colmap import convert_colmap
from .detect import convert, detect_source
from .metashape import convert_metashape
from .mvsnet import convert_mvsnet
from .report import check_scene, format_report
from .undistort import NeedsBackend

__all__ = ["convert", "convert_colmap", "convert_metashape", "convert_mvsnet", "detect_source",
           "check_scene", "format_report", "NeedsBackend"]
