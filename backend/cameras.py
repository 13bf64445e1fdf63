"""Camera convention (one place, numpy only).

OpenCV axes: x right, y down, z forward. Intrinsics K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
in continuous image coordinates: the image spans [0, W] x [0, H] and pixel (i, j) (column i,
row j) has its centre at (i + 0.5, j + 0.5). A world point X projects to
    (u, v, 1) * z = K @ (R @ X + t),   with world_to_camera = [[R, t], [0, 0, 0, 1]].
With supersampling factor s, sub-sample (a, b) of pixel (i, j) sits at
    (i + (a + 0.5) / s, j + (b + 0.5) / s).
MVSNet cam files hold world_to_camera ("extrinsic") and K ("intrinsic") in this convention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .boundedjson import shown
from .errors import InputError


@dataclass
class Camera:
    width: int
    height: int
    K: np.ndarray                     # (3, 3) float64
    world_to_camera: np.ndarray       # (4, 4) float64
    name: str = ""
    depth_range: tuple[float, float] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        self.world_to_camera = np.asarray(self.world_to_camera, dtype=np.float64).reshape(4, 4)
        self.width, self.height = int(self.width), int(self.height)

    # --- derived quantities -------------------------------------------------
    @property
    def fx(self) -> float: return float(self.K[0, 0])
    @property
    def fy(self) -> float: return float(self.K[1, 1])
    @property
    def cx(self) -> float: return float(self.K[0, 2])
    @property
    def cy(self) -> float: return float(self.K[1, 2])
    @property
    def R(self) -> np.ndarray: return self.world_to_camera[:3, :3]
    @property
    def t(self) -> np.ndarray: return self.world_to_camera[:3, 3]

    @property
    def camera_to_world(self) -> np.ndarray:
        return np.linalg.inv(self.world_to_camera)

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        return points @ self.R.T + self.t

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) -> continuous pixel coords (N, 2) and camera depth z (N,)."""
        pc = self.to_camera(np.asarray(points, dtype=np.float64))
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([self.fx * pc[:, 0] / z + self.K[0, 1] * pc[:, 1] / z + self.cx,
                           self.fy * pc[:, 1] / z + self.cy], axis=1)
        return uv, z

    def sample_coords(self, ss: int = 1) -> np.ndarray:
        """Continuous coords of all sub-samples, shape (H, W, ss*ss, 2), sub-sample index a + ss*b."""
        o = (np.arange(ss) + 0.5) / ss
        oy, ox = np.meshgrid(o, o, indexing="ij")
        offs = np.stack([ox.ravel(), oy.ravel()], axis=1)            # (ss*ss, 2)
        jj, ii = np.meshgrid(np.arange(self.height), np.arange(self.width), indexing="ij")
        base = np.stack([ii, jj], axis=-1).astype(np.float64)         # (H, W, 2)
        return base[:, :, None, :] + offs[None, None]

    def directions(self, uv: np.ndarray) -> np.ndarray:
        """Unit world-space ray directions through continuous pixel coords uv (..., 2)."""
        y = (uv[..., 1] - self.cy) / self.fy
        x = (uv[..., 0] - self.cx - self.K[0, 1] * y) / self.fx
        d = np.stack([x, y, np.ones_like(x)], axis=-1) @ self.R        # R^T applied to row vectors
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    def scaled(self, factor: float) -> "Camera":
        """Camera for the image resized by `factor` (e.g. 0.5). Exact under the [0, W] convention."""
        K = self.K.copy()
        K[:2] *= factor
        return Camera(round(self.width * factor), round(self.height * factor), K,
                      self.world_to_camera.copy(), self.name, self.depth_range)

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "K": self.K.tolist(),
                "world_to_camera": self.world_to_camera.tolist(), "name": self.name}

    @classmethod
    def from_dict(cls, d: dict) -> "Camera":
        return cls(d["width"], d["height"], np.array(d["K"]), np.array(d["world_to_camera"]),
                   d.get("name", ""))


# --- render cameras from outside (camera path frames, render server requests) -------------------

MAX_SIDE = 16384      # largest image side a render camera may have (a frame of it: ~5 GB of passes)
RIGID_TOL = 1e-4      # rotation rows orthonormal and det +1 within this (float32 exports: ~1e-7)


