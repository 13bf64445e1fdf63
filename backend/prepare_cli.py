"""`prepare` and `check` subcommands (argparse wiring only; the work is in backend.prepare).

    python -m backend prepare SRC [--out DST] [--downsample N] [--from auto|colmap|metashape|mvsnet] ...
    python -m backend check SCENE [--level N] [--mesh M] [--json]

Both print progress events, then a `done` event; `check` also prints the text report (or the
JSON report with --json). A scene the mesh does not reach at all raises InputError (exit 2)
after the report is printed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import events
from .errors import InputError


def add_prepare_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "prepare", help="convert a COLMAP / Metashape / MVSNet source into an MVSNet scene folder",
        description="Convert a COLMAP workspace, a Metashape export (cams.xml, photos, mesh) or an MVSNet "
                    "scene into OUT/images_N, OUT/cams_N (and OUT/masks_N) and OUT/mesh.*, then print the "
                    "check report. Photos of cameras with lens distortion (COLMAP SIMPLE_RADIAL, RADIAL, "
                    "OPENCV, FULL_OPENCV; Metashape frame) are undistorted to pinhole photos; pixels outside "
                    "the source photo are marked invalid in OUT/masks_N. Fisheye models are refused.")
    p.add_argument("src", help="COLMAP folder, Metashape folder or cams.xml, or MVSNet scene")
    p.add_argument("--out", help="scene folder to write (default: SRC's folder)")
    p.add_argument("--from", dest="source", default="auto", choices=["auto", "colmap", "metashape", "mvsnet"],
                   help="source kind (default: detect)")
    p.add_argument("--downsample", type=int, default=1, metavar="N",
                   help="shrink photos N times (area filter, after undistorting), scaling the intrinsics "
                        "exactly; writes images_N/ and cams_N/")
    p.add_argument("--mesh", help="mesh file (.ply/.obj) if SRC holds none or several")
    p.add_argument("--images", help="folder of the photos (default: SRC/images)")
    p.add_argument("--link-images", action="store_true",
                   help="hard-link photos instead of copying them when not resized (same drive)")
    g = p.add_argument_group("COLMAP")
    g.add_argument("--model", help="sparse model folder (default: SRC/sparse, SRC/sparse/0, ...)")
    g = p.add_argument_group("Metashape")
    g.add_argument("--xml", help="cameras XML (default: SRC/cams.xml)")
    g.add_argument("--mesh-frame", choices=["world", "chunk"],
                   help="frame of the mesh file: world (Metashape model export, default) or the chunk's "
                        "internal frame")
    g.add_argument("--scene-frame", choices=["world", "chunk"],
                   help="frame to write the scene in (default world; chunk keeps coordinates small for "
                        "geocentric projects)")
    g.add_argument("--images-undistorted", dest="undistorted", action="store_true",
                   help="the photos were undistorted by Metashape with the XML's calibration: ignore its "
                        "distortion terms")
    g = p.add_argument_group("MVSNet")
    g.add_argument("--level", type=int, help="source level to read (images_LEVEL/, cams_LEVEL/)")
    g = p.add_argument_group("report")
    g.add_argument("--no-check", action="store_true", help="skip the check report")
    g.add_argument("--max-side", type=int, default=256, help="coverage raster size (long side, px)")
    g.add_argument("--json", action="store_true", help="print the summary and report as JSON")
    p.set_defaults(func=run_prepare)
    return p


def add_check_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "check", help="validation report of a scene folder",
        description="Views, resolutions, mesh size, per-view mesh coverage, views the mesh does not reach, "
                    "and a reprojection sanity check.")
    p.add_argument("scene", help="MVSNet scene folder")
    p.add_argument("--level", type=int, help="read images_LEVEL/ and cams_LEVEL/")
    p.add_argument("--mesh", help="mesh file (default: the scene's mesh)")
    p.add_argument("--max-side", type=int, default=256, help="coverage raster size (long side, px)")
    p.add_argument("--no-coverage", action="store_true", help="skip rasterization (vertex projections only)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_check)
    return p


def add_parsers(subparsers) -> None:
    add_prepare_parser(subparsers)
    add_check_parser(subparsers)


def _report(scene: str | Path, level: int | None, mesh: str | None, max_side: int, coverage: bool,
            as_json: bool) -> dict:
    from .prepare import check_scene, format_report
    report = check_scene(scene, mesh=mesh, level=level, max_side=max_side, coverage=coverage, decode=True)
    if as_json:
        events.text(json.dumps(report, indent=2))
    else:
        events.text(format_report(report))
    return report


def _fail_on_errors(report: dict) -> None:
    if report["errors"]:
        raise InputError(f"{report['scene']}: {report['errors'][0]}")


def run_check(args: argparse.Namespace) -> int:
    report = _report(args.scene, args.level, args.mesh, args.max_side, not args.no_coverage, args.json)
    events.emit("done", stage="check", status=report["status"], n_views=report["n_views"],
                views_not_reached=report["views_not_reached"], report=report)
    _fail_on_errors(report)
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from .prepare import convert
    src = Path(args.src)
    dst = Path(args.out) if args.out else (src if src.is_dir() else src.parent)
    summary = convert(src, dst, source=args.source, downsample=args.downsample,
                      copy_images=not args.link_images, mesh=args.mesh, images=args.images, model=args.model,
                      xml=args.xml, mesh_frame=args.mesh_frame, scene_frame=args.scene_frame,
                      undistorted=args.undistorted, level=args.level)
    report = None
    if args.json:
        events.text(json.dumps(summary, indent=2))
    else:
        events.text(f"Wrote {summary['views']} view(s) to {summary['images_dir']} and {summary['cams_dir']}; "
                    f"mesh {summary['mesh']}.")
    if not args.no_check:
        report = _report(dst, summary["level"], summary["mesh"], args.max_side, True, args.json)
    events.emit("done", stage="prepare", scene=str(dst), level=summary["level"], views=summary["views"],
                mesh=summary["mesh"], notes=summary["notes"],
                status=report["status"] if report else None)
    if report:
        _fail_on_errors(report)
    return 0
