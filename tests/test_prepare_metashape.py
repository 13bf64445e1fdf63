"""Metashape cameras XML -> MVSNet: sensors (f, cx/cy offsets, b1), camera transforms and the
chunk / component similarity transform, checked against hand-computed K and world_to_camera."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cameras import read_mvsnet_cam
from backend.errors import InputError
from backend.meshio import Mesh, load_mesh, write_obj
from backend.prepare import convert, convert_metashape

# chunk -> world: world = s * R0 @ p + T0 (R0: 90 degrees about z). All values exact in binary.
R0 = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
T0 = np.array([10.0, -5, 2])
S0 = 2.5
# camera -> chunk poses (rotation, centre in chunk units)
RC1, TC1 = np.eye(3), np.array([0.0, 0, -3])
RC2, TC2 = np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]), np.array([-3.0, 0.5, 0.25])
MESH_CHUNK = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float64)


def transform_text(R: np.ndarray, t: np.ndarray) -> str:
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = R, t
    return " ".join(repr(float(x)) for x in M.ravel())


def chunk_transform_xml(R=R0, T=T0, s=S0) -> str:
    return (f"<transform><rotation locked=\"false\">{' '.join(repr(float(x)) for x in R.ravel())}</rotation>"
            f"<translation locked=\"false\">{' '.join(repr(float(x)) for x in T)}</translation>"
            f"<scale locked=\"true\">{s!r}</scale></transform>")


def cams_xml(sensor1_extra: str = "", style: str = "chunk", extra_cameras: str = "") -> str:
    comp_attr = ' component_id="0"' if style == "component" else ""
    components = (f'<components next_id="1" active_id="0"><component id="0" label="Component 1">'
                  f'{chunk_transform_xml()}</component></components>') if style == "component" else ""
    chunk_tr = chunk_transform_xml() if style == "chunk" else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<document version="2.0.0">
  <chunk label="Chunk 1" enabled="true">
    <sensors next_id="2">
      <sensor id="0" label="cam A" type="frame">
        <resolution width="40" height="30"/>
        <property name="fixed" value="false"/>
        <calibration type="frame" class="initial">
          <resolution width="40" height="30"/><f>99</f>
        </calibration>
        <calibration type="frame" class="adjusted">
          <resolution width="40" height="30"/>
          <f>50.5</f><cx>0.5</cx><cy>-0.25</cy><b1>1.25</b1>{sensor1_extra}
        </calibration>
      </sensor>
      <sensor id="1" label="cam B" type="frame">
        <resolution width="30" height="40"/>
        <calibration type="frame" class="adjusted">
          <resolution width="30" height="40"/><f>45</f><cx>0</cx><cy>1.5</cy><k1>0</k1><p1>0</p1>
        </calibration>
      </sensor>
    </sensors>
    {components}
    <cameras next_id="4" next_group_id="1">
      <camera id="0" sensor_id="0"{comp_attr} label="IMG_1"><transform>{transform_text(RC1, TC1)}</transform></camera>
      <group id="0" label="Group 1" type="folder">
        <camera id="1" sensor_id="1"{comp_attr} label="IMG_2.JPG"><transform>{transform_text(RC2, TC2)}</transform></camera>
      </group>
      <camera id="2" sensor_id="0"{comp_attr} label="IMG_3"/>
      {extra_cameras}
    </cameras>
    {chunk_tr}
    <reference>LOCAL_CS["Local Coordinates (m)",LOCAL_DATUM["Local Datum",0],UNIT["metre",1]]</reference>
  </chunk>
</document>
"""


