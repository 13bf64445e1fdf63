"""Agisoft Metashape cameras XML (File > Export Cameras) -> MVSNet scene.

Conventions (Metashape manual, appendix "Camera models", frame cameras):
    u = w/2 + cx + x'(f + b1) + y' b2,   v = h/2 + cy + y' f
with (u, v) measured from the top-left image corner, i.e. our continuous convention (the image
centre is w/2, not (w-1)/2). Hence fx = f + b1, fy = f, principal point (w/2 + cx, h/2 + cy),
skew b2. Lens distortion (k1..k4, p1..p4) and skew are removed by undistorting the photos
(backend.prepare.lens holds the full frame-camera model, including Metashape's p1/p2 order),
unless the photos were already undistorted by Metashape (--images-undistorted: the distortion
terms are ignored; skew is refused then, since it cannot be represented). A camera's <transform> is camera-to-chunk (camera axes x right, y down, z forward, as
OpenCV); the chunk (or, since 2.x, per-component) <transform> is a similarity
    world = scale * R @ p + T.
The reference conversion script ignores that similarity, so its cameras and the exported mesh
(which Metashape writes in world coordinates) disagree whenever the chunk was scaled, referenced
or rotated; here it is applied, keeping world_to_camera rigid.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cameras import Camera
from ..errors import InputError
from .lens import Lens, metashape_lens
from .writer import SourceView, find_single_mesh, safe_name, write_scene

_DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2", "p3", "p4")


@dataclass(frozen=True)
class Similarity:
    """x -> s * R @ x + T."""
    s: float = 1.0
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    T: np.ndarray = field(default_factory=lambda: np.zeros(3))

    @property
    def matrix(self) -> np.ndarray:
        M = np.eye(4)
        M[:3, :3], M[:3, 3] = self.s * self.R, self.T
        return M

    def inverse(self) -> "Similarity":
        return Similarity(1.0 / self.s, self.R.T, -(self.R.T @ self.T) / self.s)

    def __matmul__(self, o: "Similarity") -> "Similarity":
        return Similarity(self.s * o.s, self.R @ o.R, self.s * (self.R @ o.T) + self.T)

    def same_as(self, o: "Similarity") -> bool:
        return self.s == o.s and np.array_equal(self.R, o.R) and np.array_equal(self.T, o.T)


@dataclass
class Sensor:
    id: str
    label: str
    width: int
    height: int
    K: np.ndarray                  # fx = f + b1, fy = f, absolute principal point, no skew
    distortion: dict[str, float]   # the XML's k1..k4, p1..p4 that are present
    skew: float = 0.0              # b2
    lens: Lens | None = None       # None when the photos need no resampling (no distortion or skew)


def _floats(text: str | None, n: int, where: str) -> np.ndarray:
    try:
        v = np.array([float(x) for x in (text or "").split()])
    except ValueError:
        v = np.zeros(0)
    if v.shape != (n,) or not np.all(np.isfinite(v)):
        raise InputError(f"{where}: expected {n} numbers.")
    return v


def _is_rotation(R: np.ndarray, tol: float = 1e-6) -> bool:
    return bool(np.allclose(R.T @ R, np.eye(3), atol=tol) and np.linalg.det(R) > 0)


def parse_similarity(el: ET.Element | None, where: str) -> Similarity:
    """<transform><rotation>9</rotation><translation>3</translation><scale>1</scale></transform>,
    each part optional."""
    if el is None:
        return Similarity()
    rot, tr, sc = el.find("rotation"), el.find("translation"), el.find("scale")
    R = _floats(rot.text, 9, f"{where} <rotation>").reshape(3, 3) if rot is not None else np.eye(3)
    T = _floats(tr.text, 3, f"{where} <translation>") if tr is not None else np.zeros(3)
    s = float(_floats(sc.text, 1, f"{where} <scale>")[0]) if sc is not None else 1.0
    if not _is_rotation(R) or not s > 0:
        raise InputError(f"{where}: the chunk transform is not a rotation + translation + positive scale.")
    return Similarity(s, R, T)


def _calibration(sensor: ET.Element) -> ET.Element | None:
    cals = sensor.findall("calibration")
    adjusted = [c for c in cals if c.get("class") == "adjusted"]
    return (adjusted or cals or [None])[0]


def parse_sensor(el: ET.Element, xml: Path) -> Sensor | str:
    """A Sensor, or the reason it cannot be used (a string) - only fatal for sensors in use."""
    sid, label = el.get("id", "?"), el.get("label", el.get("id", "?"))
    where = f"{xml}: sensor '{label}'"
    stype = el.get("type", "frame")
    if stype != "frame":
        return (f"{where} is a {stype} camera; prepare converts and undistorts only frame (perspective) cameras. "
                "Use a frame calibration, or export undistorted photos from Metashape with their cameras.")
    cal = _calibration(el)
    if cal is None:
        return f"{where} has no calibration; align the photos in Metashape and export the cameras again."
    if cal.get("type", "frame") != "frame":
        return f"{where} has a {cal.get('type')} calibration; only frame (pinhole) cameras can be converted."
    res = cal.find("resolution")
    if res is None:
        res = el.find("resolution")
    try:
        w, h = int(res.get("width")), int(res.get("height"))       # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        return f"{where} has no <resolution width height>."

    def num(tag: str, default: float = 0.0) -> float:
        t = cal.findtext(tag)
        if t is None:
            return default
        try:
            return float(t)
        except ValueError:
            raise InputError(f"{where}: <{tag}> is not a number.") from None

    if cal.find("f") is not None:
        f, b1, b2 = num("f"), num("b1"), num("b2")
        fx, fy, cx, cy, skew = f + b1, f, w / 2.0 + num("cx"), h / 2.0 + num("cy"), b2
    elif cal.find("fx") is not None:
        # Older (PhotoScan) exports: fx, fy and an absolute principal point.
        fx, fy, cx, cy, skew = num("fx"), num("fy"), num("cx", w / 2.0), num("cy", h / 2.0), num("skew")
    else:
        return f"{where} has no focal length (<f>) in its calibration."
    if not (fx > 0 and fy > 0 and w > 0 and h > 0):
        return f"{where} has an invalid calibration (f = {fx:g}, {fy:g}, size {w}x{h})."
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    dist = {t: num(t) for t in _DISTORTION if cal.find(t) is not None}
    lens = None
    if skew != 0 or any(dist.values()):
        lens = metashape_lens(w, h, fx, fy, cx, cy, {**dist, "b2": skew})
    return Sensor(sid, label, w, h, K, dist, skew, lens)


def _index_images(images_dir: Path) -> dict[str, Path]:
    idx: dict[str, Path] = {}
    for p in sorted(images_dir.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            for key in (p.name, p.stem, p.name.lower(), p.stem.lower()):
                idx.setdefault(key, p)
    return idx


def _match_image(label: str, idx: dict[str, Path]) -> Path | None:
    """Photo for a camera label: labels are file names, with or without extension, or full paths."""
    name = label.replace("\\", "/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    for key in (name, stem, name.lower(), stem.lower()):
        if key in idx:
            return idx[key]
    return None


def load_views(xml: Path, images_dir: Path, *, undistorted: bool = False,
               scene_frame: str = "world") -> tuple[list[SourceView], Similarity | None, list[str]]:
    """Views of a Metashape cameras XML in the output frame, the chunk-to-world similarity (None
    when the cameras' components disagree on it), and notes for the user."""
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError) as e:
        raise InputError(f"{xml}: not a readable Metashape cameras XML ({e}); export it again with "
                         "File > Export > Export Cameras (Agisoft XML).") from None
    chunk = root if root.tag == "chunk" else root.find("chunk")
    if chunk is None or chunk.find("sensors") is None or chunk.find("cameras") is None:
        raise InputError(f"{xml}: no <chunk> with <sensors> and <cameras>; export the cameras from Metashape "
                         "as Agisoft XML.")
    notes: list[str] = []
    sensors = {s.get("id"): parse_sensor(s, xml) for s in chunk.find("sensors").iter("sensor")}
    chunk_T = parse_similarity(chunk.find("transform"), f"{xml}: chunk")
    comps: dict[str, Similarity] = {}
    if chunk.find("components") is not None:
        for c in chunk.find("components").iter("component"):
            if c.find("transform") is not None:
                comps[c.get("id", "")] = parse_similarity(c.find("transform"), f"{xml}: component {c.get('id')}")

    ref = (chunk.findtext("reference") or "").strip()
    if ref and not ref.upper().startswith("LOCAL_CS"):
        notes.append("the chunk is georeferenced: its transform maps to geocentric (ECEF) coordinates, so the "
                     "mesh must be exported in a geocentric system, or in the chunk's internal frame with "
                     "--mesh-frame chunk (use --scene-frame chunk to keep small coordinates).")

    index = _index_images(images_dir)
    found: list[tuple[str, Path, Sensor, np.ndarray, np.ndarray, Similarity]] = []
    unposed, missing, rotated = [], [], []
    for cam in chunk.find("cameras").iter("camera"):
        label = cam.get("label", cam.get("id", "?"))
        tr = cam.find("transform")
        if tr is None or not (tr.text or "").strip():
            unposed.append(label)
            continue
        sensor = sensors.get(cam.get("sensor_id"))
        if sensor is None:
            raise InputError(f"{xml}: camera '{label}' refers to sensor {cam.get('sensor_id')}, which is not in "
                             "<sensors>; export the cameras again.")
        if isinstance(sensor, str):
            raise InputError(sensor)
        if undistorted and sensor.skew != 0:
            raise InputError(f"{xml}: sensor '{sensor.label}' has skew (b2 = {sensor.skew:g}), which photos used "
                             "as they are (--images-undistorted) cannot have; leave out --images-undistorted to "
                             "undistort the original photos here, or re-align with b2 fixed to 0.")
        path = _match_image(label, index)
        if path is None:
            missing.append(label)
            continue
        if (cam.findtext("orientation") or "1").strip() not in ("0", "1"):
            rotated.append(label)
        M = _floats(tr.text, 16, f"{xml}: camera '{label}' <transform>").reshape(4, 4)
        Rc, tc = M[:3, :3], M[:3, 3]
        if not (_is_rotation(Rc) and np.allclose(M[3], [0, 0, 0, 1])):
            raise InputError(f"{xml}: camera '{label}' <transform> is not a rigid camera-to-chunk transform.")
        comp_id = cam.get("component_id")
        to_world = comps.get(comp_id, chunk_T) if comp_id is not None else chunk_T
        found.append((safe_name(path.name), path, sensor, Rc, tc, to_world))
    if not found:
        raise InputError(f"{xml}: no aligned camera has a photo in {images_dir} "
                         f"({len(missing)} without photo, {len(unposed)} not aligned); pass --images DIR with "
                         "the photos named like the camera labels.")
    if missing:
        notes.append(f"{len(missing)} aligned camera(s) have no photo in {images_dir.name}/ and were skipped "
                     f"(e.g. {missing[0]}).")
    if unposed:
        notes.append(f"{len(unposed)} camera(s) are not aligned (no transform) and were skipped.")
    if rotated:
        notes.append(f"{len(rotated)} camera(s) have an EXIF orientation other than 1 (e.g. {rotated[0]}); photos "
                     "are used as stored, so check that the exported photos are not rotated.")

    # The similarity that maps the chunk's internal frame to world (for mesh and scene frames).
    distinct: list[Similarity] = []
    for f in found:
        if not any(f[5].same_as(d) for d in distinct):
            distinct.append(f[5])
    chunk_to_world = distinct[0] if len(distinct) == 1 else None
    if scene_frame not in ("world", "chunk"):
        raise InputError(f"--scene-frame {scene_frame}: choose 'world' or 'chunk'.")
    if scene_frame == "chunk" and chunk_to_world is None:
        raise InputError(f"{xml}: the cameras belong to components with different transforms; "
                         "the chunk frame is ambiguous, use --scene-frame world.")
    views = []
    for name, path, sensor, Rc, tc, to_world in found:
        if scene_frame == "chunk":       # identity for the (single) chunk transform: exact poses
            to_world = Similarity() if to_world.same_as(chunk_to_world) else chunk_to_world.inverse() @ to_world
        views.append(SourceView(name, path, Camera(sensor.width, sensor.height, sensor.K,
                                                   _pose(to_world, Rc, tc), name),
                                lens=None if undistorted else sensor.lens))
    return views, chunk_to_world, notes


