"""A capture scene's ground truth (SCENE/truth/, laid out as capture.py's docstring says): writing
and reading its images (sRGB and coverage alpha as uint16), and `load_truth`, which lists the
held-out and magnified views with their true cameras."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cameras import Camera
from ..campath import read_camera_path
from ..imageio import write_png
from . import procedural as P
from .capture_settings import GENERATOR

TRUTH = "truth"


def to_u16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 65535).astype(np.uint16)


def save_gt(path: Path, srgb: np.ndarray, alpha: np.ndarray, **extra) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, srgb=to_u16(srgb), alpha=to_u16(alpha), **extra)
    tmp.replace(path)
    write_png(path.with_suffix(".png"), srgb)


def read_gt(path: str | Path) -> dict[str, np.ndarray]:
    """A ground-truth file: srgb (H, W, 3) and alpha (H, W) float32 in [0, 1], and for
    magnified views the resampled nearest photo (photo, photo_valid)."""
    with np.load(path) as z:
        out = {k: z[k] for k in z.files}
    for k in ("srgb", "alpha", "photo"):
        if k in out:
            out[k] = out[k].astype(np.float32) / 65535.0
    return out


@dataclass
class TruthView:
    name: str
    group: str                  # "far", "close" (held-out photos) or "mag 2x" ...
    camera: Camera              # the TRUE camera
    path: Path                  # ground-truth .npz
    target: int | None = None   # magnified views: index of the target point
    factor: float | None = None
    photo: str | None = None    # held-out views: the photo file; magnified: the nearest photo's name


@dataclass
class Truth:
    root: Path
    info: dict
    heldout: list[TruthView] = field(default_factory=list)
    magnified: list[TruthView] = field(default_factory=list)

    @property
    def test_every(self) -> int:
        return int(self.info["test_every"])

    @property
    def views(self) -> list[TruthView]:
        return self.heldout + self.magnified


def mag_group(factor: float) -> str:
    return f"mag {factor:g}x"


def is_capture(scene_dir: str | Path) -> bool:
    try:
        return json.loads((Path(scene_dir) / P.VIEWS_JSON).read_text(encoding="utf-8")).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def load_truth(scene_dir: str | Path) -> Truth | None:
    """The ground truth of a capture scene, or None for any other scene."""
    root = Path(scene_dir)
    if not is_capture(root):
        return None
    info = json.loads((root / TRUTH / "capture.json").read_text(encoding="utf-8"))
    tr = Truth(root, info)
    for v in info["views"]:
        if v["held_out"]:
            tr.heldout.append(TruthView(v["name"], "close" if v["closeup"] else "far",
                                        Camera.from_dict(v["true_camera"]),
                                        root / TRUTH / "heldout" / f"{v['name']}.npz",
                                        photo=str(root / "images" / f"{v['name']}.jpg")))
    _, cams, _ = read_camera_path(root / TRUTH / "magnified.json")
    for m, cam in zip(info["magnified"], cams):
        cam.name = m["name"]
        tr.magnified.append(TruthView(m["name"], mag_group(m["factor"]), cam,
                                      root / TRUTH / "magnified" / f"{m['name']}.npz", m["target"], m["factor"],
                                      info["magnified_targets"][m["target"]]["nearest_photo"]))
    return tr
