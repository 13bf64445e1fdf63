"""Scoring of the quality benchmark (bench_quality.py): the scored views of a scene (held-out
photos as their own reference, or a capture scene's clean reference at its true cameras), every
method's per-view metrics on the same pixels, and the crop sheets."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from backend.cameras import Camera
from backend.checkpoint import load_model
from backend.imageio import read_image
from backend.meshio import load_mesh
from backend.metrics import lpips_or_none, psnr, speckle_fraction, ssim
from backend.synthetic.truth import Truth, read_gt
from backend.raster import Rasterizer
from backend.render import render_srgb
from backend.runfolder import RunFolder
from common import sync

# Method labels: the methods' rows in the records and the table, and the targets' terms.
VC_SS = 2
OURS = "ours (ss=2)"             # the pipeline's default: the method the targets are about
GS = "3DGS (gsplat)"
VC = f"vertex colour (ss={VC_SS})"
TRUTH = "ground truth"
CROP_FACTORS = (1.0, 4.0, 8.0)
GT_ALPHA = 0.999                 # capture scenes: pixels the true surface fully covers


def log(msg: str) -> None:
    print(msg, flush=True)


def full_cover(rast: Rasterizer, cam: Camera) -> np.ndarray:
    """Pixels whose 2x2 sub-samples and centre all hit the mesh."""
    return (rast.surface(cam, 2).mask.all(-1) & rast.surface(cam, 1).mask[..., 0]).cpu().numpy()


@dataclass
class EvalView:
    """One scored view: the camera every method renders, the reference image and the pixels."""
    name: str
    group: str
    cam: Camera
    gt: np.ndarray                      # sRGB (H, W, 3) in [0, 1]
    mask: np.ndarray                    # (H, W) bool, scored pixels
    photo: np.ndarray | None = None     # crop panel "photo" (None: the reference is the photo)
    centre: tuple[float, float] | None = None   # crop centre in pixels (None: the image centre)


@dataclass
class Sheet:
    """A crop sheet: one row per view, one panel per method."""
    stem: str
    rows: list[tuple[str, str]]         # (row label, view name)
    panels: dict[str, list[tuple[str, np.ndarray, float]]] = field(default_factory=dict)


def photo_views(cfg: dict, groups: list[str], rast: Rasterizer) -> list[EvalView]:
    """Held-out photos as their own reference (the clean procedural scene, or a real capture)."""
    out = []
    for i in cfg["test_views"]:
        v = cfg["views"][i]
        cam = Camera.from_dict(v["camera"])
        out.append(EvalView(v["name"], groups[i], cam, read_image(v["image"]), full_cover(rast, cam)))
    return out


def capture_views(truth: Truth, rast: Rasterizer, magnified: bool = True) -> list[EvalView]:
    """Held-out (and magnified) views of a capture scene at their true cameras with the clean
    reference, scored on the pixels both the pipeline's mesh and the true surface fully cover."""
    out = []
    for tv in truth.heldout + (truth.magnified if magnified else []):
        g = read_gt(tv.path)
        mask = full_cover(rast, tv.camera) & (g["alpha"] >= GT_ALPHA)
        if tv.factor is None:
            photo, centre = read_image(tv.photo), None
        else:
            point = truth.info["magnified_targets"][tv.target]["point"]
            uv, _ = tv.camera.project(np.array([point]))
            photo, centre = g["photo"], (float(uv[0, 0]), float(uv[0, 1]))
        out.append(EvalView(tv.name, tv.group, tv.camera, g["srgb"], mask, photo, centre))
    return out


def capture_sheets(label: str, truth: Truth) -> list[Sheet]:
    """One crop sheet per magnified point: rows 1x, 4x, 8x."""
    sheets = []
    for t in range(len(truth.info["magnified_targets"])):
        rows = [(f"{v.factor:g}x", v.name) for v in truth.magnified if v.target == t and v.factor in CROP_FACTORS]
        if rows:
            sheets.append(Sheet(f"crops_{label}_point{t}", rows))
    return sheets


@torch.no_grad()
def score_clean(run_dir: str | Path, truth: Truth, dev: torch.device) -> dict:
    """A trained run's held-out views against a capture scene's clean reference at the true
    cameras (exposure: the mean code): mean PSNR and SSIM over all held-out views and per group."""
    run = RunFolder(run_dir)
    settings = run.settings()
    model, ckpt = load_model(run, dev)
    rast = Rasterizer(load_mesh(settings.mesh), dev)
    per = []
    for v in capture_views(truth, rast, magnified=False):
        pred, _ = render_srgb(model, rast, v.cam, settings.ss)
        per.append((v.group, psnr(pred, v.gt, v.mask), ssim(pred, v.gt, v.mask)))
    res = {"step": ckpt["step"], "psnr": float(np.mean([p for _g, p, _s in per])),
           "ssim": float(np.mean([s for _g, _p, s in per]))}
    for g in dict.fromkeys(g for g, _p, _s in per):
        res[f"psnr_{g}"] = float(np.mean([p for gg, p, _s in per if gg == g]))
    return res


