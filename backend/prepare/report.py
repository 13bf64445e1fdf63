"""`check`: validation report of an MVSNet scene (numpy only, so Blender can run it too).

Photos: optionally decoded (truncated or corrupt files), and their sizes compared with their
intrinsics and the rest of the capture. Per view: resolution, intrinsics, mesh coverage (fraction of pixels the mesh covers, measured by
rasterizing at a reduced resolution), fraction of mesh vertices in front of the camera and inside
the image, and whether the mesh centre projects into the image. Scene-wide: views the mesh does
not reach, and hints when cameras and mesh look like they are in different frames; when prepare
undistorted the photos (its prepare.json says so), by which lens model and the largest pixel shift.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import events
from ..cameras import Camera
from ..meshio import load_mesh
from ..photos import decode_problems, size_disagreements
from ..raster_cpu import rasterize
from ..scene import load_scene
from .sfm import CAMERA_MODEL

LOW_COVERAGE = 0.01


def _preview_camera(cam: Camera, max_side: int) -> Camera:
    f = min(1.0, max_side / max(cam.width, cam.height))
    return cam if f == 1.0 else cam.scaled(f)


def _inside(uv: np.ndarray, z: np.ndarray, cam: Camera) -> np.ndarray:
    return (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] <= cam.height)


def check_scene(scene_path: str | Path, mesh: str | Path | None = None, level: int | None = None,
                max_side: int = 256, coverage: bool = True, decode: bool = False) -> dict:
    """Validation report of a scene folder (see module doc). JSON-serialisable.

    max_side: the long side, in pixels, at which coverage is rasterized (smaller is faster).
    coverage=False skips rasterization (vertex projections only).
    decode=True decodes every photo (in threads; needs Pillow): truncated or corrupt files and
    sizes other than their camera's are errors. Photo sizes are always compared with their
    intrinsics and with the rest of the capture (warnings).
    """
    scene = load_scene(scene_path, mesh=mesh, level=level)
    photo_problems: dict[str, str] = {}
    if decode:
        decoding = events.Progress("check", len(scene.views))
        photo_problems = decode_problems(scene.views, lambda k: decoding.update(k, phase="photos"))
    sizes_off = size_disagreements(scene.views)
    m = load_mesh(scene.mesh_path)
    V = m.vertices.astype(np.float64)
    lo, hi = V.min(0), V.max(0)
    centre = (lo + hi) / 2
    diag = float(np.linalg.norm(hi - lo))
    sample = V if len(V) <= 100_000 else V[:: int(np.ceil(len(V) / 100_000))]

    progress = events.Progress("check", len(scene.views))
    views, skewed = [], []
    for i, v in enumerate(scene.views):
        cam = v.camera
        uv, z = cam.project(sample)
        front = float((z > 0).mean())
        inside = float(_inside(uv, z, cam).mean())
        cuv, cz = cam.project(centre[None])
        cov = None
        if coverage:
            try:
                cov = float(rasterize(m, _preview_camera(cam, max_side)).mask.mean())
            except ValueError:          # skewed K: the rasterizer (like training) cannot use it
                skewed.append(v.name)
        views.append({
            "name": v.name, "image": str(v.image_path), "width": cam.width, "height": cam.height,
            "fx": cam.fx, "fy": cam.fy, "cx": cam.cx, "cy": cam.cy,
            "coverage": cov, "vertices_in_front": front, "vertices_in_image": inside,
            "centre_in_image": bool(_inside(cuv, cz, cam)[0]),
            "distance_to_centre": float(np.linalg.norm(cam.center - centre)),
            "photo_decoded": (v.name not in photo_problems) if decode else None,
        })
        progress.update(i + 1, view=v.name)

    resolutions: dict[str, int] = {}
    for r in views:
        key = f"{r['width']}x{r['height']}"
        resolutions[key] = resolutions.get(key, 0) + 1
    # Without coverage, a view reaches the mesh if a vertex or the mesh centre projects into it
    # (a rough proxy: large triangles can cover an image with all their vertices outside it).
    reach = [float(r["vertices_in_image"] > 0 or r["centre_in_image"]) if r["coverage"] is None
             else r["coverage"] for r in views]
    not_reached = [r["name"] for r, c in zip(views, reach) if c == 0]
    low = [r["name"] for r, c in zip(views, reach) if 0 < c < LOW_COVERAGE] if coverage else []
    centre_views = sum(r["centre_in_image"] for r in views)

    errors, warnings = [], []
    if photo_problems:
        errors.append(f"{len(photo_problems)} photo(s) cannot be used: {next(iter(photo_problems.values()))}")
    if sizes_off:
        warnings.append(f"{len(sizes_off)} photo(s) have a size that disagrees with their camera: "
                        f"{next(iter(sizes_off.values()))}")
    if skewed:
        errors.append(f"{len(skewed)} camera(s) have a skewed K (e.g. {skewed[0]}), which cannot be rendered; "
                      "re-export the cameras without skew.")
    if len(not_reached) == len(views):
        errors.append("the mesh is not seen by any camera: cameras and mesh are in different frames "
                      "(Metashape: check --mesh-frame / the exported coordinate system) or the wrong mesh was used.")
    elif not_reached:
        warnings.append(f"{len(not_reached)} view(s) do not see the mesh; they add no training rays.")
    if low:
        warnings.append(f"{len(low)} view(s) see the mesh in less than {LOW_COVERAGE:.0%} of their pixels.")
    if views and centre_views == 0 and len(not_reached) < len(views):
        warnings.append("the centre of the mesh's bounding box is outside every view.")
    behind = [r for r in views if r["vertices_in_front"] < 0.05]
    if views and len(behind) > len(views) / 2:
        warnings.append("most cameras have the mesh behind them: the poses may use OpenGL axes (y up, z back) "
                        "instead of OpenCV axes (y down, z forward), or be camera-to-world instead of "
                        "world-to-camera.")
    rounding = float(np.abs(V).max()) * 2.0 ** -24          # float32 spacing of the mesh coordinates
    if diag > 0 and rounding > 1e-5 * diag:
        warnings.append(f"the mesh lies far from the origin: its float32 coordinates are only precise to "
                        f"~{rounding:.2g} (diagonal {diag:.3g}); export it in a local coordinate system.")
    dists = np.array([r["distance_to_centre"] for r in views])
    if views and diag > 0 and np.median(dists) > 100 * diag:
        warnings.append(f"the cameras are ~{np.median(dists) / diag:.0f}x the mesh size away from it: the mesh "
                        "and cameras may use different units or scales.")

    fsize = scene.mesh_path.stat().st_size
    img_dir = scene.views[0].image_path.parent if scene.views else None
    sfm = _sfm(scene.root, img_dir)
    if sfm and sfm.get("unregistered"):
        left = sfm["unregistered"]
        warnings.append(f"{len(left)} of {sfm['photos']} photo(s) did not register and were left out: "
                        + ", ".join(left[:5]) + (" ..." if len(left) > 5 else ""))
    return {
        "scene": str(scene.root), "status": "error" if errors else ("warning" if warnings else "ok"),
        "errors": errors, "warnings": warnings,
        "n_views": len(views), "resolutions": resolutions,
        "images_dir": str(scene.views[0].image_path.parent) if views else None,
        "mesh": {"path": str(scene.mesh_path), "vertices": int(len(m.vertices)), "faces": int(len(m.faces)),
                 "file_bytes": int(fsize), "bounds_min": lo.tolist(), "bounds_max": hi.tolist(),
                 "diagonal": diag},
        "photos_decoded": bool(decode), "photos_unusable": photo_problems, "photo_sizes_off": sizes_off,
        "coverage_measured": bool(coverage), "coverage_max_side": int(max_side),
        "coverage_mean": float(np.mean([r["coverage"] for r in views if r["coverage"] is not None] or [0.0]))
        if coverage and views else None,
        "views_not_reached": not_reached, "views_low_coverage": low,
        "views_seeing_mesh_centre": int(centre_views),
        "views_with_mask": sum(v.mask_path is not None for v in scene.views),
        "undistortion": _prepared(scene.root, img_dir, "undistortion"),
        "structure_from_motion": sfm,
        "views": views,
    }


def _prepared(root: Path, img_dir: Path | None, key: str) -> dict | None:
    """prepare.json's record `key` of this level (undistortion: of its photos, None when prepare
    did not undistort them; source: what it was converted from)."""
    if img_dir is None or not img_dir.name.startswith("images_"):
        return None
    try:
        entry = json.loads((root / "prepare.json").read_text(encoding="utf-8"))["levels"][img_dir.name[len("images_"):]]
        rec = entry.get(key)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return rec if isinstance(rec, dict) else None


def _sfm(root: Path, img_dir: Path | None) -> dict | None:
    """How structure from motion went, for a scene made from photos only."""
    src = _prepared(root, img_dir, "source")
    if not src or src.get("kind") != "photos":
        return None
    return {k: src.get(k) for k in ("photos", "registered", "unregistered", "mean_reprojection_error_px", "mapper",
                                   "camera_model", "lens")}


def some_names(names: list[str], shown: int = 10) -> str:
    """'a, b, c (+7 more)': the first `shown` names of a list that may be long."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" (+{more} more)" if more > 0 else "")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def format_report(r: dict, max_rows: int = 40) -> str:
    """Human-readable text of a check_scene report."""
    mesh = r["mesh"]
    lines = [f"Scene {r['scene']}: {r['status'].upper()}",
             f"  views: {r['n_views']}  resolutions: "
             + ", ".join(f"{k} ({n})" for k, n in r["resolutions"].items()),
             f"  mesh: {mesh['path']}  {mesh['vertices']:,} vertices, {mesh['faces']:,} triangles, "
             f"{_mb(mesh['file_bytes'])}, bounding-box diagonal {mesh['diagonal']:.4g}"]
    if r.get("photos_decoded"):
        bad = len(r.get("photos_unusable") or {})
        lines.append(f"  photos: {r['n_views'] - bad} of {r['n_views']} decode at their camera's size"
                     + (f"; {bad} cannot be used" if bad else ""))
    if r["coverage_measured"]:
        lines.append(f"  mesh coverage (at <= {r['coverage_max_side']} px): mean {r['coverage_mean']:.1%}")
    lines.append(f"  views that see the mesh centre: {r['views_seeing_mesh_centre']} of {r['n_views']}")
    m = r.get("structure_from_motion")
    if m:
        lines.append(f"  photos registered by structure from motion: {m['registered']} of {m['photos']} "
                     f"({m['mapper']} mapper, {m.get('camera_model') or CAMERA_MODEL} camera"
                     + (f": {m['lens']}" if m.get("lens") else "") + "), mean reprojection "
                     f"error {m['mean_reprojection_error_px']:.2f} px")
    u = r.get("undistortion")
    if u:
        lines.append(f"  photos undistorted by prepare: {u.get('views', '?')} view(s), lens model "
                     + "; ".join(u.get("models") or ["?"])
                     + f"; largest pixel shift {float(u.get('max_shift_px', 0.0)):.2f} px (full resolution)")
    if r.get("views_with_mask"):
        lines.append(f"  views with a validity mask (invalid pixels are left out of training and metrics): "
                     f"{r['views_with_mask']} of {r['n_views']}")
    if r["views_not_reached"]:
        lines.append("  views the mesh does not reach: " + some_names(r["views_not_reached"]))
    if r.get("views_low_coverage"):                 # they add few training rays: closer photos would help
        lines.append(f"  views the mesh covers poorly (< {LOW_COVERAGE:.0%} of their pixels): "
                     + some_names(r["views_low_coverage"]))
    lines.append("")
    lines.append(f"  {'view':<28} {'size':>11} {'coverage':>9} {'in front':>9} {'in image':>9}  centre")
    for v in r["views"][:max_rows]:
        cov = "-" if v["coverage"] is None else f"{v['coverage']:.1%}"
        lines.append(f"  {v['name'][:28]:<28} {v['width']:>5}x{v['height']:<5} {cov:>9} "
                     f"{v['vertices_in_front']:>9.0%} {v['vertices_in_image']:>9.0%}  "
                     f"{'yes' if v['centre_in_image'] else 'no'}")
    if len(r["views"]) > max_rows:
        lines.append(f"  ... {len(r['views']) - max_rows} more view(s)")
    for e in r["errors"]:
        lines.append(f"ERROR: {e}")
    for w in r["warnings"]:
        lines.append(f"WARNING: {w}")
    return "\n".join(lines)
