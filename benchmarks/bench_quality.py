"""Quality benchmark: the hash featurized manifold against 3D Gaussian splatting (gsplat) and a
per-vertex-colour baseline, trained on the same photos and scored on the same held-out views at
the same resolution, split into far and close-up views.

    python benchmarks/bench_quality.py --out DIR [--scene PATH] [--quick | --smoke]

Scenes: the procedural multi-scale scene (orbit views plus close-ups 8x nearer whose texture is
far finer than the mesh; exact ground truth), and optionally a real capture (MVSNet layout, one
view group "all" unless it has a views.json with close-up flags).
Methods: ours at the reference model settings with supersampling 1 and 2 (anti-aliasing);
3DGS through gsplat, initialised from the mesh vertices (CUDA only; skipped with a note
otherwise); one colour per mesh vertex, fitted with the same L1 loss at supersampling 2.
Metrics (backend.metrics, sRGB in [0, 1]) on the pixels the mesh fully covers in the held-out
photo (every 2x2 sub-sample and the pixel centre hit the mesh), the same pixels for every method,
mean over views: PSNR, SSIM, LPIPS (AlexNet) when its weights are on disk. Train s: photos and
mesh on disk to a trained model (ours: ray cache + training; baselines: photo loading,
rasterization/initialisation + fitting), one-time JIT builds excluded. Render ms: one held-out
frame at full resolution, camera to image in host memory (mesh rasterization included), mean
over the held-out views after a warm-up frame.

Modes:                 default (full)          --quick                 --smoke (CPU, no 3DGS)
  procedural scene     60 views 960x720        40 views 640x480        16 views 96x72
  ours (both ss)       30000 steps x 1.57M     1500 steps x 262,144    preset small, 80 x 1024
                       rays (reference)        rays
  3DGS                 30000 steps             7000 steps              skipped
  vertex colour        3000 steps x 1M px      1000 steps x 262,144    150 x 4096
Model settings of ours are the reference ones in every mode but --smoke (16 levels x 8 features,
2^22 entries). --quick takes about 4.5 minutes on one H100, of which about 80 s is gsplat's
first-time CUDA build (overlapped with making the scene; cached for later runs on the machine).
Outputs: DIR/quality.json, DIR/crops_<scene>_<view>.png (close-up crops side by side), and the
table as the last lines of stdout.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from backend import events  # noqa: E402
from backend.cache import build_cache, load_rgb8  # noqa: E402
from backend.cameras import Camera  # noqa: E402
from backend.checkpoint import load_model  # noqa: E402
from backend.colour import linear_to_srgb  # noqa: E402
from backend.imageio import read_image  # noqa: E402
from backend.meshio import load_mesh  # noqa: E402
from backend.metrics import lpips_or_none, psnr, ssim  # noqa: E402
from backend.procedural import VIEWS_JSON, make_scene  # noqa: E402
from backend.raster import Rasterizer  # noqa: E402
from backend.render import render_camera  # noqa: E402
from backend.runfolder import RunFolder  # noqa: E402
from backend.scene import load_scene  # noqa: E402
from backend.config import TrainConfig  # noqa: E402
from backend.train import train  # noqa: E402
from baselines import gsplat_baseline as gs  # noqa: E402
from baselines import vertex_colour as vc  # noqa: E402
from common import device_name, sync  # noqa: E402

VC_SS = 2
LPIPS_NOTE = ("LPIPS not reported: the `lpips` package from PyPI ships only its linear calibration "
              "layers and fetches the AlexNet backbone from the PyTorch download server on first use; "
              "no package registry serves those weights and this benchmark downloads nothing. Put "
              "torchvision's alexnet-owt-7be5be79.pth in the torch hub cache (checkpoints/) and install "
              "`lpips` to get the column.")


@dataclass
class Mode:
    name: str
    views: int
    width: int
    height: int
    ss_ref: int
    ours_preset: str
    ours_iters: int
    ours_batch: int | None      # None: the preset's
    gs_steps: int               # 0: 3DGS skipped
    vc_iters: int
    vc_batch: int


MODES = {
    "full": Mode("full", 60, 960, 720, 4, "reference", 30000, None, 30000, 3000, 1 << 20),
    "quick": Mode("quick", 40, 640, 480, 3, "reference", 1500, 1 << 18, 7000, 1000, 1 << 18),
    "smoke": Mode("smoke", 16, 96, 72, 2, "small", 80, 1024, 0, 150, 4096),
}


def log(msg: str) -> None:
    print(msg, flush=True)


def pick_test_every(close: list[bool]) -> int:
    """Largest held-out stride (8 down to 3; Scene.split holds out i % k == k // 2) whose held-out
    views include at least two far and two close-up views, else one of each."""
    n = len(close)
    for need in (2, 1):
        for k in range(8, 2, -1):
            test = [i for i in range(n) if i % k == k // 2]
            c = sum(close[i] for i in test)
            if c >= need and len(test) - c >= need:
                return k
    raise ValueError("the scene needs at least one far and one close-up view to hold out")


def procedural_scene(work: Path, mode: Mode) -> Path:
    """The multi-scale procedural scene, reused when a previous run made the same one."""
    return make_scene(work / "procedural", mode.views, mode.width, mode.height, ss_ref=mode.ss_ref, seed=0,
                      layout="multiscale", workers=os.cpu_count() or 1, reuse=True)


def closeup_flags(scene: Path) -> list[bool] | None:
    """Per-view close-up flags from views.json (in the scene's view order), or None."""
    try:
        info = json.loads((scene / VIEWS_JSON).read_text())
        flags = {v["name"]: bool(v["closeup"]) for v in info["views"]}
    except (OSError, KeyError, ValueError, TypeError):
        return None
    names = [v.name for v in load_scene(scene).views]
    return [flags[n] for n in names] if set(names) <= set(flags) else None


def warm_up_ours(mesh, dev: torch.device) -> None:
    """Compile the hash-grid kernels (Triton on CUDA) outside the timed training."""
    from backend.model import Manifold
    lo, hi = mesh.bounds
    m = Manifold(TrainConfig().model, lo.tolist(), hi.tolist(), 1).to(dev)
    for S in (1, 4):
        xyz = torch.as_tensor(lo + (hi - lo) * np.random.rand(4096, S, 3), dtype=torch.float32, device=dev)
        d = torch.nn.functional.normalize(torch.randn(4096, 3, device=dev), dim=-1)
        m(xyz, torch.ones(4096, S, dtype=torch.bool, device=dev), d,
          view=torch.zeros(4096, dtype=torch.long, device=dev)).sum().backward()
    sync()


class Scorer:
    """Held-out views of one scene, their masks, and every method's metrics and crops."""

    def __init__(self, label: str, cfg: dict, groups: list[str], rast: Rasterizer, crop_views: set[int]):
        self.label, self.rast = label, rast
        self.views = [(i, Camera.from_dict(cfg["views"][i]["camera"]), cfg["views"][i]["name"], groups[i],
                       cfg["views"][i]["image"]) for i in cfg["test_views"]]
        self.gt = {i: read_image(p) for i, _c, _n, _g, p in self.views}
        self.mask = {i: (rast.surface(c, 2).mask.all(-1) & rast.surface(c, 1).mask[..., 0]).cpu().numpy()
                     for i, c, *_ in self.views}
        self.crop_views = crop_views
        self.crops: dict[int, list[tuple[str, np.ndarray, float]]] = {
            i: [("photo", self.gt[i], math.inf)] for i in crop_views}
        self.records: list[dict] = []
        self.lpips_ok = True

    def score(self, method: str, render: Callable[[Camera], np.ndarray], train_s: float) -> None:
        render(self.views[0][1])                                   # warm-up frame
        for i, cam, name, group, _p in self.views:
            sync()
            t0 = time.perf_counter()
            pred = np.asarray(render(cam), np.float32)
            dt = time.perf_counter() - t0
            gt, m = self.gt[i], self.mask[i]
            rec = {"scene": self.label, "view": name, "group": group, "method": method,
                   "covered": float(m.mean()), "train_s": train_s, "render_ms": 1e3 * dt,
                   "psnr": psnr(pred, gt, m), "ssim": ssim(pred, gt, m), "lpips": None}
            if self.lpips_ok:
                lp = lpips_or_none(pred * m[..., None], gt * m[..., None])
                self.lpips_ok = lp is not None
                rec["lpips"] = lp
            self.records.append(rec)
            if i in self.crop_views:
                self.crops[i].append((method, pred * m[..., None], rec["psnr"]))
        last = [r for r in self.records if r["method"] == method]
        log(f"  {method}: PSNR {np.mean([r['psnr'] for r in last]):.2f} dB, "
            f"train {train_s:.1f} s, render {np.mean([r['render_ms'] for r in last]):.1f} ms")

    def write_crops(self, out: Path) -> list[str]:
        files = []
        for i, cam, name, *_ in self.views:
            if i in self.crop_views:
                p = out / f"crops_{self.label}_{name}.png"
                save_crops(p, self.crops[i], cam)
                files.append(p.name)
        return files


def save_crops(path: Path, panels: list[tuple[str, np.ndarray, float]], cam: Camera) -> None:
    """Side by side: a centred square of every panel, upscaled to >= 256 px, labelled."""
    from PIL import Image, ImageDraw
    side = max(16, min(cam.width, cam.height) // 3)
    x0, y0 = (cam.width - side) // 2, (cam.height - side) // 2
    f = max(1, 256 // side)
    band, gap = 14, 4
    canvas = Image.new("RGB", (len(panels) * (side * f + gap) - gap, side * f + band), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, (label, img, p) in enumerate(panels):
        crop = np.clip(img[y0:y0 + side, x0:x0 + side], 0, 1)
        tile = Image.fromarray((crop * 255).round().astype(np.uint8)).resize((side * f, side * f), Image.NEAREST)
        x = k * (side * f + gap)
        canvas.paste(tile, (x, band))
        draw.text((x + 2, 1), label if not math.isfinite(p) else f"{label} {p:.1f} dB", fill=(0, 0, 0))
    canvas.save(path)


def run_scene(label: str, scene: Path, flags: list[bool] | None, mode: Mode, dev: torch.device,
              gs_reason: str | None, work: Path, out: Path, notes: list[str]) -> tuple[list[dict], list[str]]:
    n = len(load_scene(scene).views)
    te = pick_test_every(flags) if flags else 8
    groups = ["close" if c else "far" for c in flags] if flags else ["all"] * n
    runs = {ss: work / label / f"ours_ss{ss}" for ss in (1, 2)}
    device = dev.type
    # One-time builds (nvdiffrast, Triton) outside every timing.
    mesh = load_mesh(load_scene(scene).mesh_path)
    rast = Rasterizer(mesh, dev)
    if dev.type == "cuda":
        warm_up_ours(mesh, dev)

    scorer = None
    overrides = {"batch_rays": mode.ours_batch} if mode.ours_batch else {}
    for ss in (1, 2):
        t0 = time.perf_counter()
        cfg = build_cache(str(scene), str(runs[ss]), ss=ss, test_every=te, device=device)
        train(str(runs[ss]), iters=mode.ours_iters, device=device, preset=mode.ours_preset, overrides=overrides)
        sync()
        train_s = time.perf_counter() - t0
        if scorer is None:
            test_close = [i for i in cfg["test_views"] if groups[i] == "close"]
            crop_views = set(test_close[:3] if test_close else cfg["test_views"][:2])
            scorer = Scorer(label, cfg, groups, rast, crop_views)
            log(f"{label}: {n} views, {len(cfg['test_views'])} held out (every {te}th from {te // 2}): "
                + ", ".join(f"{g} {sum(groups[i] == g for i in cfg['test_views'])}" for g in sorted(set(groups))))
        model, _ = load_model(RunFolder(runs[ss]), dev)
        scorer.score(f"ours (ss={ss})", lambda c, m=model, s=ss: linear_to_srgb(render_camera(m, rast, c, s).rgb_linear),
                     train_s)
        del model
    assert scorer is not None
    train_ids = cfg["train_views"]
    train_cams = [Camera.from_dict(cfg["views"][i]["camera"]) for i in train_ids]

    def photos() -> list[np.ndarray]:
        return [load_rgb8(Path(cfg["views"][i]["image"]), c) for i, c in zip(train_ids, train_cams)]

    # 3D Gaussian splatting.
    if gs_reason is None and mode.gs_steps > 0:
        try:
            t0 = time.perf_counter()
            views = [gs.TrainView(c, p, rast.surface(c, 2).mask.any(-1).cpu().numpy())
                     for c, p in zip(train_cams, photos())]
            gcfg = gs.GSConfig(steps=mode.gs_steps)
            splats, info = gs.train(mesh, views, gcfg, dev, rast, progress=lambda s, loss, ng, t: log(
                f"  3DGS step {s}/{gcfg.steps}: loss {loss:.4f}, {ng} Gaussians, {t:.0f} s"))
            sync()
            train_s = time.perf_counter() - t0
            del views
            scorer.score("3DGS (gsplat)", lambda c: gs.render(splats, c, gcfg.sh_degree, gcfg)[0], train_s)
            notes.append(f"{label}: 3DGS {info['init_points']} initial Gaussians (mesh vertices) -> "
                         f"{info['n_gaussians']} after {info['steps']} steps; scene scale {info['scene_scale']:.3g}")
            del splats
        except Exception as e:                                  # an external package: report, go on
            notes.append(f"{label}: 3DGS failed: {type(e).__name__}: {e}")
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    else:
        notes.append(f"{label}: 3DGS skipped: "
                     + (gs_reason or "the --smoke mode runs without it"))

    # Per-vertex colour at the same sub-sampling as ours (ss=2).
    t0 = time.perf_counter()
    table = vc.pixel_table(rast, list(zip(train_cams, photos())), VC_SS)
    vmodel = vc.fit(table, mesh.faces, len(mesh.vertices), iters=mode.vc_iters, batch=mode.vc_batch)
    sync()
    train_s = time.perf_counter() - t0
    del table
    scorer.score(f"vertex colour (ss={VC_SS})", lambda c: vc.render(vmodel, rast, c, VC_SS)[0], train_s)
    if not scorer.lpips_ok and LPIPS_NOTE not in notes:
        notes.append(LPIPS_NOTE)
    # Barycentrics of the baseline against the pipeline's surface points (convention check).
    cam = scorer.views[0][1]
    tri, w = vc.tri_bary(rast, cam, 2)
    s = rast.surface(cam, 2)
    v = torch.as_tensor(mesh.vertices, dtype=torch.float32, device=tri.device)
    xyz = torch.einsum("hwsk,hwskc->hwsc", w, v[torch.as_tensor(mesh.faces, device=tri.device).long()[tri.clamp_min(0)]])
    hit = (tri >= 0) & s.mask.to(tri.device)
    err = float((xyz - s.xyz.to(tri.device)).norm(dim=-1)[hit].max()) if hit.any() else 0.0
    size = float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]))
    if err > 1e-4 * size:
        notes.append(f"{label}: WARNING the vertex-colour rasterization differs from the pipeline's by {err:.3g}")
    return scorer.records, scorer.write_crops(out)


def summarise(records: list[dict]) -> list[dict]:
    """Mean over views per (scene, group, method), plus the group 'all' when there are several."""
    rows = []
    for scene in dict.fromkeys(r["scene"] for r in records):
        rs = [r for r in records if r["scene"] == scene]
        groups = list(dict.fromkeys(r["group"] for r in rs))
        for g in sorted(groups) + (["all"] if len(groups) > 1 else []):
            for method in dict.fromkeys(r["method"] for r in rs):
                sel = [r for r in rs if r["method"] == method and g in ("all", r["group"])]
                if not sel:
                    continue

                def mean(k: str) -> float | None:
                    vals = [r[k] for r in sel if r[k] is not None and math.isfinite(r[k])]
                    return float(np.mean(vals)) if vals and len(vals) == len(sel) else None
                rows.append({"scene": scene, "group": g, "views": len(sel), "method": method,
                             "psnr": mean("psnr"), "ssim": mean("ssim"), "lpips": mean("lpips"),
                             "train_s": sel[0]["train_s"], "render_ms": mean("render_ms")})
    return rows


def print_table(rows: list[dict]) -> None:
    def f(v, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)
    print(f"\nXScale-NVS quality benchmark -- {device_name()}")
    print(f"{'scene':14s} {'view group':11s} {'method':22s} {'PSNR':>7s} {'SSIM':>7s} {'LPIPS':>7s} "
          f"{'train s':>9s} {'render ms':>10s}")
    for r in rows:
        print(f"{r['scene'][:14]:14s} {r['group'] + ' (' + str(r['views']) + ')':11s} {r['method']:22s} "
              f"{f(r['psnr'], '.2f'):>7s} {f(r['ssim'], '.4f'):>7s} {f(r['lpips'], '.4f'):>7s} "
              f"{f(r['train_s'], '.1f'):>9s} {f(r['render_ms'], '.1f'):>10s}", flush=True)


def _clean(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for quality.json and crops_*.png")
    ap.add_argument("--scene", help="a real capture to add (MVSNet layout: images/, cams/, mesh)")
    ap.add_argument("--quick", action="store_true", help="fewer steps (about 4.5 minutes on one H100)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU-sized run without 3DGS")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "xscale_quality"),
                    help="scratch folder (scene, ray caches); the procedural scene is reused")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    for k in ("views", "width", "height", "ours_iters", "gs_steps", "vc_iters"):
        ap.add_argument("--" + k.replace("_", "-"), type=int, help="override the mode's value")
    a = ap.parse_args()
    mode = MODES["smoke" if a.smoke else "quick" if a.quick else "full"]
    mode = replace(mode, **{k: getattr(a, k) for k in ("views", "width", "height", "ours_iters", "gs_steps",
                                                          "vc_iters") if getattr(a, k) is not None})
    dev = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu")
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    events.set_stream(sys.stderr)
    notes: list[str] = [f"mode {mode.name}: {json.dumps(asdict(mode))}"]
    stages: dict[str, float] = {}
    t_all = time.perf_counter()

    gs_reason = gs.unavailable_reason() if dev.type == "cuda" else "no CUDA device (gsplat's rasterizer is CUDA only)"
    build = None
    if gs_reason is None and mode.gs_steps > 0:                 # compile while the scene is made
        build = gs.start_build(work / "gsplat_build.log")
    t0 = time.perf_counter()
    scenes = [("procedural", procedural_scene(work, mode))]
    stages["procedural scene"] = time.perf_counter() - t0
    log(f"procedural scene: {mode.views} views {mode.width}x{mode.height} in {stages['procedural scene']:.1f} s")
    if a.scene:
        scenes.append((Path(a.scene).resolve().name, Path(a.scene)))
    if build is not None:
        stages["gsplat CUDA build (not timed)"], gs_reason = gs.build_seconds(build, work / "gsplat_build.log")
        log(f"gsplat CUDA build: waited {stages['gsplat CUDA build (not timed)']:.1f} s"
            + (f"; {gs_reason}" if gs_reason else ""))

    records, crops = [], []
    for label, path in scenes:
        t0 = time.perf_counter()
        recs, files = run_scene(label, path, closeup_flags(path), mode, dev, gs_reason, work, out, notes)
        stages[f"scene {label}"] = time.perf_counter() - t0
        records += recs
        crops += files
    rows = summarise(records)
    stages["total"] = time.perf_counter() - t_all
    (out / "quality.json").write_text(json.dumps(_clean({
        "device": device_name(), "mode": asdict(mode), "rows": rows, "views": records, "notes": notes,
        "stages_s": stages, "crops": crops,
        "definitions": {"pixels": "held-out photo pixels whose 2x2 sub-samples and centre all hit the mesh",
                        "mean": "per-view metrics averaged over the views of the group",
                        "train_s": "photos and mesh on disk to a trained model, JIT builds excluded",
                        "render_ms": "one held-out frame, camera to image in host memory, after a warm-up"}}),
        indent=1))
    for n in notes:
        log(f"note: {n}")
    log("stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    log(f"wrote {out / 'quality.json'} and {len(crops)} crop images")
    print_table(rows)


if __name__ == "__main__":
    main()
