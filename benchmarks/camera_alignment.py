"""Cameras recovered by structure from motion against the true ones: structure from motion picks
its own frame (position, rotation and scale), so the recovered camera centres are first carried
onto the true ones by the best similarity, then each camera's rotation and centre are compared.
Used by bench_photos.py and tests/test_prepare_photos.py."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.prepare.colmap import qvec_to_rotmat, read_model


@dataclass
class Similarity:
    """x -> s R x + t."""
    s: float
    R: np.ndarray
    t: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        return self.s * np.asarray(x, np.float64) @ self.R.T + self.t

    def inverse(self) -> Similarity:
        return Similarity(1.0 / self.s, self.R.T, -self.R.T @ self.t / self.s)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> Similarity:
    """The similarity minimising |dst - (s R src + t)|^2 (Umeyama's closed form)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    R = u @ d @ vt
    s = float(np.trace(np.diag(sig) @ d) / (a ** 2).sum(1).mean())
    return Similarity(s, R, mu_d - s * R @ mu_s)


def fit_similarity_robust(src: np.ndarray, dst: np.ndarray, passes: int = 2) -> Similarity:
    """fit_similarity on the points it carries well: refitted without those whose residual is over 3
    times the median (a camera structure from motion placed wrongly would otherwise move every other
    camera's alignment, and a mesh carried by it lands pixels off in all of them)."""
    sim = fit_similarity(src, dst)
    for _ in range(passes):
        r = np.linalg.norm(sim.apply(src) - dst, axis=1)
        keep = r <= 3 * max(float(np.median(r)), 1e-12)
        if keep.sum() < 3 or keep.all():
            break
        sim = fit_similarity(src[keep], dst[keep])
    return sim


def recovered_cameras(model_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """photo name -> (world-to-camera rotation, camera centre) of a COLMAP model."""
    _, images = read_model(Path(model_dir))
    out = {}
    for im in images.values():
        R = qvec_to_rotmat(im.qvec)
        out[im.name] = (R, -R.T @ im.tvec)
    return out


@dataclass
class CameraErrors:
    to_truth: Similarity          # recovered frame -> true frame
    rotation_deg: dict[str, float]
    centre: dict[str, float]      # in true-world units


def camera_errors(recovered: dict[str, tuple[np.ndarray, np.ndarray]],
                  truth: dict[str, tuple[np.ndarray, np.ndarray]]) -> CameraErrors:
    """Errors of the cameras both hold (name -> (world-to-camera R, centre)), after carrying the
    recovered centres onto the true ones (fit_similarity_robust: a wrong camera shows as itself)."""
    names = sorted(set(recovered) & set(truth))
    sim = fit_similarity_robust(np.array([recovered[n][1] for n in names]), np.array([truth[n][1] for n in names]))
    centre = {n: float(np.linalg.norm(sim.apply(recovered[n][1]) - truth[n][1])) for n in names}
    # camera n in the true frame has the rotation R_rec R_sim^T, to be compared with the true one
    rotation = {n: math.degrees(math.acos(np.clip((np.trace(recovered[n][0] @ sim.R.T @ truth[n][0].T) - 1) / 2,
                                                  -1, 1)))
                for n in names}
    return CameraErrors(sim, rotation, centre)
