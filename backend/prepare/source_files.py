"""Reading capture exports (shared by the nerfstudio, RealityScan, Meshroom and OpenMVS importers):
UTF-8 text and JSON with one-line errors, photo paths that must stay inside their folder, numbers
and rotations checked before they become cameras."""
from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from ..errors import InputError


def read_text(path: Path, fix: str) -> str:
    """The file as UTF-8 text; `fix` says how to get a good file (export it again, ...)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror}).") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}); {fix}.") from None


def read_json(path: Path, fix: str):
    try:
        return json.loads(read_text(path, fix))
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e}); {fix}.") from None


def leaves_folder(rel: str) -> bool:
    """Whether a relative photo path as an export writes it (/ or \\ separated) could lead out of
    its folder: absolute, a drive, or '..' (COLMAP's image names and every export's paths)."""
    return (rel.startswith(("/", "\\")) or bool(PureWindowsPath(rel).drive)
            or ".." in rel.replace("\\", "/").split("/"))


def inside(folder: Path, rel: str, where: str) -> Path:
    """`rel` (a photo path as the export writes it, / or \\ separated) under `folder`; refused when
    it leaves the folder (absolute, a drive, '..'), so that no file from elsewhere is copied."""
    parts = rel.replace("\\", "/").split("/")
    if not rel or leaves_folder(rel):
        raise InputError(f"{where}: the photo path '{rel}' leads outside {folder}; keep the photos in that folder "
                         "and their paths relative to it.")
    return folder.joinpath(*[p for p in parts if p not in ("", ".")])


def number(value, where: str) -> float:
    """A finite number (JSON number or numeric string, as AliceVision writes them)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{where} is not a number.")
    try:
        x = float(value)
    except ValueError:
        raise InputError(f"{where} is not a number ('{value}').") from None
    if not math.isfinite(x):
        raise InputError(f"{where} is not a finite number.")
    return x


def numbers(values, n: int, where: str) -> np.ndarray:
    if not isinstance(values, (list, tuple)) or len(values) != n:
        raise InputError(f"{where} must hold {n} numbers.")
    return np.array([number(v, where) for v in values], np.float64)


def rotation(R: np.ndarray, where: str, tol: float = 1e-5) -> np.ndarray:
    """R if it is a rotation (to the precision exports print), else InputError."""
    if not (np.allclose(R.T @ R, np.eye(3), atol=tol) and np.linalg.det(R) > 0):
        raise InputError(f"{where} is not a rotation matrix; export the cameras again.")
    return R


def world_to_camera(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    E = np.eye(4)
    E[:3, :3], E[:3, 3] = R, t
    return E


def from_centre(R: np.ndarray, C: np.ndarray) -> np.ndarray:
    """world_to_camera of a camera with world-to-camera rotation R and centre C."""
    return world_to_camera(R, -(R @ C))


def find_one(src: Path, pattern: str, missing: str, names: tuple[str, ...] = ()) -> Path:
    """`src` when it is a file, else the first of `names` in it, else its single file matching
    `pattern` ('*.sfm'); `missing` says what to pass when there is none."""
    if src.is_file():
        return src
    for n in names:
        if (src / n).is_file():
            return src / n
    found = sorted(p for p in src.glob(pattern) if p.is_file())
    if len(found) == 1:
        return found[0]
    if found:
        raise InputError(f"{src}: several {pattern[1:]} files ({', '.join(p.name for p in found)}); pass the one to use.")
    raise InputError(f"{src}: no {' or '.join(names or (pattern[1:] + ' file',))}; {missing}.")


def has_faces(path: Path) -> bool:
    """Whether a .ply holds triangles (a mesh, not a point cloud; read from its header) or the
    file is an .obj."""
    if path.suffix.lower() == ".obj":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096).split(b"end_header")[0].decode("ascii", "replace").split("\n")
    except OSError:
        return False
    for line in head:
        tok = line.split()
        if len(tok) == 3 and tok[:2] == ["element", "face"]:
            return tok[2].isdigit() and int(tok[2]) > 0
    return False


def output_names(rels: list[str]) -> list[str]:
    """Output names of photos at these relative paths: the folder they all share is left out
    ('images/IMG_1.jpg' -> 'IMG_1'), deeper folders flattened (writer.safe_name)."""
    from .writer import safe_name
    paths = [PurePosixPath(r.replace("\\", "/")) for r in rels]
    parents = {p.parent for p in paths}
    base = parents.pop() if len(parents) == 1 else PurePosixPath(".")
    return [safe_name(str(p.relative_to(base))) for p in paths]
