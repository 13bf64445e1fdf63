"""Quality benchmark: the hash featurized manifold against 3D Gaussian splatting (gsplat) and a
per-vertex-colour baseline, trained on the same photos and scored on the same views at the same
resolution, split into view groups.

    python benchmarks/bench_quality.py --out DIR [--scenes procedural,capture-sparse,capture-dense]
                                       [--scene PATH] [--quick | --smoke]

Scenes:
  procedural      the multi-scale procedural scene (orbit photos plus close-ups 8x nearer whose
                  texture is far finer than the mesh), clean PNG photos, the exact mesh; the
                  held-out photos are the reference. Groups: far, close, all.
  capture-sparse  backend.synthetic.capture: the same world photographed like a real capture
  capture-dense   (per-photo exposure and white balance, sensor noise, JPEG, ~0.3 px of pose
                  error, a simplified, displaced mesh with holes and floating blobs, occluders in
                  some photos); sparse: 16 photos (12 train), dense: 120 (105 train). Views are
                  scored at their TRUE cameras against the clean renderer (true mesh, no
                  occluder, neutral exposure, no noise or JPEG), never against the photo. Groups:
                  far and close (held-out photos), all (both), and "mag 1x/2x/4x/8x": a few
                  surface points seen from 1, 2, 4 and 8 times closer than the nearest training
                  photo that sees each point.
  --scene PATH    a real capture (MVSNet layout) is added: one group "all" unless it has a
                  views.json with close-up flags.
Methods: ours at the reference model settings with supersampling 2 (the pipeline's default),
also 1 on the procedural scene (--ours-ss changes both); 3DGS through gsplat, initialised from the
mesh vertices (CUDA only; skipped with a note otherwise); one colour per mesh vertex, fitted with
the same L1 loss at supersampling 2. Ours renders with the mean of its per-photo exposure codes;
the baselines have none.
Metrics (backend.metrics, sRGB in [0, 1]) on the pixels the pipeline's mesh fully covers in the
view (every 2x2 sub-sample and the pixel centre hit it) and, on capture scenes, that the true
surface fully covers (ground-truth alpha 1): the same pixels for every method, mean over views:
PSNR, SSIM, LPIPS (AlexNet) when its weights are on disk, and the speckle fraction (pixels whose
luma differs from their 3x3 median by more than 0.15), also of the reference itself ("ground
truth" rows). Train s: photos and mesh on disk to a trained model (ours: ray cache + training;
baselines: photo loading, rasterization/initialisation + fitting), one-time JIT builds excluded.
Render ms: one frame at full resolution, camera to image in host memory (mesh rasterization
included), mean over the views after a warm-up frame.

Modes:                 default (full)          --quick                 --smoke (CPU, no 3DGS)
  procedural scene     60 views 960x720        40 views 640x480        16 views 96x72
  capture-sparse       16 photos 1280x960      16 photos 960x720       16 photos 96x72
  capture-dense        120 photos 960x720      120 photos 640x480      48 photos 80x60
  default --scenes     all three               all three               capture-sparse
  ours                 30000 steps x 1.57M     1500 steps x 262,144    preset small, 80 x 1024
                       rays (reference)        rays
  3DGS                 30000 steps             7000 steps              skipped
  vertex colour        3000 steps x 1M px      1000 steps x 262,144    150 x 4096
Model settings of ours are the reference ones in every mode but --smoke (16 levels x 8 features,
2^22 entries). --quick on the procedural scene alone took about 4.5 minutes on one H100, of which
about 80 s is gsplat's first-time CUDA build (overlapped with making the scenes; cached for later
runs on the machine). Scenes are made once in --work and reused.
Outputs: DIR/quality.json; crop sheets DIR/crops_<scene>_*.png (procedural: close-up crops side
by side; capture scenes: one sheet per magnified point, rows 1x / 4x / 8x, columns ground truth |
the nearest photo resampled into the view | each method); the targets of the quality issue as
"target ..." lines; the table as the last lines of stdout.
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

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from backend import events  # noqa: E402
from backend.cache import build_cache, load_rgb8  # noqa: E402
from backend.cameras import Camera  # noqa: E402
from backend.checkpoint import load_model  # noqa: E402
from backend.meshio import load_mesh  # noqa: E402
from backend.synthetic.procedural import VIEWS_JSON, make_scene, pick_test_every  # noqa: E402
from backend.synthetic.capture import make_capture  # noqa: E402
from backend.synthetic.truth import load_truth  # noqa: E402
from backend.raster import Rasterizer  # noqa: E402
from backend.render import render_srgb  # noqa: E402
from backend.runfolder import RunFolder  # noqa: E402
from backend.scene import load_scene  # noqa: E402
from backend.config import TrainConfig  # noqa: E402
from backend.train import train  # noqa: E402
from baselines import gsplat_baseline as gs  # noqa: E402
from baselines import vertex_colour as vc  # noqa: E402
from common import device_name, sync  # noqa: E402
from quality_report import check_targets, print_table, print_targets, summarise  # noqa: E402
from quality_scoring import GS, VC, VC_SS, Scorer, Sheet, capture_sheets, capture_views, log, photo_views  # noqa: E402

SCENES = ("procedural", "capture-sparse", "capture-dense")
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
    sparse: tuple[int, int, int] = (16, 960, 720)     # capture-sparse: photos, width, height
    dense: tuple[int, int, int] = (120, 640, 480)     # capture-dense
    capture_ss_ref: int = 2                           # sub-samples per pixel side of capture renders
    scenes: str = ",".join(SCENES)                    # default --scenes


MODES = {
    "full": Mode("full", 60, 960, 720, 4, "reference", 30000, None, 30000, 3000, 1 << 20,
                 (16, 1280, 960), (120, 960, 720)),
    "quick": Mode("quick", 40, 640, 480, 3, "reference", 1500, 1 << 18, 7000, 1000, 1 << 18,
                  (16, 960, 720), (120, 640, 480)),
    "smoke": Mode("smoke", 16, 96, 72, 2, "small", 80, 1024, 0, 150, 4096,
                  (16, 96, 72), (48, 80, 60), scenes="capture-sparse"),
}


def procedural_scene(work: Path, mode: Mode) -> Path:
    """The multi-scale procedural scene, reused when a previous run made the same one."""
    return make_scene(work / "procedural", mode.views, mode.width, mode.height, ss_ref=mode.ss_ref, seed=0,
                      layout="multiscale", workers=os.cpu_count() or 1, reuse=True)


def capture_scene(work: Path, mode: Mode, variant: str) -> Path:
    """A capture scene (backend.synthetic.capture), reused when a previous run made the same one."""
    n, w, h = getattr(mode, variant)
    return make_capture(work / f"capture-{variant}", variant, n, w, h, ss_ref=mode.capture_ss_ref, seed=0,
                        workers=os.cpu_count() or 1, reuse=True)


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


def run_scene(label: str, scene: Path, mode: Mode, dev: torch.device, gs_reason: str | None, work: Path,
              out: Path, notes: list[str], ours_ss: tuple[int, ...] = (1, 2)) -> tuple[list[dict], list[str]]:
    truth = load_truth(scene)
    flags = closeup_flags(scene)
    n = len(load_scene(scene).views)
    te = truth.test_every if truth else pick_test_every(flags) if flags else 8
    groups = ["close" if c else "far" for c in flags] if flags else ["all"] * n
    runs = {ss: work / label / f"ours_ss{ss}" for ss in ours_ss}
    device = dev.type
    # One-time builds (nvdiffrast, Triton) outside every timing.
    mesh = load_mesh(load_scene(scene).mesh_path)
    rast = Rasterizer(mesh, dev)
    if dev.type == "cuda":
        warm_up_ours(mesh, dev)

    scorer = None
    overrides = {"batch_rays": mode.ours_batch} if mode.ours_batch else {}
    for ss in ours_ss:
        t0 = time.perf_counter()
        cfg = build_cache(str(scene), str(runs[ss]), ss=ss, test_every=te, device=device, overwrite=True)
        train(str(runs[ss]), iters=mode.ours_iters, device=device, preset=mode.ours_preset, overrides=overrides,
              overwrite=True)
        sync()
        train_s = time.perf_counter() - t0
        if scorer is None:
            if truth is not None:
                held = [cfg["views"][i]["name"] for i in cfg["test_views"]]
                if held != [v.name for v in truth.heldout]:
                    raise RuntimeError(f"{label}: held-out photos {held} are not those of the ground truth")
                views, sheets = capture_views(truth, rast), capture_sheets(label, truth)
            else:
                views = photo_views(cfg, groups, rast)
                close = [v.name for v in views if v.group == "close"]
                sheets = [Sheet(f"crops_{label}_{name}", [("", name)])
                          for name in (close[:3] if close else [v.name for v in views[:2]])]
            scorer = Scorer(label, views, sheets, dev)
            log(f"{label}: {n} views, {len(cfg['test_views'])} held out (every {te}th from {te // 2}); scored: "
                + ", ".join(f"{g} {sum(v.group == g for v in views)}" for g in dict.fromkeys(v.group for v in views)))
        model, _ = load_model(RunFolder(runs[ss]), dev)
        scorer.score(f"ours (ss={ss})", lambda c, m=model, s=ss: render_srgb(m, rast, c, s)[0], train_s)
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
            scorer.score(GS, lambda c: gs.render(splats, c, gcfg.sh_degree, gcfg)[0], train_s)
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
    scorer.score(VC, lambda c: vc.render(vmodel, rast, c, VC_SS)[0], train_s)
    if not scorer.lpips_ok and LPIPS_NOTE not in notes:
        notes.append(LPIPS_NOTE)
    # Barycentrics of the baseline against the pipeline's surface points (convention check).
    cam = scorer.views[0].cam
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


def _clean(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def _size(text: str) -> tuple[int, int, int]:
    n, w, h = (int(v) for v in text.lower().split("x"))
    return n, w, h


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for quality.json and crops_*.png")
    ap.add_argument("--scenes", help=f"comma-separated, from {', '.join(SCENES)} (default: the mode's)")
    ap.add_argument("--scene", help="a real capture to add (MVSNet layout: images/, cams/, mesh)")
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU-sized run without 3DGS")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "xscale_quality"),
                    help="scratch folder (scenes, ray caches); scenes are reused")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--ours-ss", help="supersampling of ours, e.g. 1,2 (default: 1,2 on the procedural "
                                      "scene, 2 elsewhere)")
    for k in ("views", "width", "height", "ours_iters", "gs_steps", "vc_iters"):
        ap.add_argument("--" + k.replace("_", "-"), type=int, help="override the mode's value (views, width "
                        "and height: the procedural scene)")
    for k in ("sparse", "dense"):
        ap.add_argument(f"--{k}", type=_size, metavar="NxWxH", help=f"capture-{k}: photos and size")
    a = ap.parse_args()
    mode = MODES["smoke" if a.smoke else "quick" if a.quick else "full"]
    mode = replace(mode, **{k: getattr(a, k) for k in ("views", "width", "height", "ours_iters", "gs_steps",
                                                          "vc_iters", "sparse", "dense") if getattr(a, k) is not None})
    wanted = [s.strip() for s in (a.scenes or mode.scenes).split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SCENES]
    if unknown:
        ap.error(f"--scenes: unknown {', '.join(unknown)}; choose from {', '.join(SCENES)}")
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
    if gs_reason is None and mode.gs_steps > 0:                 # compile while the scenes are made
        build = gs.start_build(work / "gsplat_build.log")
    scenes = []
    for label in wanted:
        t0 = time.perf_counter()
        if label == "procedural":
            scenes.append((label, procedural_scene(work, mode)))
            size = f"{mode.views} views {mode.width}x{mode.height}"
        else:
            variant = label.split("-", 1)[1]
            scenes.append((label, capture_scene(work, mode, variant)))
            n, w, h = getattr(mode, variant)
            size = f"{n} photos {w}x{h}"
        stages[f"{label} scene"] = time.perf_counter() - t0
        log(f"{label} scene: {size} in {stages[f'{label} scene']:.1f} s (reused if made before)")
    if a.scene:
        scenes.append((Path(a.scene).resolve().name, Path(a.scene)))
    if build is not None:
        stages["gsplat CUDA build (not timed)"], gs_reason = gs.build_seconds(build, work / "gsplat_build.log")
        log(f"gsplat CUDA build: waited {stages['gsplat CUDA build (not timed)']:.1f} s"
            + (f"; {gs_reason}" if gs_reason else ""))

    records, crops = [], []
    for label, path in scenes:
        ss = tuple(int(v) for v in a.ours_ss.split(",")) if a.ours_ss else (1, 2) if label == "procedural" else (2,)
        t0 = time.perf_counter()
        recs, files = run_scene(label, path, mode, dev, gs_reason, work, out, notes, ss)
        stages[f"scene {label}"] = time.perf_counter() - t0
        records += recs
        crops += files
    rows = summarise(records)
    targets = check_targets(rows)
    stages["total"] = time.perf_counter() - t_all
    (out / "quality.json").write_text(json.dumps(_clean({
        "device": device_name(), "mode": asdict(mode), "rows": rows, "targets": targets, "views": records,
        "notes": notes, "stages_s": stages, "crops": crops,
        "definitions": {
            "pixels": "pixels whose 2x2 sub-samples and centre all hit the pipeline's mesh (capture scenes: "
                      "and that the true surface fully covers)",
            "reference": "procedural: the held-out photo; capture scenes: the clean render at the true camera",
            "mean": "per-view metrics averaged over the views of the group; 'all' = the held-out photos",
            "magnified": "mag Fx: a surface point seen from F times closer than the nearest training photo "
                         "that sees it, the photos' intrinsics",
            "speckle": "fraction of scored pixels whose Rec. 709 luma differs from the median of their 3x3 "
                       "window (scored pixels only) by more than 0.15",
            "train_s": "photos and mesh on disk to a trained model, JIT builds excluded",
            "render_ms": "one frame, camera to image in host memory, after a warm-up"}}),
        indent=1))
    for n in notes:
        log(f"note: {n}")
    log("stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    log(f"wrote {out / 'quality.json'} and {len(crops)} crop images")
    print_targets(targets)
    print_table(rows)


if __name__ == "__main__":
    main()
