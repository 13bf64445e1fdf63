"""Existing MVSNet scene -> MVSNet scene (re-level it: e.g. add images_4/cams_4 from images_1)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import InputError
from ..scene import load_scene
from .writer import SourceView, write_scene


def detect(src: Path) -> bool:
    """Whether `src` has the cameras folder of an MVSNet scene (cams/ or cams_N/)."""
    return (src / "cams").is_dir() or any(p.is_dir() for p in src.glob("cams_*"))


def convert_mvsnet(src: str | Path, dst: str | Path, *, downsample: int = 1, copy_images: bool = True,
                   mesh: str | Path | None = None, level: int | None = None, undistort: bool = True) -> dict:
    """Downsample (or copy) an MVSNet scene's photos, masks and cameras into `dst`.

    The output folder suffix is the total factor relative to the original photos: a source read from
    images_2/ downsampled by 2 is written to images_4/. Photos of an MVSNet scene are pinhole
    photos already (`undistort` is accepted for a uniform interface and has nothing to do).
    """
    src = Path(src)
    scene = load_scene(src, mesh=mesh, level=level)
    m = re.fullmatch(r"images_(\d+)", scene.views[0].image_path.parent.name)
    base = int(m.group(1)) if m and int(m.group(1)) > 0 else 1
    views = [SourceView(v.name, v.image_path, v.camera, mask=v.mask_path) for v in scene.views]
    source = {"kind": "mvsnet", "scene": str(src), "images": str(scene.views[0].image_path.parent),
              "mesh": str(scene.mesh_path)}
    if Path(dst).resolve() == src.resolve() and int(downsample) == 1 and base == 1:
        raise InputError(f"{src}: converting a scene into itself without --downsample does nothing; "
                         "pass --downsample K or another --out folder.")
    return write_scene(views, scene.mesh_path, dst, downsample=downsample, copy_images=copy_images,
                       source=source, level=base * int(downsample),
                       undistortion=_undistortion_record(src, scene.views[0].image_path.parent.name))


def _undistortion_record(src: Path, images_dir: str) -> dict | None:
    """What prepare recorded about undistorting the source level's photos (carried to the new level)."""
    try:
        info = json.loads((src / "prepare.json").read_text(encoding="utf-8"))
        entry = info["levels"][images_dir[len("images_"):]] if images_dir.startswith("images_") else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    rec = entry.get("undistortion") if isinstance(entry, dict) else None
    return rec if isinstance(rec, dict) else None
