"""What the camera's sensor and encoder do to a capture's photo: per-photo exposure, white balance,
ISO and JPEG quality; shot and read noise in linear light; JPEG encoding with chroma subsampling."""
from __future__ import annotations

import io
import math

import numpy as np

from .capture_settings import CaptureParams


def photometric_params(n: int, train: np.ndarray, p: CaptureParams, rng: np.random.Generator) -> dict:
    """Per-photo exposure (EV), white-balance gains (n, 3), ISO and JPEG quality. Exposure and
    the log white-balance gains have mean 0 over the training photos."""
    ev = rng.uniform(-p.exposure_ev, p.exposure_ev, n)
    ev -= ev[train].mean()
    logwb = np.zeros((n, 3))
    logwb[:, [0, 2]] = rng.normal(0.0, p.wb_sigma, (n, 2))
    logwb -= logwb[train].mean(0)
    iso = np.exp(rng.uniform(math.log(p.iso[0]), math.log(p.iso[1]), n))
    quality = rng.integers(p.jpeg_quality[0], p.jpeg_quality[1] + 1, n)
    return {"ev": ev, "wb": np.exp(logwb), "iso": iso, "quality": quality}


def sensor(linear: np.ndarray, ev: float, wb: np.ndarray, iso: float, p: CaptureParams,
           rng: np.random.Generator) -> np.ndarray:
    """Exposure and white balance in linear light, then shot + read noise (Gaussian with the
    Poisson variance), clipped to the sensor's range [0, 1]: linear (H, W, 3) float32."""
    full = p.full_well_e * 100.0 / iso                          # electrons at linear 1.0
    x = np.asarray(linear, np.float64) * (2.0 ** ev) * np.asarray(wb)
    sigma = np.sqrt(np.maximum(x, 0.0) / full + (p.read_noise_e / full) ** 2)
    return np.clip(x + sigma * rng.standard_normal(x.shape), 0.0, 1.0).astype(np.float32)


def noise_sigma(linear: np.ndarray, iso: float, p: CaptureParams) -> np.ndarray:
    """Standard deviation of the sensor noise at exposed linear values (for tests and notes)."""
    full = p.full_well_e * 100.0 / iso
    return np.sqrt(np.maximum(linear, 0.0) / full + (p.read_noise_e / full) ** 2)


JPEG_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


def jpeg_bytes(srgb8: np.ndarray, quality: int, subsampling: str = "4:2:0") -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(srgb8).save(buf, "JPEG", quality=int(quality), subsampling=JPEG_SUBSAMPLING[subsampling])
    return buf.getvalue()
