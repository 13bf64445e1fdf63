"""3D Gaussian splatting baseline through the `gsplat` package (>= 1.0; CUDA only, its kernels
are compiled on first use), with gsplat's standard recipe (its examples/simple_trainer.py
defaults): one photo per step, loss 0.8 * L1 + 0.2 * (1 - SSIM), SH degree 3 with one more band
every 1000 steps, Adam (eps 1e-15) with learning rates means 1.6e-4 * scene scale (decaying
exponentially to 1 % at the last step), scales 5e-3, quats 1e-3, opacities 5e-2, SH DC 2.5e-3,
higher SH 2.5e-3 / 20, densification by gsplat.DefaultStrategy with its defaults, initial opacity
0.1, initial scale the RMS distance to the 3 nearest neighbours, random rotations. The scene
scale is the largest distance of a training camera from their mean, times 1.1.

Differences, all forced by the comparison: the Gaussians start at the mesh vertices (the only
geometry the other methods get; colours: the mean photo colour where each vertex is visible),
not at SfM points; and the loss only counts the pixels the mesh covers (as simple_trainer does
with masks: L1 over the mask, SSIM with uncovered pixels zeroed in both images), since every
method is trained and scored on the same pixels.

Cameras need no conversion: gsplat takes world-to-camera matrices in OpenCV axes and K in
continuous pixel coordinates with pixel (i, j) sampled at (i + 0.5, j + 0.5), the convention
of backend.cameras.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backend.cameras import Camera
from backend.meshio import Mesh
from backend.metrics import ssim_map
from backend.raster import Rasterizer

SH_C0 = 0.28209479177387814
GSPLAT_VERSION = "1.5.3"


@dataclass
class GSConfig:
    steps: int = 30_000
    sh_degree: int = 3
    sh_degree_interval: int = 1000
    init_opacity: float = 0.1
    init_scale: float = 1.0
    ssim_lambda: float = 0.2
    means_lr: float = 1.6e-4
    scales_lr: float = 5e-3
    quats_lr: float = 1e-3
    opacities_lr: float = 5e-2
    sh0_lr: float = 2.5e-3
    shN_lr: float = 2.5e-3 / 20
    near_plane: float = 0.01
    far_plane: float = 1e10
    max_init_points: int = 1_000_000   # random subset of the vertices beyond this
    seed: int = 42


@dataclass
class TrainView:
    cam: Camera
    rgb: np.ndarray     # (H, W, 3) uint8 sRGB photo
    mask: np.ndarray    # (H, W) bool, pixels the mesh covers


def unavailable_reason() -> str | None:
    """None when gsplat can run here, else one line saying why not."""
    if not torch.cuda.is_available():
        return "no CUDA device (gsplat's rasterizer is CUDA only)"
    try:
        import gsplat  # noqa: F401  (the import itself compiles nothing)
    except ImportError as e:
        return f"the gsplat package is not installed (pip install gsplat=={GSPLAT_VERSION}): {e}"
    return None


def start_build(log_path: Path) -> subprocess.Popen:
    """Compile gsplat's CUDA extension in a child process (minutes, the first time on a machine);
    a later import in this process loads the cached build."""
    env = dict(os.environ)
    if torch.cuda.is_available() and "TORCH_CUDA_ARCH_LIST" not in env:
        env["TORCH_CUDA_ARCH_LIST"] = "%d.%d" % torch.cuda.get_device_capability()
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    code = "import sys; from gsplat.cuda._backend import _C; sys.exit(0 if _C is not None else 3)"
    with open(log_path, "w") as log:          # the child keeps its own copy of the handle
        return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def rgb_to_sh_dc(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(sh: torch.Tensor) -> torch.Tensor:
    return sh * SH_C0 + 0.5


def mean_knn_distance(pts: torch.Tensor, k: int = 3, chunk: int = 0) -> torch.Tensor:
    """RMS distance of every point to its k nearest other points (N,), in chunks of rows."""
    n = len(pts)
    chunk = chunk or max(1, (1 << 27) // max(n, 1))
    out = []
    for i in range(0, n, chunk):
        d2 = torch.cdist(pts[i:i + chunk], pts).pow(2)
        d2 = d2.topk(min(k + 1, n), dim=1, largest=False).values[:, 1:]   # drop the point itself
        out.append(d2.mean(1).sqrt())
    return torch.cat(out)


@torch.no_grad()
def vertex_photo_colours(points: np.ndarray, views: list[TrainView], rast: Rasterizer) -> np.ndarray:
    """Mean sRGB photo colour (N, 3) in [0, 1] of each point over the views where it is visible
    (its projection lands on the mesh at its own depth); 0.5 where never seen."""
    acc = np.zeros((len(points), 3))
    cnt = np.zeros(len(points))
    for v in views:
        depth = rast.surface(v.cam, 1).depth.cpu().numpy()
        uv, z = v.cam.project(points)
        i, j = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        ok = (z > 0) & (i >= 0) & (j >= 0) & (i < v.cam.width) & (j < v.cam.height)
        ok[ok] &= np.abs(depth[j[ok], i[ok]] - z[ok]) < 0.01 * z[ok]
        acc[ok] += v.rgb[j[ok], i[ok]] / 255.0
        cnt[ok] += 1
    return np.where(cnt[:, None] > 0, acc / np.maximum(cnt, 1)[:, None], 0.5)


def _camera_tensors(cam: Camera, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    viewmat = torch.as_tensor(cam.world_to_camera, dtype=torch.float32, device=dev)[None]
    K = torch.as_tensor(cam.K, dtype=torch.float32, device=dev)[None]
    return viewmat, K


def _rasterize(splats, cam: Camera, sh_degree: int, cfg: GSConfig):
    from gsplat import rasterization
    viewmat, K = _camera_tensors(cam, splats["means"].device)
    return rasterization(
        means=splats["means"], quats=splats["quats"], scales=torch.exp(splats["scales"]),
        opacities=torch.sigmoid(splats["opacities"]),
        colors=torch.cat([splats["sh0"], splats["shN"]], 1), viewmats=viewmat, Ks=K,
        width=cam.width, height=cam.height, sh_degree=sh_degree, packed=False,
        near_plane=cfg.near_plane, far_plane=cfg.far_plane)


def init_splats(mesh: Mesh, views: list[TrainView], cfg: GSConfig, dev: torch.device,
                rast: Rasterizer) -> torch.nn.ParameterDict:
    pts = mesh.vertices.astype(np.float64)
    rng = np.random.default_rng(cfg.seed)
    if len(pts) > cfg.max_init_points:
        pts = pts[np.sort(rng.choice(len(pts), cfg.max_init_points, replace=False))]
    rgb = torch.as_tensor(vertex_photo_colours(pts, views, rast), dtype=torch.float32, device=dev)
    means = torch.as_tensor(pts, dtype=torch.float32, device=dev)
    dist = mean_knn_distance(means).clamp_min(1e-7)
    n = len(means)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    sh = torch.zeros(n, (cfg.sh_degree + 1) ** 2, 3, device=dev)
    sh[:, 0] = rgb_to_sh_dc(rgb)
    return torch.nn.ParameterDict({
        "means": means,
        "scales": torch.log(dist * cfg.init_scale)[:, None].repeat(1, 3),
        "quats": torch.rand(n, 4, device=dev, generator=gen),
        "opacities": torch.logit(torch.full((n,), cfg.init_opacity, device=dev)),
        "sh0": sh[:, :1].contiguous(),
        "shN": sh[:, 1:].contiguous(),
    })


def train(mesh: Mesh, views: list[TrainView], cfg: GSConfig, dev: torch.device, rast: Rasterizer,
          progress=None) -> tuple[torch.nn.ParameterDict, dict]:
    """Fit Gaussians to the training views; returns the parameters and a summary."""
    from gsplat import DefaultStrategy
    torch.manual_seed(cfg.seed)
    splats = init_splats(mesh, views, cfg, dev, rast)
    n_init = len(splats["means"])
    centres = np.stack([v.cam.center for v in views])
    scene_scale = float(np.linalg.norm(centres - centres.mean(0), axis=1).max()) * 1.1
    lrs = {"means": cfg.means_lr * scene_scale, "scales": cfg.scales_lr, "quats": cfg.quats_lr,
           "opacities": cfg.opacities_lr, "sh0": cfg.sh0_lr, "shN": cfg.shN_lr}
    opts = {k: torch.optim.Adam([{"params": splats[k], "lr": lr, "name": k}], eps=1e-15,
                                fused=dev.type == "cuda") for k, lr in lrs.items()}
    sched = torch.optim.lr_scheduler.ExponentialLR(opts["means"], 0.01 ** (1.0 / cfg.steps))
    strategy = DefaultStrategy()
    strategy.check_sanity(splats, opts)
    state = strategy.initialize_state(scene_scale=scene_scale)
    # Photos stay on the GPU as uint8 while they fit in 4 GiB, else on the host.
    on_dev = sum(v.rgb.nbytes for v in views) < 4 << 30
    store = dev if on_dev else torch.device("cpu")
    imgs = [torch.from_numpy(v.rgb).to(store) for v in views]
    masks = [torch.from_numpy(v.mask).to(store) for v in views]
    rng = np.random.default_rng(cfg.seed)
    order: list[int] = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        if not order:
            order = list(rng.permutation(len(views)))
        k = order.pop()
        gt = imgs[k].to(dev, non_blocking=True).float() / 255.0
        m = masks[k].to(dev, non_blocking=True)
        sh_deg = min(step // cfg.sh_degree_interval, cfg.sh_degree)
        renders, _alphas, info = _rasterize(splats, views[k].cam, sh_deg, cfg)
        strategy.step_pre_backward(splats, opts, state, step, info)
        pred = renders[0]
        l1 = (pred - gt).abs()[m].mean()
        mf = m[..., None].float()
        s, _ = ssim_map(pred * mf, gt * mf)
        loss = torch.lerp(l1, 1.0 - s.mean(), cfg.ssim_lambda)
        loss.backward()
        for o in opts.values():
            o.step()
            o.zero_grad(set_to_none=True)
        sched.step()
        strategy.step_post_backward(splats, opts, state, step, info, packed=False)
        if progress is not None and (step + 1) % 500 == 0:
            progress(step + 1, loss.item(), len(splats["means"]), time.perf_counter() - t0)
    return splats, {"steps": cfg.steps, "init_points": n_init, "n_gaussians": len(splats["means"]),
                    "scene_scale": scene_scale}


@torch.no_grad()
def render(splats, cam: Camera, sh_degree: int, cfg: GSConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sRGB (H, W, 3) clipped to [0, 1], alpha (H, W)) float32 on a black background."""
    rgb, alpha, _ = _rasterize(splats, cam, sh_degree, cfg or GSConfig())
    return rgb[0].clamp(0, 1).cpu().numpy(), alpha[0, ..., 0].cpu().numpy()


def build_seconds(proc: subprocess.Popen, log_path: Path) -> tuple[float, str | None]:
    """Wait for start_build's child; (seconds waited, None or the reason it failed)."""
    t0 = time.perf_counter()
    rc = proc.wait()
    if rc == 0:
        return time.perf_counter() - t0, None
    tail = Path(log_path).read_text(errors="replace").strip().splitlines()[-3:]
    return time.perf_counter() - t0, f"gsplat's CUDA build failed (exit {rc}): {' | '.join(tail)}"

