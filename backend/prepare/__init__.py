"""Scene preparation: COLMAP / Metashape / MVSNet sources -> MVSNet scene folder, and `check`.

Numpy + standard library only (no torch, no bpy): the Blender import operator calls these
functions in Blender's own Python. Pillow is needed only to resize or re-encode photos, OpenCV only
to undistort them; both are imported inside the functions that do so (undistort=False raises
NeedsBackend instead, so Blender hands such sources to the backend environment). The package
itself loads only `sources` (standard library); the rest loads on first use.

Public API:
    SOURCES                            the input sources (sources.py says how to add one)
    convert_colmap(src, dst, ...)      COLMAP sparse model + photos (undistorted here if needed) + mesh
    convert_metashape(src, dst, ...)   Metashape cams.xml + photos (undistorted here if needed) + mesh
    convert_mvsnet(src, dst, ...)      existing MVSNet scene (e.g. to add a downsampled level)
    convert(src, dst, source="auto")   detect the source kind, then its converter
    check_scene(scene) -> dict         validation report; format_report(report) -> str
"""
from __future__ import annotations

import importlib

from .sources import SOURCES, convert, detect_source

_LAZY = {"convert_colmap": "colmap", "convert_metashape": "metashape", "convert_mvsnet": "mvsnet",
         "check_scene": "report", "format_report": "report", "NeedsBackend": "undistort"}

__all__ = ["SOURCES", "convert", "detect_source", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
