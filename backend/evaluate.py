"""Held-out evaluation: render each test view at its photo's camera and compare on the pixels
the mesh fully covers (all sub-samples hit: edge pixels mix in background in the photo) and the
photo's validity mask keeps (backend.scene: e.g. outside the source of an undistorted photo)."""
from __future__ import annotations

import numpy as np

from . import events
from .cameras import Camera
from .checkpoint import load_model
from .errors import InputError
from .meshio import load_mesh
from .raster import Rasterizer, resolve_device
from .render import render_srgb
from .runfolder import RunFolder, write_json


def render_scored(model, rast: Rasterizer, view: dict, ss: int) -> tuple[np.ndarray, np.ndarray]:
    """A run's view (an entry of its settings' views) rendered, sRGB float32, and the pixels it is
    scored on: every sub-sample hits the mesh, and the photo's validity mask keeps the pixel."""
    from .imageio import read_mask
    from .scene import mask_path_for
    cam = Camera.from_dict(view["camera"])
    pred, alpha = render_srgb(model, rast, cam, ss, "mean")
    mask = alpha >= 1.0
    valid = read_mask(mask_path_for(view["image"]), cam.width, cam.height)
    return pred.astype(np.float32), mask if valid is None else mask & valid


def evaluate(run_dir: str, device: str = "auto", write_images: bool = True, grid_backend: str = "auto") -> dict:
    from .imageio import read_image, write_png
    from .metrics import lpips_or_none, psnr, ssim
    dev = resolve_device(device)
    run = RunFolder(run_dir)
    settings = run.settings()
    test = settings.test_views
    if not test:
        raise InputError(f"{run.root}: no held-out views (the cache was built with --test-every 0).")
    model, ckpt = load_model(run, dev, grid_backend)
    rast = Rasterizer(load_mesh(settings.mesh), dev)
    per_view = []
    run.eval_dir.mkdir(parents=True, exist_ok=True)
    prog = events.Progress("eval", len(test))
    for k, i in enumerate(test):
        v = settings.views[i]
        gt = read_image(v["image"])
        pred, mask = render_scored(model, rast, v, settings.ss)
        rec = {"view": v["name"], "covered": float(mask.mean())}
        if mask.any():
            rec["psnr"] = float(psnr(pred, gt, mask))
            rec["ssim"] = float(ssim(pred, gt, mask))
            lp = lpips_or_none(pred * mask[..., None], gt * mask[..., None])
            if lp is not None:
                rec["lpips"] = float(lp)
        per_view.append(rec)
        if write_images:
            err = np.clip(np.abs(pred - gt) * 4.0, 0, 1) * mask[..., None]
            side = np.concatenate([gt, pred * mask[..., None], err], 1)
            write_png(run.eval_dir / f"{v['name']}.png", side, None)
        prog.update(k + 1, view=v["name"], psnr=rec.get("psnr"))
    scored = [r for r in per_view if "psnr" in r]
    mean = {m: float(np.mean([r[m] for r in scored])) for m in ("psnr", "ssim", "lpips")
            if scored and all(m in r for r in scored)}
    result = {"step": ckpt["step"], "mean": mean, "views": per_view,
              "definition": "metrics over valid pixels whose sub-samples all hit the mesh; images in sRGB [0, 1]"}
    write_json(run.eval_json, result)
    events.emit("done", stage="eval", eval_json=str(run.eval_json), **mean)
    return result