def _pose(S: Similarity, Rc: np.ndarray, tc: np.ndarray) -> np.ndarray:
    """world_to_camera of a camera whose camera-to-chunk pose is (Rc, tc), with chunk->world = S.
    The scale moves the camera centre but leaves the camera's axes unit length: rigid result."""
    R = S.R @ Rc
    c = S.s * (S.R @ tc) + S.T
    E = np.eye(4)
    E[:3, :3] = R.T
    E[:3, 3] = -(R.T @ c)
    return E


def detect(src: Path) -> bool:
    """Whether `src` is a cameras .xml, or a folder holding the XML find_xml would pick."""
    if src.is_file():
        return src.suffix.lower() == ".xml"
    return (src / "cams.xml").is_file() or (src / "cameras.xml").is_file() or len(list(src.glob("*.xml"))) == 1


def find_xml(src: Path) -> Path:
    if src.is_file():
        return src
    for name in ("cams.xml", "cameras.xml"):
        if (src / name).is_file():
            return src / name
    xmls = sorted(src.glob("*.xml"))
    if len(xmls) == 1:
        return xmls[0]
    raise InputError(f"{src}: no Metashape cameras XML (cams.xml) found" + (
        f" (several .xml files: {', '.join(p.name for p in xmls)}); pass --xml FILE." if xmls else
        "; export it with File > Export > Export Cameras (Agisoft XML)."))


