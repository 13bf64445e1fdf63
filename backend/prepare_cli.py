"""`prepare` and `check` subcommands (argparse wiring only; the work is in backend.prepare).

    python -m backend prepare SRC [--out DST] [--downsample N] [--from auto|SOURCE] ...
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
from .prepare import sources


def _add_flag(parser, f: sources.Flag) -> None:
    if f.kind is bool:
        parser.add_argument(f.flag, dest=f.name, action="store_true", help=f.help)
    else:
        parser.add_argument(f.flag, dest=f.name, type=f.kind, choices=f.choices or None, help=f.help)


def add_prepare_parser(subparsers) -> argparse.ArgumentParser:
    """The `prepare` command; the sources, their flags and texts come from prepare/sources.py."""
    kinds = sources.SOURCES
    p = subparsers.add_parser(
        "prepare", help=f"convert a {' / '.join(s.label for s in kinds)} source into an MVSNet scene folder",
        description=f"Convert a {sources.either([s.folder for s in kinds])} into OUT/images_N, OUT/cams_N (and "
                    "OUT/masks_N) and OUT/mesh.*, then print the check report. Photos of cameras with lens "
                    "distortion (COLMAP SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV; Metashape frame) are "
                    "undistorted to pinhole photos; pixels outside the source photo are marked invalid in "
                    "OUT/masks_N. Fisheye models are refused.")
    p.add_argument("src", help=sources.inputs())
    p.add_argument("--out", help="scene folder to write (default: SRC's folder)")
    p.add_argument("--from", dest="source", default="auto", choices=["auto", *(s.name for s in kinds)],
                   help="source kind (default: detect)")
    p.add_argument("--downsample", type=int, default=1, metavar="N",
                   help="shrink photos N times (area filter, after undistorting), scaling the intrinsics "
                        "exactly; writes images_N/ and cams_N/")
    p.add_argument("--mesh", help="mesh file (.ply/.obj) if SRC holds none or several")
    shared = [f for f in sources.all_flags() if sum(f in s.flags for s in kinds) > 1]
    for f in shared:
        _add_flag(p, f)
    p.add_argument("--link-images", action="store_true",
                   help="hard-link photos instead of copying them when not resized (same drive)")
    for s in kinds:                 # a group per source with the flags only it takes
        g = p.add_argument_group(s.label, s.description)
        for f in s.flags:
            if f not in shared:
                _add_flag(g, f)
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
    src = Path(args.src)
    dst = Path(args.out) if args.out else (src if src.is_dir() else src.parent)
    summary = sources.convert(src, dst, source=args.source, downsample=args.downsample,
                              copy_images=not args.link_images, mesh=args.mesh,
                              **{f.name: getattr(args, f.name) for f in sources.all_flags()})
    if summary.get("stopped"):          # its `stopped` event is out; a rerun continues
        return 0
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
