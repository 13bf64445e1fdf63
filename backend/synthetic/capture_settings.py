"""What a capture scene is made with: its variants, its degradation parameters (`CaptureParams`,
documented in capture.py) and the complete settings that its views.json stores."""
from __future__ import annotations

from dataclasses import asdict, dataclass

GENERATOR = "backend.procedural_capture"    # views.json's tag: the old module name (procedural.GENERATORS)
VERSION = 1
DETAIL = 4                       # tessellation of the true scene (13,952 triangles)
VARIANTS = {"sparse": (16, 960, 720), "dense": (120, 640, 480)}


@dataclass
class CaptureParams:
    """The degradations (documented in capture.py's docstring). Defaults are realistic ones."""
    exposure_ev: float = 0.5
    wb_sigma: float = 0.03
    iso: tuple[float, float] = (100.0, 800.0)
    full_well_e: float = 20000.0
    read_noise_e: float = 3.0
    jpeg_quality: tuple[int, int] = (85, 95)
    jpeg_subsampling: str = "4:2:0"
    reproj_rms_px: float = 0.3
    reproj_spread: float = 0.3
    cluster_cell: float = 0.09
    displacement: float = 6e-3
    displacement_freq: float = 1.2
    holes: int = 4
    hole_radius: float = 0.1
    blobs: int = 5
    blob_radius: tuple[float, float] = (0.03, 0.06)
    blob_offset: tuple[float, float] = (0.06, 0.15)
    occluded_fraction: float = 0.2
    magnified_points: int = 4
    magnified_factors: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> CaptureParams:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def settings(variant: str = "sparse", n_views: int | None = None, width: int | None = None,
             height: int | None = None, ss_ref: int = 2, seed: int = 0,
             params: CaptureParams | None = None) -> dict:
    """The complete generator settings (variant sizes filled in), as stored in views.json."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown capture variant {variant!r}; use one of {sorted(VARIANTS)}")
    dv, dw, dh = VARIANTS[variant]
    return {"variant": variant, "n_views": int(n_views or dv), "width": int(width or dw),
            "height": int(height or dh), "ss_ref": int(ss_ref), "seed": int(seed), "detail": DETAIL,
            "params": (params or CaptureParams()).to_json()}
