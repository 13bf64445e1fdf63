"""Shared helpers of the undistortion tests (test_prepare_undistort*.py): OpenCV as the independent
reference for COLMAP's lens models, a COLMAP workspace of given photos, and the measurement of the
prepared photos (camera, photo and valid pixels; dot centroids); photos of dots at known points
(also used by the capture-format tests, test_prepare_nerfstudio.py and test_prepare_realityscan.py)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from backend.cameras import Camera, read_mvsnet_cam
from backend.meshio import write_ply
from helpers import grid_plane, rotmat_to_qvec

W, H = 160, 120      # the test photos' size


def opencv_K(fx, fy, cx, cy):
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def opencv_project(Xc: np.ndarray, K, dist) -> np.ndarray:
    """OpenCV's projection of camera-space points. COLMAP's models are OpenCV's formulas; K holds
    COLMAP's (continuous-convention) principal point, so the result is in that convention too."""
    uv, _ = cv2.projectPoints(Xc.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K, np.asarray(dist, float))
    return uv[:, 0]


def opencv_undistort(uv: np.ndarray, K, dist) -> np.ndarray:
    """Source pixels -> normalised undistorted coordinates, iterated to convergence."""
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-14)
    xy = cv2.undistortPointsIter(uv.reshape(-1, 1, 2).astype(np.float64), K, np.asarray(dist, float),
                                 None, None, crit)
    return xy[:, 0]

def colmap_workspace(root: Path, camera_line: str, images: dict[str, tuple[np.ndarray, np.ndarray]],
                     mesh=None) -> Path:
    """COLMAP workspace: images/NAME.png, sparse/0/{cameras,images}.txt (one camera), a mesh.
    images: name -> (photo uint8, world_to_camera)."""
    (root / "images").mkdir(parents=True)
    (root / "sparse" / "0").mkdir(parents=True)
    (root / "sparse" / "0" / "cameras.txt").write_text(f"1 {camera_line}\n")
    lines = []
    for i, (name, (img, E)) in enumerate(sorted(images.items()), 1):
        Image.fromarray(img).save(root / "images" / name)
        q = rotmat_to_qvec(E[:3, :3])
        lines.append(f"{i} {' '.join(repr(float(v)) for v in q)} {' '.join(repr(float(v)) for v in E[:3, 3])} "
                     f"1 {name}\n")
    (root / "sparse" / "0" / "images.txt").write_text("\n".join(lines) + "\n")
    write_ply(root / "meshed-poisson.ply", mesh if mesh is not None else grid_plane(4, 3.0))
    return root

def centroid(img: np.ndarray, uv: np.ndarray, valid: np.ndarray | None = None, r: int = 7,
             bg: float | None = 0.9) -> np.ndarray:
    """Darkness-weighted centroids (continuous coords) of dots near the positions uv; NaN where
    the window leaves the image or touches an invalid pixel. bg=None fits the background as a
    plane through the window's border. Darkness within 4/255 of the background does not count:
    8-bit rounding there would add ~0.02 px of noise per dot."""
    g = img.astype(np.float64).mean(-1) / 255 if img.ndim == 3 else img.astype(np.float64) / 255
    out = np.full((len(uv), 2), np.nan)
    for n, (u, v) in enumerate(uv):
        i0, j0 = int(np.floor(u)) - r, int(np.floor(v)) - r
        if i0 < 0 or j0 < 0 or i0 + 2 * r + 1 > g.shape[1] or j0 + 2 * r + 1 > g.shape[0]:
            continue
        win = g[j0:j0 + 2 * r + 1, i0:i0 + 2 * r + 1]
        if valid is not None and not valid[j0:j0 + 2 * r + 1, i0:i0 + 2 * r + 1].all():
            continue
        jj, ii = np.mgrid[j0:j0 + 2 * r + 1, i0:i0 + 2 * r + 1] + 0.5
        if bg is None:
            border = np.ones_like(win, bool)
            border[1:-1, 1:-1] = False
            A = np.stack([ii[border], jj[border], np.ones(border.sum())], 1)
            coef = np.linalg.lstsq(A, win[border], rcond=None)[0]
            base = coef[0] * ii + coef[1] * jj + coef[2]
        else:
            base = bg
        wgt = np.clip(base - win - 4 / 255, 0, None)       # 8-bit noise of the background left out
        out[n] = [(wgt * ii).sum() / wgt.sum(), (wgt * jj).sum() / wgt.sum()]
    return out


def read_outputs(scene: Path, name: str, level: int = 1):
    E, K, _ = read_mvsnet_cam(scene / f"cams_{level}" / f"{name}_cam.txt")
    img = np.asarray(Image.open(scene / f"images_{level}" / f"{name}.png"))
    valid = np.asarray(Image.open(scene / f"masks_{level}" / f"{name}.png")) == 255
    return Camera(img.shape[1], img.shape[0], K, E), img, valid


def dots_photo(uv: np.ndarray, w: int = W, h: int = H, sigma: float = 1.0) -> np.ndarray:
    """Dark Gaussian dots centred at continuous pixel positions uv on a light background."""
    jj, ii = np.mgrid[0:h, 0:w] + 0.5
    img = np.full((h, w), 0.9)
    for u, v in uv:
        img -= 0.7 * np.exp(-((ii - u) ** 2 + (jj - v) ** 2) / (2 * sigma**2))
    g = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, -1)


def points_in_view(E: np.ndarray, project, w: int = W, h: int = H, margin: float = 8.0, n: int = 10,
                   depth=(2.0, 4.0), seed: int = 0):
    """World points whose distorted projection lands on a grid over the photo (margin px from
    its border), at random depths; returns world points and their distorted pixel positions."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.linspace(-0.75, 0.75, n), np.linspace(-0.6, 0.6, n))
    z = rng.uniform(*depth, gx.size)
    Xc = np.stack([gx.ravel() * z, gy.ravel() * z, z], 1)
    uv = project(Xc)
    keep = (uv[:, 0] > margin) & (uv[:, 0] < w - margin) & (uv[:, 1] > margin) & (uv[:, 1] < h - margin)
    Xc, uv = Xc[keep], uv[keep]
    Ec = np.linalg.inv(E)
    return Xc @ Ec[:3, :3].T + Ec[:3, 3], uv


def dot_errors(scene: Path, name: str, X: np.ndarray):
    """Distance (px) of each dot the prepared photo shows from where its camera projects X, and
    which dots could be measured."""
    cam, img, valid = read_outputs(scene, name)
    q, _ = cam.project(X)
    c = centroid(img, q, valid)
    ok = ~np.isnan(c[:, 0])
    return np.hypot(*(c[ok] - q[ok]).T), ok
