"""Triangle mesh files (OBJ, PLY ascii/binary), numpy only, plus validation and vertex normals."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError


@dataclass
class Mesh:
    vertices: np.ndarray   # (V, 3) float32
    faces: np.ndarray      # (F, 3) int32

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.vertices.min(0), self.vertices.max(0)

    def vertex_normals(self) -> np.ndarray:
        """Area-weighted vertex normals (unit length; zero-area fans get +z)."""
        v = self.vertices.astype(np.float64)
        f = self.faces
        fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # length = 2 * area
        vn = np.zeros_like(v)
        for k in range(3):
            np.add.at(vn, f[:, k], fn)
        n = np.linalg.norm(vn, axis=1, keepdims=True)
        vn = np.where(n > 0, vn / np.maximum(n, 1e-30), np.array([0.0, 0.0, 1.0]))
        return vn.astype(np.float32)

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The distinct undirected edges (E, 2), each face's three edges as indices into them (F, 3),
        and how many faces use each edge (E,): 1 on an open boundary, more than 2 where non-manifold."""
        ends = np.sort(np.asarray(self.faces, np.int64)[:, [[0, 1], [1, 2], [2, 0]]], axis=2).reshape(-1, 2)
        n = len(self.vertices)
        keys, face_edges, uses = np.unique(ends[:, 0] * n + ends[:, 1], return_inverse=True, return_counts=True)
        return np.stack([keys // n, keys % n], 1), face_edges.reshape(-1, 3), uses

    def non_manifold_edges(self) -> int:
        """Number of undirected edges shared by more than two faces."""
        return int((self.edges()[2] > 2).sum())


def load_mesh(path: str | Path) -> Mesh:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: mesh file not found. Put the photogrammetry mesh there "
                         "(OBJ or PLY) or pass --mesh PATH.")
    ext = path.suffix.lower()
    try:
        with np.errstate(over="ignore", invalid="ignore"):    # 1e300 becomes inf, refused below (no warning)
            if ext == ".obj":
                mesh = _load_obj(path)
            elif ext == ".ply":
                mesh = _load_ply(path)
            else:
                raise InputError(f"{path}: unsupported mesh format '{ext}'; export the mesh as .obj or .ply.")
    except InputError:
        raise
    except (ValueError, IndexError, OverflowError, OSError) as e:
        raise InputError(f"{path}: could not parse the mesh ({e}); re-export it as OBJ or PLY.") from None
    validate_mesh(mesh, path)       # on 64-bit indices: 2^32 + 1 must not wrap around to a valid 1
    return Mesh(mesh.vertices, mesh.faces.astype(np.int32))


def load_ply_points(path: str | Path) -> np.ndarray:
    """The vertex positions (N, 3) of a PLY file, faces or none (e.g. a fused point cloud)."""
    path = Path(path)
    try:
        return _load_ply(path).vertices
    except (ValueError, IndexError, OSError) as e:
        raise InputError(f"{path}: could not read its points ({e}).") from None


def validate_mesh(mesh: Mesh, path: str | Path = "mesh") -> None:
    if len(mesh.vertices) == 0 or len(mesh.faces) == 0:
        raise InputError(f"{path}: the mesh is empty ({len(mesh.vertices)} vertices, "
                         f"{len(mesh.faces)} triangles); export the reconstructed surface, not a point cloud.")
    if not np.all(np.isfinite(mesh.vertices)):
        raise InputError(f"{path}: the mesh has NaN or infinite vertex coordinates; clean it and re-export.")
    if mesh.faces.min() < 0 or mesh.faces.max() >= len(mesh.vertices):
        raise InputError(f"{path}: triangle indices refer to vertices that do not exist; re-export the mesh.")
    v = mesh.vertices.astype(np.float64)
    f = mesh.faces
    area = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    if not np.any(area > 0):
        raise InputError(f"{path}: every triangle of the mesh has zero area; the surface is degenerate.")


def _load_obj(path: Path) -> Mesh:
    verts, faces = [], []
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("v "):
                verts.append(line.split()[1:4])
            elif line.startswith("f "):
                idx = [int(tok.split("/")[0]) for tok in line.split()[1:]]
                n = len(verts)
                idx = [i - 1 if i > 0 else n + i for i in idx]
                for k in range(1, len(idx) - 1):          # fan-triangulate polygons
                    faces.append((idx[0], idx[k], idx[k + 1]))
    v = np.array(verts, dtype=np.float64).reshape(-1, 3).astype(np.float32)
    f = np.array(faces, dtype=np.int64).reshape(-1, 3)
    return Mesh(v, f)


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _load_ply(path: Path) -> Mesh:
    data = path.read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise InputError(f"{path}: not a PLY file (missing 'ply' magic or 'end_header').")
    header = data[:end].decode("ascii", "replace").splitlines()
    body_start = data.index(b"\n", end) + 1
    fmt = "ascii"
    elements: list[list] = []   # [name, count, [(prop, dtype, list_count_dtype|None)]]
    for ln in header:
        tok = ln.split()
        if not tok:
            continue
        if tok[0] == "format":
            fmt = tok[1]
            if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
                raise InputError(f"{path}: unknown PLY format '{fmt}'; re-export the mesh as OBJ or PLY.")
        elif tok[0] == "element":
            elements.append([tok[1], int(tok[2]), []])
            if elements[-1][1] < 0:
                raise InputError(f"{path}: the PLY element '{tok[1]}' has a negative count; re-export the mesh.")
        elif tok[0] == "property":
            if tok[1] == "list":
                elements[-1][2].append((tok[4], _ply_type(path, tok[3]), _ply_type(path, tok[2])))
            else:
                elements[-1][2].append((tok[2], _ply_type(path, tok[1]), None))
    verts = faces = None
    if fmt == "ascii":
        tokens = data[body_start:].split()
        pos = 0
        for name, count, props in elements:
            rows = []
            for _ in range(count):
                row = []
                for pname, _dt, lt in props:
                    if lt:
                        n = int(tokens[pos]); pos += 1
                        row.append([int(x) for x in tokens[pos:pos + n]]); pos += n
                    else:
                        row.append(float(tokens[pos])); pos += 1
                rows.append(row)
            verts, faces = _collect(name, props, rows, verts, faces)
    else:
        bo = "<" if fmt == "binary_little_endian" else ">"
        buf = memoryview(data)[body_start:]
        pos = 0
        for name, count, props in elements:
            if all(lt is None for _, _, lt in props):
                dt = np.dtype([(p, bo + t) for p, t, _ in props])
                arr = np.frombuffer(buf, dtype=dt, count=count, offset=pos)
                pos += dt.itemsize * count
                if name == "vertex":
                    verts = np.stack([arr["x"], arr["y"], arr["z"]], 1).astype(np.float32)
                continue
            # Elements with list properties: fast path for the usual single triangle list.
            if len(props) == 1 and props[0][2] is not None:
                _, t, lt = props[0]
                ld, td = np.dtype(bo + lt), np.dtype(bo + t)
                first = int(np.frombuffer(buf, ld, 1, pos)[0]) if count else 3
                rec = np.dtype([("n", ld), ("i", td, (first,))])
                arr = np.frombuffer(buf, rec, count, pos) if count else None
                if arr is not None and np.all(arr["n"] == first):
                    pos += rec.itemsize * count
                    if name == "face":
                        faces = _fan(arr["i"].astype(np.int64))
                    continue
            rows = []
            for _ in range(count):
                row = []
                for _p, t, lt in props:
                    if lt:
                        ld, td = np.dtype(bo + lt), np.dtype(bo + t)
                        n = int(np.frombuffer(buf, ld, 1, pos)[0]); pos += ld.itemsize
                        row.append(np.frombuffer(buf, td, n, pos).tolist()); pos += td.itemsize * n
                    else:
                        td = np.dtype(bo + t)
                        row.append(float(np.frombuffer(buf, td, 1, pos)[0])); pos += td.itemsize
                rows.append(row)
            verts, faces = _collect(name, props, rows, verts, faces)
    if verts is None:
        verts = np.zeros((0, 3), np.float32)
    if faces is None:
        faces = np.zeros((0, 3), np.int64)
    return Mesh(np.ascontiguousarray(verts, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.int64))


def _ply_type(path: Path, name: str) -> str:
    if name not in _PLY_TYPES:
        raise InputError(f"{path}: unknown PLY property type '{name}' (known: {', '.join(_PLY_TYPES)}); "
                         "re-export the mesh.")
    return _PLY_TYPES[name]


def _fan(polys: np.ndarray) -> np.ndarray:
    n = polys.shape[1]
    tris = [polys[:, [0, k, k + 1]] for k in range(1, n - 1)]
    return np.concatenate(tris).astype(np.int64) if tris else np.zeros((0, 3), np.int64)


def _collect(name, props, rows, verts, faces):
    names = [p for p, _, _ in props]
    if name == "vertex":
        ix, iy, iz = names.index("x"), names.index("y"), names.index("z")
        verts = np.array([[r[ix], r[iy], r[iz]] for r in rows], dtype=np.float32).reshape(-1, 3)
    elif name == "face":
        li = next((i for i, (_, _, lt) in enumerate(props) if lt), None)
        if li is None:
            raise ValueError("the face element has no list of vertex indices")
        tris = []
        for r in rows:
            idx = r[li]
            tris += [(idx[0], idx[k], idx[k + 1]) for k in range(1, len(idx) - 1)]
        faces = np.array(tris, dtype=np.int64).reshape(-1, 3)
    return verts, faces


def write_obj(path: str | Path, mesh: Mesh) -> None:
    path = Path(path)
    tmp = path.with_suffix(".tmp.obj")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("".join(f"v {x:.9g} {y:.9g} {z:.9g}\n" for x, y, z in mesh.vertices))
        fh.write("".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in mesh.faces))
    tmp.replace(path)


def write_ply(path: str | Path, mesh: Mesh) -> None:
    """Binary little-endian PLY."""
    path = Path(path)
    tmp = path.with_suffix(".tmp.ply")
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(mesh.vertices)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              f"element face {len(mesh.faces)}\nproperty list uchar int vertex_indices\nend_header\n")
    rec = np.zeros(len(mesh.faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    rec["n"] = 3
    rec["i"] = mesh.faces
    with open(tmp, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(mesh.vertices.astype("<f4").tobytes())
        fh.write(rec.tobytes())
    tmp.replace(path)