def export(root: Path, xml: str | None = None, mesh_frame: str = "world") -> Path:
    """A Metashape export folder: cams.xml, images/ (undistorted), 1.obj."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / "images" / "IMG_1.png")
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(root / "images" / "IMG_2.JPG")
    (root / "cams.xml").write_text(xml or cams_xml())
    v = MESH_CHUNK if mesh_frame == "chunk" else MESH_CHUNK @ (S0 * R0).T + T0
    write_obj(root / "1.obj", Mesh(v.astype(np.float32), np.array([[0, 1, 2], [0, 2, 3]], np.int32)))
    return root


def expected_E(Rc: np.ndarray, tc: np.ndarray, chunk: bool = False) -> np.ndarray:
    """world_to_camera by hand: camera-to-world = (R0 Rc, S0 R0 tc + T0); rigid."""
    R, c = (Rc, tc) if chunk else (R0 @ Rc, S0 * R0 @ tc + T0)
    E = np.eye(4)
    E[:3, :3], E[:3, 3] = R.T, -R.T @ c
    return E


K1 = np.array([[50.5 + 1.25, 0, 20 + 0.5], [0, 50.5, 15 - 0.25], [0, 0, 1]])   # fx = f + b1, cx = W/2 + cx
K2 = np.array([[45.0, 0, 15], [0, 45, 20 + 1.5], [0, 0, 1]])


@pytest.mark.parametrize("style", ["chunk", "component"])
def test_convert_exact_K_and_pose(tmp_path, style):
    src = export(tmp_path / "ms", cams_xml(style=style))
    s = convert_metashape(src, tmp_path / "scene")
    assert s["views"] == 2
    assert any("not aligned" in n for n in s["notes"])          # IMG_3 has no transform
    for name, K, Rc, tc in (("IMG_1", K1, RC1, TC1), ("IMG_2", K2, RC2, TC2)):
        E, K_read, _ = read_mvsnet_cam(tmp_path / "scene" / "cams_1" / f"{name}_cam.txt")
        assert np.array_equal(K_read, K), name
        assert np.array_equal(E, expected_E(Rc, tc)), name
    assert (tmp_path / "scene" / "images_1" / "IMG_2.JPG").is_file()


def test_projection_matches_metashape_model_in_chunk_space(tmp_path):
    """Independent of the pose algebra: project chunk-space points with Metashape's own formula
    (u = w/2 + cx + x'(f + b1), v = h/2 + cy + y'f, camera frame in chunk units) and compare with
    our world-space camera applied to the same points mapped to world."""
    src = export(tmp_path / "ms")
    convert_metashape(src, tmp_path / "scene")
    from backend.scene import load_scene
    cam = {v.name: v.camera for v in load_scene(tmp_path / "scene", level=1).views}["IMG_1"]
    rng = np.random.default_rng(5)
    p = rng.uniform(-1, 1, (50, 3)) * [1, 1, 0.5]
    xc = (p - TC1) @ RC1                                        # Rc^T (p - tc)
    u = 20 + 0.5 + xc[:, 0] / xc[:, 2] * (50.5 + 1.25)
    v = 15 - 0.25 + xc[:, 1] / xc[:, 2] * 50.5
    uv, z = cam.project(p @ (S0 * R0).T + T0)
    assert np.allclose(uv, np.stack([u, v], 1), atol=1e-10)
    assert np.allclose(z, S0 * xc[:, 2])                       # depth is in world units


def test_mesh_in_chunk_frame_is_transformed(tmp_path):
    src = export(tmp_path / "ms", mesh_frame="chunk")
    s = convert_metashape(src, tmp_path / "scene", mesh_frame="chunk")
    assert s["mesh"].endswith("mesh.ply")
    m = load_mesh(tmp_path / "scene" / "mesh.ply")
    assert np.allclose(m.vertices, MESH_CHUNK @ (S0 * R0).T + T0, atol=1e-5)


def test_scene_in_chunk_frame(tmp_path):
    """--scene-frame chunk: cameras are Metashape's camera-to-chunk inverses; mesh moved to chunk."""
    src = export(tmp_path / "ms")                               # mesh exported in world coordinates
    convert_metashape(src, tmp_path / "scene", scene_frame="chunk")
    E, _, _ = read_mvsnet_cam(tmp_path / "scene" / "cams_1" / "IMG_2_cam.txt")
    assert np.array_equal(E, expected_E(RC2, TC2, chunk=True))
    assert np.allclose(load_mesh(tmp_path / "scene" / "mesh.ply").vertices, MESH_CHUNK, atol=1e-5)


def test_mesh_copied_when_in_world_frame(tmp_path):
    src = export(tmp_path / "ms")
    s = convert_metashape(src, tmp_path / "scene")
    assert Path(s["mesh"]).name == "mesh.obj"
    assert (tmp_path / "scene" / "mesh.obj").read_bytes() == (src / "1.obj").read_bytes()


def test_in_place_reuses_the_source_mesh(tmp_path):
    src = export(tmp_path / "ms")
    s = convert(src, src)                                       # reference layout: images_1 next to images
    assert s["source"]["kind"] == "metashape" and Path(s["mesh"]) == src / "1.obj"
    with pytest.raises(InputError, match="1.obj"):             # would need a transformed mesh in place
        convert_metashape(src, src, mesh_frame="chunk")


def test_distortion_undistorted_unless_photos_already_are(tmp_path):
    src = export(tmp_path / "ms", cams_xml("<k1>-0.05</k1><p2>0.001</p2>"))
    s = convert_metashape(src, tmp_path / "scene")
    assert s["undistortion"]["models"] == ["Metashape frame (k1, p2)"] and s["undistortion"]["views"] == 1
    K = read_mvsnet_cam(tmp_path / "scene" / "cams_1" / "IMG_1_cam.txt")[1]
    assert K[0, 0] == K1[0, 0] and K[1, 1] == K1[1, 1]                    # focal lengths kept
    # --images-undistorted: the photos are used as they are with the calibration's K
    s = convert_metashape(src, tmp_path / "as_is", undistorted=True)
    assert s["undistortion"] is None
    assert np.array_equal(read_mvsnet_cam(tmp_path / "as_is" / "cams_1" / "IMG_1_cam.txt")[1], K1)


