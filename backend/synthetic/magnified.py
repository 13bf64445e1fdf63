"""Magnified views of a capture's ground truth: surface points seen by at least two training photos,
cameras 1x..8x closer than the nearest photo that sees each, their clean renders and that photo
resampled into each view (`render_magnified`, run in worker processes)."""
from __future__ import annotations

import numpy as np

from ..cameras import Camera, look_at
from ..colour import linear_to_srgb
from ..meshio import Mesh
from ..raster_cpu import interpolate, rasterize
from . import procedural as P
from .capture_settings import CaptureParams
from .clean_render import culled, render_clean
from .geometry import in_frame, in_looked_at_region, point_mesh_distance, random_surface_points, segments_blocked
from .truth import TRUTH, save_gt, to_u16


def choose_magnified(coarse: P.SceneSpec, true: P.SceneSpec, degraded: Mesh, blob_mesh: Mesh | None,
                     cams: list[Camera], close: list[bool], train: list[int], p: CaptureParams,
                     rng: np.random.Generator, n_candidates: int = 300) -> list[dict]:
    """Surface points seen by >= 2 training photos (in frame, within 60 degrees of their normal,
    unobstructed), about half of them nearest to a close-up photo, away from holes and blobs;
    for each, the nearest training photo that sees it and its distance."""
    objects = np.nonzero(true.face_object >= 0)[0]
    pts, fid = random_surface_points(true.mesh, objects, n_candidates, rng)
    ok = in_looked_at_region(pts)
    pts, fid = pts[ok], fid[ok]
    nrm = true.normals[true.mesh.faces[fid]].mean(1)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    dist = np.full((len(pts), len(train)), np.inf)
    pi, ci = [], []
    for k, i in enumerate(train):
        cam = cams[i]
        to_cam = cam.center - pts
        dd = np.linalg.norm(to_cam, axis=1)
        seen = in_frame(cam, pts, 0.08) & (np.einsum("ij,ij->i", nrm, to_cam) > 0.5 * dd)
        idx = np.nonzero(seen)[0]
        pi.append(idx)
        ci.append(np.full(len(idx), k))
        dist[idx, k] = dd[idx]
    pi, ci = np.concatenate(pi), np.concatenate(ci)
    centres = np.stack([cams[i].center for i in train])
    blocked = segments_blocked(centres[ci], pts[pi], coarse.mesh)
    dist[pi[blocked], ci[blocked]] = np.inf
    n_seen = np.isfinite(dist).sum(1)
    nearest = dist.argmin(1)
    good = n_seen >= 2
    good &= point_mesh_distance(pts, degraded) < 0.3 * p.hole_radius           # not in a hole
    if blob_mesh is not None and good.any():                                     # nor behind a blob
        g = np.nonzero(good)[0]
        near_c = centres[nearest[g]]
        good[g[segments_blocked(near_c, pts[g], blob_mesh, tol=0.0)]] = False
    cand = {True: [], False: []}
    for j in rng.permutation(np.nonzero(good)[0]):
        cand[bool(close[train[nearest[j]]])].append(int(j))
    chosen: list[int] = []
    for want in [True, False] * p.magnified_points:
        pool = cand[want] or cand[not want]
        while pool and any(np.linalg.norm(pts[pool[0]] - pts[c]) < 0.4 for c in chosen):
            pool.pop(0)
        if pool and len(chosen) < p.magnified_points:
            chosen.append(pool.pop(0))
    return [{"point": pts[j].tolist(), "normal": nrm[j].tolist(), "nearest_photo": cams[train[nearest[j]]].name,
             "nearest_distance": float(dist[j, nearest[j]]), "nearest_is_closeup": bool(close[train[nearest[j]]]),
             "seen_by": int(n_seen[j])} for j in chosen]


def magnified_camera(point, nearest_centre, factor: float, K: np.ndarray, width: int, height: int,
                     name: str) -> Camera:
    p, c = np.asarray(point, float), np.asarray(nearest_centre, float)
    eye = p + (c - p) / factor
    return Camera(width, height, K.copy(), look_at(eye, p), name)


def bilinear(img: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample img (H, W, C) at continuous coords uv (N, 2) (pixel centres at +0.5): values and
    whether the point is inside the image."""
    H, W = img.shape[:2]
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5
    valid = (uv[:, 0] >= 0) & (uv[:, 0] <= W) & (uv[:, 1] >= 0) & (uv[:, 1] <= H)
    x, y = np.clip(x, 0, W - 1), np.clip(y, 0, H - 1)
    x0, y0 = np.minimum(np.floor(x).astype(int), W - 2), np.minimum(np.floor(y).astype(int), H - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    v = (img[y0, x0] * (1 - fx) * (1 - fy) + img[y0, x0 + 1] * fx * (1 - fy)
         + img[y0 + 1, x0] * (1 - fx) * fy + img[y0 + 1, x0 + 1] * fx * fy)
    return v, valid


def render_magnified(job: dict) -> None:
    """One magnified view's ground-truth file from its job (make_capture's dict: camera, nearest photo)."""
    from PIL import Image
    out, spec, cam, photo_cam = job["out"], job["spec"], job["cam"], job["photo_cam"]
    lin, alpha = render_clean(spec, cam, job["ss_ref"])
    c = culled(spec, cam)
    r = rasterize(c.mesh, cam)
    x = interpolate(r, c.mesh.faces, c.mesh.vertices)[r.mask]
    with Image.open(out / "images" / f"{photo_cam.name}.jpg") as im:
        photo = np.asarray(im.convert("RGB"), np.float32) / 255.0
    uv, z = photo_cam.project(x)
    vals, valid = bilinear(photo, uv)
    warp = np.zeros((cam.height, cam.width, 3), np.float32)
    ok = np.zeros((cam.height, cam.width), bool)
    warp[r.mask] = vals
    ok[r.mask] = valid & (z > 0)
    save_gt(out / TRUTH / "magnified" / f"{cam.name}.npz", linear_to_srgb(lin), alpha,
            photo=to_u16(warp * ok[..., None]), photo_valid=ok)