class Scorer:
    """Scored views of one scene, every method's metrics, and the crop sheets."""

    def __init__(self, label: str, views: list[EvalView], sheets: list[Sheet], device: torch.device | None = None):
        self.label, self.views, self.sheets = label, views, sheets
        self.device = device or torch.device("cpu")           # where PSNR and SSIM are computed
        self.by_name = {v.name: v for v in views}
        self.records: list[dict] = []
        self.lpips_ok = True
        for sh in sheets:
            for _row, name in sh.rows:
                v = self.by_name[name]
                sh.panels[name] = [("ground truth" if v.photo is not None else "photo", v.gt, math.inf)] \
                    + ([("photo", v.photo, math.inf)] if v.photo is not None else [])
        for v in views:                                     # the reference's own speckle
            self.records.append({"scene": label, "view": v.name, "group": v.group, "method": TRUTH,
                                 "covered": float(v.mask.mean()), "train_s": None, "render_ms": None,
                                 "psnr": None, "ssim": None, "lpips": None,
                                 "speckle": speckle_fraction(v.gt, v.mask)})

    def score(self, method: str, render: Callable[[Camera], np.ndarray], train_s: float) -> None:
        render(self.views[0].cam)                           # warm-up frame
        for v in self.views:
            sync()
            t0 = time.perf_counter()
            pred = np.asarray(render(v.cam), np.float32)
            dt = time.perf_counter() - t0
            m = v.mask
            p_, g_, m_ = (torch.from_numpy(np.ascontiguousarray(x)).to(self.device) for x in (pred, v.gt, m))
            rec = {"scene": self.label, "view": v.name, "group": v.group, "method": method,
                   "covered": float(m.mean()), "train_s": train_s, "render_ms": 1e3 * dt,
                   "psnr": psnr(p_, g_, m_), "ssim": ssim(p_, g_, m_), "lpips": None,
                   "speckle": speckle_fraction(pred, m)}
            if self.lpips_ok:
                lp = lpips_or_none(pred * m[..., None], v.gt * m[..., None])
                self.lpips_ok = lp is not None
                rec["lpips"] = lp
            self.records.append(rec)
            for sh in self.sheets:
                if v.name in sh.panels:
                    sh.panels[v.name].append((method, pred * m[..., None], rec["psnr"]))
        last = [r for r in self.records if r["method"] == method]
        log(f"  {method}: PSNR {np.mean([r['psnr'] for r in last]):.2f} dB, "
            f"train {train_s:.1f} s, render {np.mean([r['render_ms'] for r in last]):.1f} ms")

    def write_crops(self, out: Path) -> list[str]:
        files = []
        for sh in self.sheets:
            rows = [(label, sh.panels[name], self.by_name[name]) for label, name in sh.rows]
            save_sheet(out / f"{sh.stem}.png", rows)
            files.append(f"{sh.stem}.png")
        return files


def save_sheet(path: Path, rows: list[tuple[str, list[tuple[str, np.ndarray, float]], EvalView]]) -> None:
    """Rows of panels: a square crop (a third of the short side, around the view's crop centre)
    of every panel, upscaled to >= 256 px, labelled with the row, the panel and its PSNR."""
    from PIL import Image, ImageDraw
    cam0 = rows[0][2].cam
    side = max(16, min(cam0.width, cam0.height) // 3)
    f = -(-256 // side)
    tile, band, gap = side * f, 14, 4
    ncol = max(len(panels) for _l, panels, _v in rows)
    canvas = Image.new("RGB", (ncol * (tile + gap) - gap, len(rows) * (tile + band + gap) - gap), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (row_label, panels, v) in enumerate(rows):
        cx, cy = v.centre or (v.cam.width / 2, v.cam.height / 2)
        x0 = int(np.clip(round(cx - side / 2), 0, v.cam.width - side))
        y0 = int(np.clip(round(cy - side / 2), 0, v.cam.height - side))
        y = r * (tile + band + gap)
        for k, (label, img, p) in enumerate(panels):
            crop = np.clip(img[y0:y0 + side, x0:x0 + side], 0, 1)
            im = Image.fromarray((crop * 255).round().astype(np.uint8)).resize((tile, tile), Image.NEAREST)
            x = k * (tile + gap)
            canvas.paste(im, (x, y + band))
            text = f"{row_label} {label}".strip()
            draw.text((x + 2, y + 1), text if not math.isfinite(p) else f"{text} {p:.1f} dB", fill=(0, 0, 0))
    canvas.save(path)

