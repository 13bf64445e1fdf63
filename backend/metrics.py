"""Image quality metrics over the pixels the mesh covers (torch; numpy inputs accepted).

Images are (H, W, 3) with values in [0, 1] (sRGB, as the photos are stored); masks are (H, W)
booleans, None meaning every pixel. Pixels the mesh does not cover have no prediction, so they
never count.

SSIM definition used here (documented because masked SSIM has no single standard form):
  1. uncovered pixels of both images are set to 0;
  2. the standard SSIM map (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01,
     K2 0.03, data range 1) is computed per channel with "valid" filtering, i.e. only at pixels
     whose whole window lies inside the image (as the reference MATLAB code and most NVS
     evaluations do), and averaged over the three channels;
  3. the map is averaged over the covered pixels where it is defined.
With a full mask this is the usual full-image SSIM. Windows that straddle the mask boundary
see the zeroed pixels in both images alike, so identical images still score exactly 1.

Speckle fraction (speckle_fraction; no reference image): the fraction of covered pixels whose
luma (Rec. 709 weights on the sRGB values) differs from the median luma of their 3x3
neighbourhood by more than 0.15, the median taken over the covered pixels of the window only
(see median3x3). It counts isolated outliers, e.g. the grain of an under-trained hash grid on a
magnified view; compare it with the same measure on the ground truth.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def _tensor(x, device=None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))
    if not t.is_floating_point():
        t = t.float()
    return t.to(device) if device is not None else t


def _inputs(pred, gt, mask):
    p = _tensor(pred)
    g = _tensor(gt, p.device)
    dtype = torch.float64 if torch.float64 in (p.dtype, g.dtype) else torch.float32
    p, g = p.to(dtype), g.to(dtype)
    if p.shape != g.shape or p.ndim != 3:
        raise ValueError(f"images must share an (H, W, C) shape, got {tuple(p.shape)} and {tuple(g.shape)}")
    m = torch.ones(p.shape[:2], dtype=torch.bool, device=p.device) if mask is None \
        else _tensor(mask, p.device).to(torch.bool)
    if m.shape != p.shape[:2]:
        raise ValueError(f"mask shape {tuple(m.shape)} does not match image {tuple(p.shape[:2])}")
    return p, g, m


@torch.no_grad()
def psnr(pred, gt, mask=None) -> float:
    """PSNR in dB (peak 1) of the mean squared error over covered pixels and channels.
    inf for identical images, nan when the mask is empty."""
    p, g, m = _inputs(pred, gt, mask)
    n = int(m.sum())
    if n == 0:
        return float("nan")
    mse = float(((p - g) ** 2)[m].double().mean())
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def _gauss(dtype, device) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-x ** 2 / (2 * SSIM_SIGMA ** 2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim_map(pred, gt, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM map on the valid region, shape (H - 10, W - 10), channel-averaged, and the mask
    cropped to the same region. See the module docstring for the definition."""
    p, g, m = _inputs(pred, gt, mask)
    H, W, C = p.shape
    if H < SSIM_WINDOW or W < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {W}x{H}")
    keep = m[..., None].to(p.dtype)
    x = (p * keep).permute(2, 0, 1)[:, None]                  # (C, 1, H, W)
    y = (g * keep).permute(2, 0, 1)[:, None]
    k = _gauss(p.dtype, p.device)

    def blur(z: torch.Tensor) -> torch.Tensor:                 # separable valid Gaussian filter
        z = F.conv2d(z, k.view(1, 1, 1, -1))
        return F.conv2d(z, k.view(1, 1, -1, 1))

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    r = SSIM_WINDOW // 2
    return s[:, 0].mean(0), m[r:H - r, r:W - r]


@torch.no_grad()
def ssim(pred, gt, mask=None) -> float:
    """Masked SSIM (module docstring); nan when no covered pixel has a full window."""
    s, m = ssim_map(pred, gt, mask)
    if not bool(m.any()):
        return float("nan")
    return float(s[m].double().mean())


SPECKLE_THRESHOLD = 0.15
LUMA_709 = (0.2126, 0.7152, 0.0722)


def luma(img) -> np.ndarray:
    """Rec. 709 luma of an (H, W, 3) image, computed on the values as given (sRGB in [0, 1])."""
    a = np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img, np.float64)
    return a[..., :3] @ np.array(LUMA_709)


def median3x3(y: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per pixel, the median of `y` over the covered pixels of its 3x3 window (the pixel itself
    included; pixels outside the image or not covered are left out; with an even number of
    values, the mean of the two middle ones). nan at uncovered pixels."""
    H, W = y.shape
    m = np.ones((H, W), bool) if mask is None else np.asarray(mask, bool)
    pad = np.full((H + 2, W + 2), np.nan)
    pad[1:-1, 1:-1] = np.where(m, y, np.nan)
    win = np.stack([pad[dy:dy + H, dx:dx + W] for dy in range(3) for dx in range(3)], -1)
    win = np.sort(win, -1)                                      # nan (left out) sorts last
    n = np.maximum((~np.isnan(win)).sum(-1), 1)
    lo = np.take_along_axis(win, ((n - 1) // 2)[..., None], -1)[..., 0]
    hi = np.take_along_axis(win, (n // 2)[..., None], -1)[..., 0]
    return np.where(m, (lo + hi) / 2, np.nan)


def speckle_fraction(img, mask=None, threshold: float = SPECKLE_THRESHOLD) -> float:
    """Fraction of covered pixels whose luma (luma()) differs from the median of their 3x3
    window (median3x3: over covered pixels only, image borders and uncovered pixels left out)
    by more than `threshold`. Isolated outliers count one each; so does any feature that a 3x3
    median removes (one-pixel lines, 2x2 dots, the corner pixel of a sharp convex corner).
    nan when nothing is covered."""
    y = luma(img)
    m = np.ones(y.shape, bool) if mask is None else np.asarray(
        mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, bool)
    if m.shape != y.shape:
        raise ValueError(f"mask shape {m.shape} does not match image {y.shape}")
    n = int(m.sum())
    if n == 0:
        return float("nan")
    med = median3x3(y, m)
    return float((np.abs(y - med)[m] > threshold).sum() / n)


_lpips_model = None


def _alexnet_weights_cached() -> bool:
    """True when torchvision's AlexNet weights (LPIPS's backbone) are already on disk: the lpips
    package would otherwise download them, and metrics must never reach the network."""
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    return any(ckpt.glob("alexnet-*.pth"))


@torch.no_grad()
def lpips_or_none(pred, gt) -> float | None:
    """LPIPS (AlexNet) of two (H, W, 3) images in [0, 1], or None when the `lpips` package or
    its weights are not available offline (nothing is downloaded)."""
    global _lpips_model
    if _lpips_model is None:
        if importlib.util.find_spec("lpips") is None or not _alexnet_weights_cached():
            return None
        try:
            import lpips
            _lpips_model = lpips.LPIPS(net="alex", verbose=False).eval()
        except Exception:                                       # broken install: no metric, no crash
            return None
    p, g, _ = _inputs(pred, gt, None)
    dev = next(_lpips_model.parameters()).device

    def nchw(z: torch.Tensor) -> torch.Tensor:                 # lpips wants (1, 3, H, W) in [-1, 1]
        return (z.float().permute(2, 0, 1)[None] * 2 - 1).to(dev)
    return float(_lpips_model(nchw(p), nchw(g)).mean())
