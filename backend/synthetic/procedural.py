"""Procedural demo/test scene with exact ground truth (numpy only).

A few simple shapes (ground plane, box, UV sphere, cylinder; under a thousand triangles) carry an
analytic texture defined in 3D whose detail is much finer than the triangles, so per-vertex
colour cannot represent it but a hash grid over the surface can. A small specular term makes the
colour depend on the view direction. Ground-truth photos come from `reference_render`: the
project's exact CPU rasterizer at ss x ss sub-samples per pixel, the texture evaluated at the
exact surface point of every sub-sample, shaded in linear RGB, and averaged per pixel with the
background colour filling uncovered sub-samples, as a camera integrates light over a pixel.

World frame: z up (the OBJ imports into Blender upright with forward Y, up Z). Cameras follow
backend.cameras and deliberately use non-ideal intrinsics (fy != fx, off-centre principal point)
so that convention bugs show up as misaligned pixels.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cameras import look_at, Camera, write_mvsnet_cam
from ..colour import linear_to_srgb
from ..imageio import write_png
from ..meshio import Mesh, write_obj
from ..raster_cpu import interpolate, rasterize, supersample_view

# Non-ideal intrinsics: fractions of the image size, and fy / fx.
CX_FRAC, CY_FRAC, FY_OVER_FX = 0.52, 0.47, 0.98
HFOV_DEG = 55.0
FAR_DIST, CLOSE_FACTOR = 6.0, 8.0
CENTRE = np.array([0.0, 0.0, 0.5])
VIEWS_JSON = "views.json"


@dataclass
class SceneSpec:
    """Everything needed to render the scene exactly (rebuilt from the seed by make_spec)."""
    seed: int
    mesh: Mesh
    normals: np.ndarray        # (V, 3) float64 unit vertex normals, as the pipeline computes them
    face_object: np.ndarray    # (F,) int32 object id per triangle
    dirs: np.ndarray           # (K, 3) unit directions of the sinusoidal texture components
    freqs: np.ndarray          # (K,) cycles per world unit
    phases: np.ndarray         # (K,)
    amps: np.ndarray           # (K,)
    checker_freq: float        # cycles per unit of the soft 3D checker
    colour_a: np.ndarray       # (n_objects, 3) linear albedo at pattern 0
    colour_b: np.ndarray       # (n_objects, 3) linear albedo at pattern 1
    light_dir: np.ndarray      # (3,) unit, towards the light
    background: np.ndarray     # (3,) linear colour of uncovered sub-samples
    specular: float = 0.25
    shininess: float = 24.0
    centre: np.ndarray = field(default_factory=lambda: CENTRE.copy())


# --- geometry -------------------------------------------------------------------

def _grid_faces(idx: np.ndarray) -> np.ndarray:
    """Two triangles per cell of a (rows, cols) grid of vertex indices."""
    a, b = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel()
    c, d = idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    return np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])


def _orient(v: np.ndarray, f: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Flip triangles whose normal points towards `inside` (objects here are convex)."""
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    flip = np.einsum("ij,ij->i", n, v[f].mean(1) - inside) < 0
    f = f.copy()
    f[flip] = f[flip][:, [0, 2, 1]]
    return f


