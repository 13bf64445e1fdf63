"""Camera path export of an animated camera, and image strips in the sequencer."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

KEYS = {  # frame -> (location, rotation_euler, lens, shift_x, shift_y)
    1: ((0.0, -5.0, 1.0), (math.radians(80), 0.0, 0.0), 35.0, 0.0, 0.0),
    3: ((2.0, -4.0, 1.5), (math.radians(70), 0.0, math.radians(20)), 50.0, 0.1, -0.05),
}


def euler_xyz(rx, ry, rz) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def expected_frame(f: int, W: int, H: int):
    """Linear interpolation of the keys, turned into OpenCV matrices by hand."""
    t = (f - 1) / 2.0
    (l0, r0, lens0, sx0, sy0), (l1, r1, lens1, sx1, sy1) = KEYS[1], KEYS[3]
    lerp = lambda a, b: np.asarray(a, float) * (1 - t) + np.asarray(b, float) * t  # noqa: E731
    loc, rot = lerp(l0, l1), lerp(r0, r1)
    lens, sx, sy = lerp(lens0, lens1), lerp(sx0, sx1), lerp(sy0, sy1)
    R_bl = euler_xyz(*rot)                      # Blender camera axes in world
    R_cv = R_bl @ np.diag([1.0, -1.0, -1.0])    # OpenCV camera axes in world
    E = np.eye(4)
    E[:3, :3] = R_cv.T
    E[:3, 3] = -R_cv.T @ loc
    fx = lens * W / 36.0                         # default 36 mm sensor, horizontal for landscape
    K = np.array([[fx, 0, W / 2 - sx * W], [0, fx, H / 2 + sy * W], [0, 0, 1]])
    return K, E


@pytest.fixture
def animated_camera(blank, bpy_module):
    bpy = bpy_module
    edit = bpy.context.preferences.edit
    saved = edit.keyframe_new_interpolation_type
    edit.keyframe_new_interpolation_type = "LINEAR"
    data = bpy.data.cameras.new("shot")
    ob = bpy.data.objects.new("shot", data)
    blank.collection.objects.link(ob)
    ob.rotation_mode = "XYZ"
    for f, (loc, rot, lens, sx, sy) in KEYS.items():
        ob.location, ob.rotation_euler = loc, rot
        data.lens, data.shift_x, data.shift_y = lens, sx, sy
        ob.keyframe_insert("location", frame=f)
        ob.keyframe_insert("rotation_euler", frame=f)
        for prop in ("lens", "shift_x", "shift_y"):
            data.keyframe_insert(prop, frame=f)
    edit.keyframe_new_interpolation_type = saved
    blank.camera = ob
    blank.frame_start, blank.frame_end = 1, 3
    blank.render.resolution_x, blank.render.resolution_y = 64, 48
    blank.render.fps, blank.render.fps_base = 30, 1.001
    return ob


def test_keyframed_camera_path(blank, bpy_module, animated_camera, tmp_path):
    from backend.campath import read_camera_path
    from xscale_blender import campath_export
    blank.frame_set(2)
    out = tmp_path / "path.json"
    numbers = campath_export.export_camera_path(bpy_module.context, str(out))
    assert numbers == [1, 2, 3]
    assert blank.frame_current == 2                      # restored
    data = json.loads(out.read_text())
    assert data["version"] == 1 and data["fps"] == pytest.approx(30 / 1.001)
    frames, cams, _fps = read_camera_path(out)
    assert frames == [1, 2, 3]
    for f, cam in zip(frames, cams):
        K, E = expected_frame(f, 64, 48)
        assert (cam.width, cam.height) == (64, 48)
        np.testing.assert_allclose(cam.K, K, rtol=1e-6, atol=1e-6 * 64)
        np.testing.assert_allclose(cam.world_to_camera, E, atol=1e-6)
    # the middle frame really is interpolated (lens and shift animated)
    assert cams[1].fx == pytest.approx((35 + 50) / 2 * 64 / 36, rel=1e-6)


def test_path_uses_render_percentage_and_step(blank, bpy_module, animated_camera, tmp_path):
    from backend.campath import read_camera_path
    from xscale_blender import campath_export
    blank.render.resolution_percentage = 50
    blank.frame_step = 2
    campath_export.export_camera_path(bpy_module.context, str(tmp_path / "p.json"))
    frames, cams, _ = read_camera_path(tmp_path / "p.json")
    assert frames == [1, 3]
    K, _ = expected_frame(3, 32, 24)
    assert (cams[1].width, cams[1].height) == (32, 24)
    np.testing.assert_allclose(cams[1].K, K, rtol=1e-6, atol=1e-5)


def test_orthographic_camera_rejected(blank, bpy_module, animated_camera, tmp_path):
    from xscale_blender import campath_export
    animated_camera.data.type = "ORTHO"
    with pytest.raises(ValueError, match="perspective"):
        campath_export.export_camera_path(bpy_module.context, str(tmp_path / "p.json"))



def test_export_operator_writes_the_path_a_script_names(blank, bpy_module, animated_camera, tmp_path):
    """Export Camera Path from a script: the file it names (the UI's file browser fills it in);
    without one the operator stops with an error."""
    bpy = bpy_module
    out = tmp_path / "op.json"
    assert bpy.ops.xscale.export_path(filepath=str(out)) == {"FINISHED"}
    assert json.loads(out.read_text())["version"] == 1
    with pytest.raises(RuntimeError, match="Choose a file"):
        bpy.ops.xscale.export_path()

def write_frames(folder, numbers, size=(8, 6)):
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        rgba = np.zeros((size[1], size[0], 4), np.uint8)
        rgba[..., 0], rgba[..., 3] = 200, 128
        Image.fromarray(rgba).save(folder / f"frame_{n:06d}.png")
    return [f"frame_{n:06d}.png" for n in numbers]


def test_image_strip(blank, bpy_module, tmp_path):
    from xscale_blender import sequencer
    files = write_frames(tmp_path / "frames", [5, 6, 7])
    strip = sequencer.add_image_strip(blank, str(tmp_path / "frames"), files, name="XScale shot",
                                      channel=3, frame_start=5)
    assert [e.filename for e in strip.elements] == files
    assert strip.frame_final_duration == 3
    assert (strip.frame_final_start, strip.frame_final_end) == (5, 8)
    assert strip.channel == 3 and strip.blend_type == "ALPHA_OVER" and strip.alpha_mode == "STRAIGHT"
    # a second render of the same path replaces the strip instead of stacking another one
    sequencer.add_image_strip(blank, str(tmp_path / "frames"), files[:2], name="XScale shot",
                              channel=3, frame_start=5)
    strips = sequencer.all_strips(blank)
    assert len(strips) == 1 and strips[0].frame_final_duration == 2
