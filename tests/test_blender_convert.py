"""File > Import > XScale-NVS from capture or photos: convert a source folder into an MVSNet
scene in Blender's Python (numpy only), import it, and keep the check report on the collection."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bpy")

from blender_fixtures import bumpy_grid, look_at  # noqa: E402
from helpers import rotmat_to_qvec  # noqa: E402

# name, width, height, fx, fy, cx, cy, eye (PINHOLE: fx, fy, cx, cy)
COLMAP_VIEWS = [
    ("a.png", 48, 32, 52.5, 50.25, 24.75, 15.5, (0.3, -3.0, 2.0)),
    ("b.png", 32, 48, 44.0, 47.5, 15.25, 25.5, (2.6, 1.2, 1.8)),
    ("c.png", 40, 30, 41.0, 41.0, 20.0, 15.0, (-2.4, 1.5, 2.2)),
]


def colmap_workspace(root: Path, views=COLMAP_VIEWS, model: str = "PINHOLE") -> Path:
    """An image_undistorter-like folder: images/, sparse/ (text model), meshed-poisson.obj."""
    from PIL import Image
    (root / "images").mkdir(parents=True)
    (root / "sparse").mkdir()
    cams, imgs = [], []
    rng = np.random.default_rng(1)
    for i, (name, w, h, fx, fy, cx, cy, eye) in enumerate(views, start=1):
        params = f"{fx} {fy} {cx} {cy}" + (" -0.2 0 0 0" if model == "OPENCV" else "")
        cams.append(f"{i} {model} {w} {h} {params}")
        E = look_at(eye, (0.0, 0.0, 0.0))
        q = rotmat_to_qvec(E[:3, :3])
        imgs.append(f"{i} {' '.join(repr(float(v)) for v in q)} "
                    f"{' '.join(repr(float(v)) for v in E[:3, 3])} {i} {name}\n")
        colour = rng.integers(40, 220, size=3, dtype=np.uint8)
        Image.fromarray(np.broadcast_to(colour, (h, w, 3)).copy()).save(root / "images" / name)
    (root / "sparse" / "cameras.txt").write_text("\n".join(cams) + "\n")
    (root / "sparse" / "images.txt").write_text("\n".join(imgs))
    v, f = bumpy_grid(5)
    with open(root / "meshed-poisson.obj", "w") as fh:
        fh.writelines(f"v {x!r} {y!r} {z!r}\n" for x, y, z in v)
        fh.writelines(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in f)
    return root


def opencv_of(ob) -> tuple[np.ndarray, np.ndarray]:
    """(K, world_to_camera) read back from an imported Blender camera."""
    from xscale_blender.core import camera_convert as cc
    from xscale_blender import importer
    d = ob.data
    w, h = (int(v) for v in ob[importer.P_RESOLUTION])
    pax, pay = (float(v) for v in ob[importer.P_PIXEL_ASPECT])
    bc = cc.BlenderCamera(lens=d.lens, shift_x=d.shift_x, shift_y=d.shift_y, resolution_x=w, resolution_y=h,
                          pixel_aspect_x=pax, pixel_aspect_y=pay, sensor_width=d.sensor_width,
                          sensor_height=d.sensor_height, sensor_fit=d.sensor_fit,
                          matrix_world=np.array(ob.matrix_world))
    return cc.blender_to_opencv(bc)


def cameras_of(coll):
    return sorted((ob for ob in coll.all_objects if ob.type == "CAMERA"), key=lambda ob: ob.name)


def test_menu_entry_and_operator_registered(addon, bpy_module):
    from xscale_blender import import_ops
    bpy = bpy_module
    assert hasattr(bpy.ops.import_scene, "xscale_convert")
    assert import_ops.menu_import in bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize()
    props = bpy.ops.import_scene.xscale_convert.get_rna_type().properties
    for name in ("directory", "output_dir", "source", "downsample", "import_mesh", "show_photos",
                 "test_every", "set_active", "check_scene"):
        assert name in props, name
    assert props["downsample"].default == 1
    assert {e.identifier for e in props["source"].enum_items} == {"auto", "colmap", "metashape", "nerfstudio",
                                                                  "realityscan", "meshroom", "openmvs",
                                                                  "photos"}
    rna = bpy.ops.import_scene.xscale_convert.get_rna_type()
    assert rna.name == "Import Capture or Photos"
    assert rna.description == ("Convert a COLMAP workspace, Metashape export, nerfstudio dataset, RealityScan "
                               "export, Meshroom export, OpenMVS scene, or folder of photos into an MVSNet scene "
                               "folder, then import it")   # the registry's
    assert props["directory"].description.startswith("COLMAP workspace, Metashape export, nerfstudio dataset, "
                                                     "RealityScan export, Meshroom export, OpenMVS scene, or folder "
                                                     "of photos (")
    with pytest.raises(RuntimeError, match="Choose a COLMAP, Metashape, nerfstudio, RealityScan, Meshroom, OpenMVS, "
                                           "or Photos folder"):
        bpy.ops.import_scene.xscale_convert(directory="")
    assert "check_scene" in bpy.ops.import_scene.xscale_mvsnet.get_rna_type().properties


def test_convert_and_import_colmap(blank, bpy_module, tmp_path, capsys):
    bpy = bpy_module
    src = colmap_workspace(tmp_path / "ws")
    assert bpy.ops.import_scene.xscale_convert(directory=str(src) + "/", show_photos=False,
                                               test_every=0) == {"FINISHED"}
    dst = tmp_path / "ws_mvsnet"                     # the default output folder
    assert (dst / "cams_1" / "a_cam.txt").is_file() and (dst / "images_1" / "b.png").is_file()

    coll = bpy.data.collections[f"XScale {dst.name}"]
    cams = cameras_of(coll)
    assert [ob.name for ob in cams] == ["a", "b", "c"]
    for ob, (_n, w, h, fx, fy, cx, cy, eye) in zip(cams, COLMAP_VIEWS):
        K, E = opencv_of(ob)
        np.testing.assert_allclose(K, [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(E, look_at(eye, (0.0, 0.0, 0.0)), atol=1e-6)
        assert tuple(ob["xscale_resolution"]) == (w, h)
    assert any(ob.type == "MESH" for ob in coll.all_objects)
    assert Path(blank.xscale.scene_dir) == dst.resolve()

    report = coll["xscale_report"]
    assert "views: 3" in report and "mesh coverage" in report
    out = capsys.readouterr().out
    assert "views: 3" in out                         # the report goes to the console too
    assert '{"event"' not in out                     # backend events are silenced in-process


def test_explicit_output_and_source(blank, bpy_module, tmp_path, monkeypatch):
    bpy = bpy_module
    src = colmap_workspace(tmp_path / "ws")
    monkeypatch.setitem(sys.modules, "PIL", None)    # downsample 1 needs no Pillow
    out = tmp_path / "scene"
    assert bpy.ops.import_scene.xscale_convert(directory=str(src), output_dir=str(out), source="colmap",
                                               show_photos=False, check_scene=False) == {"FINISHED"}
    coll = bpy.data.collections["XScale scene"]
    assert len(cameras_of(coll)) == 3 and "xscale_report" not in coll


def test_distorted_model_is_undistorted_by_the_backend(blank, bpy_module, tmp_path, monkeypatch):
    """A COLMAP model with lens distortion: Blender's Python (no OpenCV) hands the conversion to
    `backend prepare` in the backend environment, then imports the pinhole scene it wrote."""
    from backend.prepare.lens import colmap_lens, pinhole_canvas
    bpy = bpy_module
    src = colmap_workspace(tmp_path / "ws", model="OPENCV")
    monkeypatch.setitem(sys.modules, "cv2", None)            # as in Blender's own Python
    monkeypatch.setenv("XSCALE_BACKEND_PYTHON", sys.executable)
    assert bpy.ops.import_scene.xscale_convert(directory=str(src), show_photos=False, test_every=0) == {"FINISHED"}
    dst = tmp_path / "ws_mvsnet"
    coll = bpy.data.collections[f"XScale {dst.name}"]
    cams = cameras_of(coll)
    assert [ob.name for ob in cams] == ["a", "b", "c"]
    for ob, (name, w, h, fx, fy, cx, cy, eye) in zip(cams, COLMAP_VIEWS):
        canvas = pinhole_canvas(colmap_lens("OPENCV", [fx, fy, cx, cy, -0.2, 0, 0, 0], w, h))
        K, E = opencv_of(ob)
        np.testing.assert_allclose(K, canvas.K, rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(E, look_at(eye, (0.0, 0.0, 0.0)), atol=1e-6)
        assert tuple(ob["xscale_resolution"]) == (canvas.width, canvas.height) != (w, h)
        assert (dst / "masks_1" / name).is_file()
    report = coll["xscale_report"]
    assert "views: 3" in report and "photos undistorted by prepare: 3 view(s), lens model COLMAP OPENCV (k1)" in report


def test_distorted_model_without_backend_names_the_command(blank, bpy_module, tmp_path, monkeypatch):
    bpy = bpy_module
    src = colmap_workspace(tmp_path / "ws", model="OPENCV")
    monkeypatch.delenv("XSCALE_BACKEND_PYTHON", raising=False)
    n_before = len(bpy.data.objects)
    with pytest.raises(RuntimeError, match="backend Python set.*backend prepare"):
        bpy.ops.import_scene.xscale_convert(directory=str(src), show_photos=False)
    assert len(bpy.data.objects) == n_before and not (tmp_path / "ws_mvsnet").exists()


def test_mvsnet_import_stores_report(blank, bpy_module, tiny_scene, capsys):
    bpy = bpy_module
    assert bpy.ops.import_scene.xscale_mvsnet(directory=str(tiny_scene), show_photos=False) == {"FINISHED"}
    coll = bpy.data.collections[f"XScale {tiny_scene.name}"]
    assert "views: 3" in coll["xscale_report"]
    assert "views: 3" in capsys.readouterr().out
    bpy.ops.wm.read_homefile(use_empty=True)
    assert bpy.ops.import_scene.xscale_mvsnet(directory=str(tiny_scene), show_photos=False,
                                              check_scene=False) == {"FINISHED"}
    assert "xscale_report" not in bpy.data.collections[f"XScale {tiny_scene.name}"]


def test_views_that_miss_the_mesh_are_named(blank, bpy_module, tmp_path):
    bpy = bpy_module
    away = ("away.png", 40, 30, 41.0, 41.0, 20.0, 15.0, (0.0, 0.0, 5.0))
    src = colmap_workspace(tmp_path / "ws", views=COLMAP_VIEWS + [away])
    # point the last camera away from the mesh: look up instead of down
    lines = (src / "sparse" / "images.txt").read_text().splitlines()
    E = look_at((0.0, 0.0, 5.0), (0.0, 0.0, 10.0))
    q = rotmat_to_qvec(E[:3, :3])
    lines[-1] = f"4 {' '.join(repr(float(v)) for v in q)} {' '.join(repr(float(v)) for v in E[:3, 3])} 4 away.png"
    (src / "sparse" / "images.txt").write_text("\n".join(lines) + "\n")
    assert bpy.ops.import_scene.xscale_convert(directory=str(src), show_photos=False) == {"FINISHED"}
    report = bpy.data.collections["XScale ws_mvsnet"]["xscale_report"]
    assert "views: 4" in report and "does not reach: away" in report