def checked_camera(width, height, K, world_to_camera, where: str, name: str = "") -> Camera:
    """A render camera from untrusted JSON values, after checking them; InputError starting with
    `where` otherwise. Whole width and height from 1 to MAX_SIDE, K 3x3 finite with positive
    focal lengths and no skew, world_to_camera 4x4 finite and rigid (rotation orthonormal with
    determinant +1, last row 0 0 0 1): the one check of `render`'s camera paths and `serve`'s
    requests."""
    if not all(whole_number(x) and 1 <= x <= MAX_SIDE for x in (width, height)):
        raise InputError(f"{where}: image size {shown(width)}x{shown(height)}; width and height must be whole "
                         f"numbers of pixels from 1 to {MAX_SIDE}.")
    try:
        K = np.array(K, dtype=np.float64)
        E = np.array(world_to_camera, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        K = E = np.zeros(0)
    if K.shape != (3, 3) or E.shape != (4, 4):
        raise InputError(f"{where}: K must be 3x3 and world_to_camera 4x4, nested lists of numbers.")
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"{where}: K must have finite entries and positive focal lengths fx, fy "
                         f"(got fx={K[0, 0]:g}, fy={K[1, 1]:g}).")
    if K[0, 1] != 0 or K[1, 0] != 0 or not np.allclose(K[2], [0, 0, 1]):
        raise InputError(f"{where}: K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (no skew).")
    if not np.isfinite(E).all():
        raise InputError(f"{where}: world_to_camera has NaN or infinite entries.")
    R = E[:3, :3]
    ortho = float(np.abs(R @ R.T - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if not (ortho <= RIGID_TOL and abs(det - 1) <= RIGID_TOL and np.abs(E[3] - [0, 0, 0, 1]).max() <= RIGID_TOL):
        raise InputError(f"{where}: world_to_camera is not a rigid camera pose (rotation not orthonormal "
                         f"with determinant +1: off by {ortho:.2g}, determinant {det:.4g}); export the "
                         "camera without scale or shear.")
    return Camera(int(width), int(height), K, E, name=name)


def camera_from_json(d: dict, where: str, name: str = "") -> Camera:
    """checked_camera of a JSON object's width, height, K and world_to_camera."""
    missing = [key for key in ("width", "height", "K", "world_to_camera") if key not in d]
    if missing:
        raise InputError(f"{where} has no {', '.join(missing)}; it needs width, height, K (3x3) and "
                         "world_to_camera (4x4).")
    return checked_camera(d["width"], d["height"], d["K"], d["world_to_camera"], where, name)


def whole_number(x) -> bool:
    """A JSON number with a whole value (2 or 2.0; not true, 2.5, NaN or infinity)."""
    if isinstance(x, bool):
        return False
    return isinstance(x, int) or (isinstance(x, float) and math.isfinite(x) and x.is_integer())


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV world_to_camera (x right, y down, z towards the target), world up = `up`."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-6:                                 # looking along `up`
        x = np.cross(z, (0.0, 1.0, 0.0))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    E = np.eye(4)
    E[:3, :3] = np.stack([x, y, z])
    E[:3, 3] = -E[:3, :3] @ eye
    return E


# --- MVSNet cam files ---------------------------------------------------------

def read_mvsnet_cam(path: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
    """Parse an MVSNet `*_cam.txt`: returns (world_to_camera 4x4, K 3x3, depth range or None)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot read camera file ({e.strerror}).") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a text camera file (byte {e.start} is not UTF-8); write it as "
                         "plain text (MVSNet's NAME_cam.txt).") from None
    lines = [ln.strip() for ln in text.splitlines()]
    try:
        ie = lines.index("extrinsic")
        ii = lines.index("intrinsic")
    except ValueError:
        raise InputError(f"{path}: malformed MVSNet camera file: expected an 'extrinsic' line "
                         "followed by 4 rows and an 'intrinsic' line followed by 3 rows.") from None

    def rows(start: int, n: int, what: str) -> np.ndarray:
        try:
            m = np.array([[float(x) for x in lines[start + k].split()] for k in range(n)])
        except (ValueError, IndexError):
            m = None
        if m is None or m.shape != (n, n) or not np.all(np.isfinite(m)):
            raise InputError(f"{path}: malformed MVSNet camera file: the {what} block must be "
                             f"{n} rows of {n} numbers.")
        return m

    E = rows(ie + 1, 4, "extrinsic")
    K = rows(ii + 1, 3, "intrinsic")
    if not np.allclose(E[3], [0, 0, 0, 1]) or abs(np.linalg.det(E[:3, :3]) - 1) > 1e-3:
        raise InputError(f"{path}: the extrinsic matrix is not a rigid world-to-camera transform "
                         "(rotation with determinant 1, last row 0 0 0 1).")
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0, 0, 1]) or K[1, 0] != 0:
        raise InputError(f"{path}: the intrinsic matrix must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] "
                         "with positive focal lengths.")
    depth = None
    rest = [ln for ln in lines[ii + 4:] if ln]
    if rest:
        try:
            vals = [float(x) for x in rest[0].split()]
            if len(vals) >= 2:
                depth = (vals[0], vals[0] + vals[1] * (vals[2] if len(vals) > 2 else 192))
                if len(vals) >= 4:
                    depth = (vals[0], vals[3])
        except ValueError:
            pass
    return E, K, depth


def write_mvsnet_cam(path: str | Path, cam: Camera) -> None:
    """Write an MVSNet cam file atomically (full float precision)."""
    E, K = cam.world_to_camera, cam.K
    lines = ["extrinsic"] + [" ".join(repr(float(v)) for v in row) for row in E] + [""]
    lines += ["intrinsic"] + [" ".join(repr(float(v)) for v in row) for row in K] + [""]
    dmin, dmax = cam.depth_range or (0.0, 0.0)
    lines += [f"{dmin!r} {(dmax - dmin) / 192.0!r} 192 {dmax!r}", ""]
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)