def test_skew_resampled_or_refused(tmp_path):
    """Skew (b2) cannot be represented by a pinhole K: the photo is resampled without it, and
    photos used as they are (--images-undistorted) are refused."""
    src = export(tmp_path / "ms", cams_xml("<b2>0.5</b2>"))
    s = convert_metashape(src, tmp_path / "scene")
    assert s["undistortion"]["models"] == ["Metashape frame (b2)"]
    assert read_mvsnet_cam(tmp_path / "scene" / "cams_1" / "IMG_1_cam.txt")[1][0, 1] == 0
    with pytest.raises(InputError, match="skew"):
        convert_metashape(src, tmp_path / "as_is", undistorted=True)


def test_non_frame_sensor_refused(tmp_path):
    src = export(tmp_path / "ms", cams_xml().replace('label="cam A" type="frame"', 'label="cam A" type="fisheye"'))
    with pytest.raises(InputError, match="fisheye"):
        convert_metashape(src, tmp_path / "scene")


def test_cameras_without_photos_are_skipped(tmp_path):
    extra = f'<camera id="3" sensor_id="0" label="IMG_9"><transform>{transform_text(RC1, TC1)}</transform></camera>'
    src = export(tmp_path / "ms", cams_xml(extra_cameras=extra))
    s = convert_metashape(src, tmp_path / "scene")
    assert s["views"] == 2 and any("no photo" in n for n in s["notes"])
    (src / "images" / "IMG_1.png").unlink()
    (src / "images" / "IMG_2.JPG").unlink()
    with pytest.raises(InputError, match="no aligned camera has a photo"):
        convert_metashape(src, tmp_path / "scene2")


def test_georeferenced_chunk_is_noted(tmp_path):
    xml = cams_xml().replace('LOCAL_CS["Local Coordinates (m)",LOCAL_DATUM["Local Datum",0],UNIT["metre",1]]',
                             'GEOGCS["WGS 84",DATUM["World Geodetic System 1984"]]')
    s = convert_metashape(export(tmp_path / "ms", xml), tmp_path / "scene")
    assert any("geocentric" in n for n in s["notes"])


def test_bad_xml(tmp_path):
    src = export(tmp_path / "ms", "<document><chunk/></document>")
    with pytest.raises(InputError, match="cams.xml"):
        convert_metashape(src, tmp_path / "scene")
    (src / "cams.xml").write_text("not xml")
    with pytest.raises(InputError, match="Export Cameras"):
        convert_metashape(src, tmp_path / "scene")


def test_labels_with_paths_and_geocentric_component(tmp_path):
    """Metashape 2.x style: per-component transform with geocentric translation, labels holding
    the photo's full path. --scene-frame chunk keeps coordinates small; world keeps them exact."""
    big_T = np.array([-2499366.5, -4256836.5, 4029218.0])
    xml = cams_xml(style="component").replace(
        " ".join(repr(float(x)) for x in T0), " ".join(repr(float(x)) for x in big_T))
    xml = xml.replace('label="IMG_1"', 'label="/data/flight/IMG_1.png"')
    xml = xml.replace("LOCAL_CS[", "GEOGCS[")
    src = export(tmp_path / "ms", xml, mesh_frame="chunk")
    s = convert_metashape(src, tmp_path / "world", mesh_frame="chunk")
    assert s["views"] == 2
    assert any("far from the origin" in n for n in s["notes"]) and any("geocentric" in n for n in s["notes"])
    E, _, _ = read_mvsnet_cam(tmp_path / "world" / "cams_1" / "IMG_1_cam.txt")
    R, c = R0 @ RC1, S0 * R0 @ TC1 + big_T
    assert np.allclose(E[:3, :3], R.T, atol=0) and np.allclose(-E[:3, :3].T @ E[:3, 3], c, rtol=0, atol=1e-9)
    s = convert_metashape(src, tmp_path / "chunk", mesh_frame="chunk", scene_frame="chunk")
    assert not any("far from the origin" in n for n in s["notes"])
    assert (tmp_path / "chunk" / "mesh.obj").read_bytes() == (src / "1.obj").read_bytes()
    E, _, _ = read_mvsnet_cam(tmp_path / "chunk" / "cams_1" / "IMG_1_cam.txt")
    assert np.array_equal(E, expected_E(RC1, TC1, chunk=True))
