"""Small geometry and scene builders for the backend tests."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np


from backend.cameras import Camera, look_at, write_mvsnet_cam  # noqa: F401 (look_at re-exported)
from backend.meshio import Mesh, write_obj


def grid_plane(n: int = 12, half: float = 1.0, z: float = 0.0) -> Mesh:
    xs = np.linspace(-half, half, n)
    X, Y = np.meshgrid(xs, xs)
    V = np.stack([X.ravel(), Y.ravel(), np.full(X.size, z)], 1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    F = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    return Mesh(V.astype(np.float32), F.astype(np.int32))


def uv_sphere(n: int = 24, r: float = 1.0, centre=(0, 0, 0)) -> Mesh:
    th, ph = np.meshgrid(np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, 2 * n), indexing="ij")
    V = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3) * r
    V += np.asarray(centre, float)
    idx = np.arange(n * 2 * n).reshape(n, 2 * n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    F = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    return Mesh(V.astype(np.float32), F.astype(np.int32))


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """COLMAP quaternion (w, x, y, z) of a rotation matrix."""
    m = np.asarray(R, dtype=np.float64)
    w = np.sqrt(max(0.0, 1.0 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
    x = np.copysign(np.sqrt(max(0.0, 1.0 + m[0, 0] - m[1, 1] - m[2, 2])) / 2, m[2, 1] - m[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1.0 - m[0, 0] + m[1, 1] - m[2, 2])) / 2, m[0, 2] - m[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1.0 - m[0, 0] - m[1, 1] + m[2, 2])) / 2, m[1, 0] - m[0, 1])
    q = np.array([w, x, y, z])
    return q / np.linalg.norm(q)


def odd_camera(width=96, height=64, eye=(0.4, -2.6, 1.8), target=(0, 0, 0)) -> Camera:
    """Anisotropic focal lengths and an off-centre principal point."""
    K = np.array([[80.0, 0, 0.56 * width], [0, 73.0, 0.44 * height], [0, 0, 1]])
    return Camera(width, height, K, look_at(eye, target))


def write_scene(root: Path, mesh: Mesh, cams: list[Camera], colour_fn) -> Path:
    """MVSNet scene whose photos are colour_fn(surface points) rendered with the CPU rasterizer."""
    from PIL import Image
    from backend.raster_cpu import interpolate, rasterize
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "cams").mkdir(exist_ok=True)
    write_obj(root / "1.obj", mesh)
    for k, cam in enumerate(cams):
        r = rasterize(mesh, cam)
        P = interpolate(r, mesh.faces, mesh.vertices)
        img = np.clip(colour_fn(P), 0, 1) * r.mask[..., None]
        Image.fromarray((img * 255).round().astype(np.uint8)).save(root / "images" / f"{k:08d}.png")
        write_mvsnet_cam(root / "cams" / f"{k:08d}_cam.txt", cam)
    return root


def stripes(P):
    """Photo colour of the tiny test scenes: smooth stripes of the surface point."""
    return 0.5 + 0.4 * np.sin(P * np.array([9.0, 13.0, 5.0]))


def striped_plane_scene(root: Path) -> Path:
    """Six 48x32 photos of a striped plane around the origin (off-centre, anisotropic K)."""
    cams = [odd_camera(48, 32, eye=(2.5 * np.cos(a), 2.5 * np.sin(a), 1.6)) for a in np.linspace(0, 5, 6)]
    return write_scene(root, grid_plane(10), cams, stripes)


def python_without(modules: tuple[str, ...], code: str) -> subprocess.CompletedProcess:
    """`code` run by a fresh interpreter at the repository root in which `modules` do not import."""
    block = "".join(f"sys.modules[{m!r}] = None; " for m in modules)
    return subprocess.run([sys.executable, "-c", f"import sys; {block}\n{code}"],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)


def photo_arc(folder: Path, n: int, width: int, height: int, seed: int = 0) -> tuple[Mesh, dict[str, Camera]]:
    """`n` photos (pNN.png) along a 120-degree arc around the procedural scene, with square pixels and
    a centred principal point as a real lens: the scene's mesh and the true camera of each photo."""
    import math
    from backend.colour import linear_to_srgb
    from backend.imageio import write_png
    from backend.synthetic import procedural as P
    folder.mkdir(parents=True, exist_ok=True)
    spec = P.make_spec(seed)
    f = width / (2 * math.tan(math.radians(50) / 2))
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    truth = {}
    for i in range(n):
        az, elev = math.radians(-60 + 120 * i / (n - 1)), math.radians(35 + 8 * math.sin(i))
        cam = Camera(width, height, K, look_at(P._orbit_eye(az, elev, 4.5, P.CENTRE), P.CENTRE), f"p{i:02d}")
        write_png(folder / f"p{i:02d}.png", linear_to_srgb(P.reference_render(spec, cam, 2)[0]))
        truth[f"p{i:02d}.png"] = cam
    return spec.mesh, truth