def convert_metashape(src: str | Path, dst: str | Path, *, downsample: int = 1, copy_images: bool = True,
                      xml: str | Path | None = None, images: str | Path | None = None,
                      mesh: str | Path | None = None, mesh_frame: str = "world", scene_frame: str = "world",
                      undistorted: bool = False, undistort: bool = True) -> dict:
    """Metashape export -> MVSNet scene at `dst`. Returns a summary dict.

    src: a folder holding cams.xml, images/ (the original photos, undistorted here, or photos
    Metashape undistorted with --images-undistorted) and the exported mesh, or the XML file
    itself. mesh_frame: the frame the mesh file is in - "world" (Metashape's model export) or
    "chunk" (the chunk's internal frame). scene_frame: the frame to write - "world", or "chunk" to
    keep small coordinates for georeferenced (geocentric) projects. undistorted: the photos were
    undistorted by Metashape with this calibration, so its distortion terms are ignored.
    undistort=False: raise NeedsBackend instead of undistorting (see write_scene).
    """
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: Metashape export not found.")
    xml_path = Path(xml) if xml else find_xml(src)
    base = src if src.is_dir() else xml_path.parent
    images_dir = Path(images) if images else base / "images"
    if not images_dir.is_dir():
        raise InputError(f"{images_dir}: image folder not found; pass --images DIR with the photos.")
    mesh_path = Path(mesh) if mesh else find_single_mesh([base])
    if mesh_frame not in ("world", "chunk"):
        raise InputError(f"--mesh-frame {mesh_frame}: choose 'world' or 'chunk'.")
    views, chunk_to_world, notes = load_views(xml_path, images_dir, undistorted=undistorted,
                                              scene_frame=scene_frame)
    mesh_T = None
    if mesh_frame != scene_frame:
        if chunk_to_world is None:
            raise InputError(f"{xml_path}: the cameras belong to components with different transforms, so the "
                             "chunk frame of the mesh is ambiguous; export the mesh in world coordinates.")
        S = chunk_to_world if mesh_frame == "chunk" else chunk_to_world.inverse()
        mesh_T = S.matrix
    source = {"kind": "metashape", "xml": str(xml_path), "images": str(images_dir), "mesh": str(mesh_path),
              "mesh_frame": mesh_frame, "scene_frame": scene_frame, "undistorted": bool(undistorted)}
    return write_scene(views, mesh_path, dst, downsample=downsample, copy_images=copy_images,
                       mesh_transform=mesh_T, source=source, notes=notes, undistort=undistort)