def _patch(origin, ea, eb, n: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.linspace(0.0, 1.0, n + 1)
    gi, gj = np.meshgrid(s, s, indexing="ij")
    v = origin + gi[..., None] * ea + gj[..., None] * eb
    return v.reshape(-1, 3), _grid_faces(np.arange((n + 1) ** 2).reshape(n + 1, n + 1))


def _plane(half: float, n: int):
    v, f = _patch(np.array([-half, -half, 0.0]), np.array([2 * half, 0, 0]), np.array([0, 2 * half, 0]), n)
    return v, _orient(v, f, np.array([0.0, 0.0, -1.0]))


def _box(centre, size, angle: float, n: int):
    """Box standing on the ground, rotated about z; no bottom face. Faces have their own
    vertices so vertex normals equal face normals (sharp edges)."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    h = np.asarray(size) / 2
    faces_def = [  # (origin, edge a, edge b) in the box frame
        ([-h[0], -h[1], h[2]], [2 * h[0], 0, 0], [0, 2 * h[1], 0]),
        ([-h[0], -h[1], -h[2]], [2 * h[0], 0, 0], [0, 0, 2 * h[2]]),
        ([-h[0], h[1], -h[2]], [2 * h[0], 0, 0], [0, 0, 2 * h[2]]),
        ([-h[0], -h[1], -h[2]], [0, 2 * h[1], 0], [0, 0, 2 * h[2]]),
        ([h[0], -h[1], -h[2]], [0, 2 * h[1], 0], [0, 0, 2 * h[2]]),
    ]
    vs, fs, off = [], [], 0
    for o, a, b in faces_def:
        v, f = _patch(np.array(o, float), np.array(a, float), np.array(b, float), n)
        vs.append(v)
        fs.append(f + off)
        off += len(v)
    v = np.concatenate(vs) @ rot.T + np.asarray(centre)
    return v, _orient(v, np.concatenate(fs), np.asarray(centre))


def _sphere(centre, r: float, nseg: int, nring: int):
    th = np.linspace(0, math.pi, nring + 1)[1:-1]
    ph = np.linspace(0, 2 * math.pi, nseg, endpoint=False)
    T, P = np.meshgrid(th, ph, indexing="ij")
    ring = np.stack([np.sin(T) * np.cos(P), np.sin(T) * np.sin(P), np.cos(T)], -1).reshape(-1, 3)
    v = np.concatenate([[[0, 0, 1.0]], ring, [[0, 0, -1.0]]]) * r + np.asarray(centre)
    idx = 1 + np.arange(len(ring)).reshape(nring - 1, nseg)
    idx = np.concatenate([idx, idx[:, :1]], 1)                   # wrap the seam
    j = np.arange(nseg)
    top = np.stack([np.zeros(nseg, int), idx[0, j], idx[0, j + 1]], 1)
    bot = np.stack([np.full(nseg, len(v) - 1), idx[-1, j + 1], idx[-1, j]], 1)
    f = np.concatenate([top, _grid_faces(idx), bot])
    return v, _orient(v, f, np.asarray(centre))


def _cylinder(centre_xy, r: float, height: float, nseg: int):
    """Open-bottomed cylinder on the ground: smooth side, flat top cap with its own vertices."""
    ph = np.linspace(0, 2 * math.pi, nseg, endpoint=False)
    circle = np.stack([np.cos(ph), np.sin(ph)], 1) * r + np.asarray(centre_xy)
    side = np.concatenate([np.c_[circle, np.zeros(nseg)], np.c_[circle, np.full(nseg, height)]])
    idx = np.arange(2 * nseg).reshape(2, nseg)
    idx = np.concatenate([idx, idx[:, :1]], 1)
    fs = _grid_faces(idx)
    cap = np.concatenate([[[*centre_xy, height]], np.c_[circle, np.full(nseg, height)]])
    j = np.arange(nseg)
    fc = np.stack([np.zeros(nseg, int), 1 + j, 1 + (j + 1) % nseg], 1) + len(side)
    v = np.concatenate([side, cap])
    return v, _orient(v, np.concatenate([fs, fc]), np.array([*centre_xy, height / 2]))


def _geometry(detail: int = 1) -> tuple[Mesh, np.ndarray]:
    """The four objects; `detail` multiplies the tessellation along each direction (detail**2
    times the triangles): the same shapes, curved ones closer to their analytic surfaces."""
    d = int(detail)
    parts = [
        _plane(2.5, 10 * d),                                      # object 0: ground
        _box((-1.15, -0.45, 0.5), (1.0, 0.9, 1.0), math.radians(25), 3 * d),   # 1: box
        _sphere((1.05, -0.5, 0.66), 0.65, 24 * d, 12 * d),       # 2: sphere
        _cylinder((0.05, 1.15), 0.45, 1.3, 24 * d),              # 3: cylinder
    ]
    vs, fs, ids, off = [], [], [], 0
    for k, (v, f) in enumerate(parts):
        vs.append(v)
        fs.append(f + off)
        ids.append(np.full(len(f), k, np.int32))
        off += len(v)
    mesh = Mesh(np.concatenate(vs).astype(np.float32), np.concatenate(fs).astype(np.int32))
    return mesh, np.concatenate(ids)


def make_spec(seed: int = 0, detail: int = 1) -> SceneSpec:
    """The scene for a seed: fixed shapes, seeded texture (directions, frequencies, phases).
    `detail` > 1 tessellates the same shapes finer (see _geometry); the texture is the same."""
    mesh, face_object = _geometry(detail)
    rng = np.random.default_rng(seed)
    k = 8
    dirs = rng.normal(size=(k, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freqs = np.geomspace(1.0, 20.0, k) * rng.uniform(0.9, 1.1, k)
    # Base colours per object (linear), pattern mixes towards a second hue.
    colour_a = np.array([[0.30, 0.32, 0.20], [0.60, 0.18, 0.08], [0.08, 0.22, 0.60], [0.62, 0.50, 0.10]])
    colour_b = np.array([[0.10, 0.14, 0.08], [0.72, 0.55, 0.35], [0.50, 0.62, 0.72], [0.18, 0.10, 0.02]])
    light = np.array([0.45, -0.35, 0.82])
    return SceneSpec(seed=seed, mesh=mesh, normals=mesh.vertex_normals().astype(np.float64),
                     face_object=face_object, dirs=dirs, freqs=freqs,
                     phases=rng.uniform(0, 2 * math.pi, k), amps=np.full(k, 0.12),
                     checker_freq=float(rng.uniform(2.5, 3.5)),
                     colour_a=colour_a * rng.uniform(0.9, 1.1, colour_a.shape),
                     colour_b=colour_b * rng.uniform(0.9, 1.1, colour_b.shape),
                     light_dir=light / np.linalg.norm(light), background=np.zeros(3))


# --- appearance -----------------------------------------------------------------

def pattern(spec: SceneSpec, points: np.ndarray) -> np.ndarray:
    """Scalar pattern in [0, 1] at world points (N, 3): equal-amplitude sinusoids from 1 to 20 cycles per unit
    in random directions plus a soft 3D checker."""
    p = np.asarray(points, np.float64)
    waves = np.sin(2 * math.pi * (p @ spec.dirs.T) * spec.freqs + spec.phases) @ spec.amps
    q = np.sin(2 * math.pi * spec.checker_freq * p)
    checker = np.tanh(6.0 * q[:, 0] * q[:, 1] * q[:, 2])
    return np.clip(0.5 + waves + 0.2 * checker, 0.0, 1.0)


def albedo(spec: SceneSpec, points: np.ndarray, obj: np.ndarray) -> np.ndarray:
    """Linear albedo (N, 3) at world points of the given objects."""
    t = pattern(spec, points)[:, None]
    return spec.colour_a[obj] * (1 - t) + spec.colour_b[obj] * t


def shade(spec: SceneSpec, points: np.ndarray, normals: np.ndarray, view_dirs: np.ndarray,
          obj: np.ndarray) -> np.ndarray:
    """Linear RGB (N, 3). view_dirs point from the camera to the surface. Lambert plus ambient,
    and a Blinn-Phong highlight that moves with the viewpoint."""
    n = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    v = -view_dirs / np.linalg.norm(view_dirs, axis=1, keepdims=True)     # towards the camera
    n = np.where((np.einsum("ij,ij->i", n, v) < 0)[:, None], -n, n)       # back faces: face the viewer
    diffuse = np.maximum(n @ spec.light_dir, 0.0)
    h = spec.light_dir + v
    h /= np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
    hl = spec.specular * np.maximum(np.einsum("ij,ij->i", n, h), 0.0) ** spec.shininess
    return albedo(spec, points, obj) * (0.3 + 0.7 * diffuse)[:, None] + hl[:, None]


def reference_render(spec: SceneSpec, camera: Camera, ss: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth for any camera: (rgb_linear (H, W, 3), alpha (H, W)) float32. rgb is what a
    camera records (uncovered sub-samples contribute the background colour); alpha is coverage."""
    cs = camera.scaled(ss)
    r = rasterize(spec.mesh, cs)
    m = r.mask
    col = np.broadcast_to(spec.background, (*m.shape, 3)).copy()
    if m.any():
        x = interpolate(r, spec.mesh.faces, spec.mesh.vertices)[m]
        n = interpolate(r, spec.mesh.faces, spec.normals)[m]
        col[m] = shade(spec, x, n, x - camera.center, spec.face_object[r.tri[m]])
    rgb = supersample_view(col, ss).mean(2)
    alpha = supersample_view(m.astype(np.float64), ss).mean(2)
    return rgb.astype(np.float32), alpha.astype(np.float32)


# --- cameras --------------------------------------------------------------------

def intrinsics(width: int, height: int, hfov_deg: float = HFOV_DEG) -> np.ndarray:
    fx = width / (2 * math.tan(math.radians(hfov_deg) / 2))
    return np.array([[fx, 0, CX_FRAC * width], [0, FY_OVER_FX * fx, CY_FRAC * height], [0, 0, 1.0]])


def _orbit_eye(az: float, elev: float, dist: float, target: np.ndarray) -> np.ndarray:
    return target + dist * np.array([math.cos(elev) * math.cos(az), math.cos(elev) * math.sin(az),
                                     math.sin(elev)])


def _with_depth(spec: SceneSpec, cam: Camera) -> Camera:
    z = cam.to_camera(spec.mesh.vertices.astype(np.float64))[:, 2]
    z = z[z > 1e-3]
    cam.depth_range = (float(z.min()) * 0.9, float(z.max()) * 1.1) if len(z) else None
    return cam


def _far_cameras(n: int, width: int, height: int, rng: np.random.Generator) -> list[Camera]:
    K = intrinsics(width, height)
    cams = []
    for i in range(n):
        u = i / max(n, 1)
        az = 2 * math.pi * u + rng.uniform(-0.3, 0.3) * 2 * math.pi / max(n, 1)
        elev = math.radians(32 + 13 * math.sin(2 * math.pi * 3 * u + 0.5) + rng.uniform(-3, 3))
        dist = FAR_DIST * (1 + 0.12 * math.sin(2 * math.pi * 2 * u) + rng.uniform(-0.04, 0.04))
        target = CENTRE + rng.uniform(-0.15, 0.15, 3)
        cams.append(Camera(width, height, K, look_at(_orbit_eye(az, elev, dist, target), target)))
    return cams


def _close_camera(spec: SceneSpec, width: int, height: int, rng: np.random.Generator, k: int) -> Camera:
    """A camera FAR_DIST / CLOSE_FACTOR in front of a random point on object 1 + k % 3, looking at
    it unobstructed and filled mostly with surface (checked with a small rasterization)."""
    K = intrinsics(width, height)
    v, f = spec.mesh.vertices.astype(np.float64), spec.mesh.faces
    faces = np.nonzero(spec.face_object == 1 + k % 3)[0]
    area = np.linalg.norm(np.cross(v[f[faces, 1]] - v[f[faces, 0]], v[f[faces, 2]] - v[f[faces, 0]]), axis=1)
    dist = FAR_DIST / CLOSE_FACTOR
    cam = None
    for _ in range(100):
        t = rng.choice(faces, p=area / area.sum())
        b = rng.dirichlet(np.ones(3))
        p = b @ v[f[t]]
        n = b @ spec.normals[f[t]]
        d = n / np.linalg.norm(n) + rng.normal(scale=0.35, size=3)
        d /= np.linalg.norm(d)
        eye = p + dist * d
        if eye[2] < 0.15 or d[2] < -0.2:
            continue
        cam = Camera(width, height, K, look_at(eye, p))
        small = cam.scaled(0.125)
        r = rasterize(spec.mesh, small)
        uv, z = small.project(p[None])
        i, j = int(uv[0, 0]), int(uv[0, 1])
        if 0 <= i < small.width and 0 <= j < small.height and r.mask.mean() > 0.9 \
                and abs(r.depth[j, i] - z[0]) < 0.02 * z[0]:
            return cam
    return cam


def make_cameras(spec: SceneSpec, n_views: int, width: int, height: int, layout: str = "orbit",
                 seed: int = 0) -> tuple[list[Camera], list[bool]]:
    """Cameras of the photos and which of them are close-ups (multiscale: every third view)."""
    if layout not in ("orbit", "multiscale"):
        raise ValueError(f"unknown layout {layout!r}; use 'orbit' or 'multiscale'")
    rng = np.random.default_rng([seed, 1])
    close = [layout == "multiscale" and i % 3 == 2 for i in range(n_views)]
    far = iter(_far_cameras(n_views - sum(close), width, height, rng))
    cams, k = [], 0
    for c in close:
        if c:
            cams.append(_close_camera(spec, width, height, rng, k))
            k += 1
        else:
            cams.append(next(far))
    for i, cam in enumerate(cams):
        cam.name = f"{i:08d}"
        _with_depth(spec, cam)
    return cams, close


def make_flythrough(scene: SceneSpec | str | Path, n_frames: int, width: int, height: int) -> list[Camera]:
    """A smooth closed camera loop around the scene: one turn, gently rising and falling,
    moving in and out, with the focal length breathing by +-15%."""
    spec = scene if isinstance(scene, SceneSpec) else load_spec(scene)
    cams = []
    for i in range(n_frames):
        u = i / max(n_frames, 1)
        w = 2 * math.pi * u
        target = spec.centre + np.array([0.25 * math.sin(w), 0.2 * math.sin(2 * w), 0.0])
        eye = _orbit_eye(0.3 + w, math.radians(30 + 12 * math.sin(w)),
                         FAR_DIST * (0.85 + 0.15 * math.cos(2 * w)), target)
        K = intrinsics(width, height)
        K[:2, :2] *= 1 + 0.15 * math.sin(2 * w)
        cams.append(Camera(width, height, K, look_at(eye, target), f"{i:06d}"))
    return cams


# --- scene folder ---------------------------------------------------------------

def _write_view(out: Path, spec: SceneSpec, cam: Camera, ss_ref: int) -> None:
    rgb, _alpha = reference_render(spec, cam, ss_ref)
    write_png(out / "images" / f"{cam.name}.png", linear_to_srgb(rgb))
    write_mvsnet_cam(out / "cams" / f"{cam.name}_cam.txt", cam)


def scene_matches(out_dir: str | Path, n_views: int = 24, width: int = 160, height: int = 120,
                  ss_ref: int = 4, seed: int = 0, layout: str = "orbit") -> bool:
    """True when OUT holds a complete scene (views.json is written last) made with these settings."""
    try:
        info = json.loads((Path(out_dir) / VIEWS_JSON).read_text(encoding="utf-8"))
        made = (len(info["views"]), info["width"], info["height"], info["ss_ref"], info["seed"], info["layout"])
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return made == (n_views, width, height, ss_ref, seed, layout)


def make_scene(out_dir: str | Path, n_views: int = 24, width: int = 160, height: int = 120,
               ss_ref: int = 4, seed: int = 0, layout: str = "orbit", workers: int = 1,
               reuse: bool = False) -> Path:
    """Write an MVSNet scene: images/NNNNNNNN.png (8-bit sRGB), cams/NNNNNNNN_cam.txt, 1.obj,
    and views.json (generator settings, close-up flags). Returns the scene folder.
    `workers` > 1 renders the photos in that many processes (large benchmark scenes).
    `reuse`: keep OUT as it is when it already holds this scene (scene_matches)."""
    out = Path(out_dir)
    if reuse and scene_matches(out, n_views, width, height, ss_ref, seed, layout):
        return out
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "cams").mkdir(exist_ok=True)
    spec = make_spec(seed)
    cams, close = make_cameras(spec, n_views, width, height, layout, seed)
    write_obj(out / "1.obj", spec.mesh)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_view, [out] * len(cams), [spec] * len(cams), cams, [ss_ref] * len(cams)))
    else:
        for cam in cams:
            _write_view(out, spec, cam, ss_ref)
    info = {"generator": "backend.procedural", "version": 1, "seed": seed, "layout": layout,
            "ss_ref": ss_ref, "width": width, "height": height,
            "background_linear": spec.background.tolist(),
            "views": [{"name": c.name, "closeup": bool(cl)} for c, cl in zip(cams, close)]}
    tmp = out / (VIEWS_JSON + ".tmp")
    tmp.write_text(json.dumps(info, indent=1), encoding="utf-8")
    tmp.replace(out / VIEWS_JSON)
    return out


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


# views.json's generator tags: the generators' module names when the formats were introduced, kept
# as they are so that scene folders written before still match.
GENERATORS = ("backend.procedural", "backend.procedural_capture")


def load_spec(scene_dir: str | Path) -> SceneSpec:
    """The true SceneSpec of a folder written by make_scene or capture.make_capture
    (from the seed and tessellation detail in its views.json)."""
    path = Path(scene_dir) / VIEWS_JSON
    info = json.loads(path.read_text(encoding="utf-8"))
    if info.get("generator") not in GENERATORS:
        raise ValueError(f"{path}: not a procedural scene")
    return make_spec(int(info["seed"]), int(info.get("detail", 1)))
