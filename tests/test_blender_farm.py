"""Render farm chunks (Flamenco, Deadline, SLURM arrays: one `blender -b` per frame range) against
the stand-in backend of test_blender_jobs.py: each chunk renders only its range into the shared
output folder, a re-run chunk skips what exists, and the strip is assembled once all frames are
there (reporting the missing ones until then)."""
from __future__ import annotations

import json
import os

import pytest

from test_blender_jobs import fake_python  # noqa: F401 (fixture)


@pytest.fixture
def trained(blank, bpy_module, tiny_scene, fake_python, tmp_path):  # noqa: F811
    bpy = bpy_module
    bpy.ops.import_scene.xscale_mvsnet(directory=str(tiny_scene), show_photos=False)
    blank.xscale.run_dir = str(tmp_path / "run")
    assert bpy.ops.xscale.train() == {"FINISHED"}
    blank.frame_start, blank.frame_end = 1, 10
    return tmp_path / "run" / "renders" / blank.camera.name


def _rendered(out) -> list[int]:
    return sorted(int(p.name[6:12]) for p in out.glob("frame_*.png"))


def _edit(scene):
    """The scene made for `scene`'s strips."""
    import bpy
    return bpy.data.scenes[f"{scene.name} Edit"]


def test_chunks_share_the_folder_then_assemble(blank, bpy_module, trained, tmp_path):
    from xscale_blender import sequencer
    bpy, out = bpy_module, trained
    with pytest.raises(RuntimeError, match=r"10 of 10 frame\(s\) missing .*: 1-10"):
        bpy.ops.xscale.assemble_strip()

    # chunk 1-4 by operator arguments, chunk 7-10 by the scene range (what `blender -s 7 -e 10` sets)
    assert bpy.ops.xscale.render_path(frame_start=1, frame_end=4, add_strip=False) == {"FINISHED"}
    blank.frame_start, blank.frame_end = 7, 10
    assert bpy.ops.xscale.render_path(add_strip=False) == {"FINISHED"}
    blank.frame_start, blank.frame_end = 1, 10
    assert _rendered(out) == [1, 2, 3, 4, 7, 8, 9, 10]
    assert sorted(p.name for p in out.glob("camera_path_*.json")) == [
        "camera_path_000001-000004.json", "camera_path_000007-000010.json"]
    assert sequencer.all_strips(blank) == [] and f"{blank.name} Edit" not in bpy.data.scenes   # chunks leave the edit alone

    with pytest.raises(RuntimeError, match=r"2 of 10 frame\(s\) missing .*: 5-6"):
        bpy.ops.xscale.assemble_strip()

    # a re-run chunk 3-6 renders only what is missing
    before = {n: os.stat(out / f"frame_{n:06d}.png").st_mtime_ns for n in (3, 4)}
    assert bpy.ops.xscale.render_path(frame_start=3, frame_end=6, skip_existing=True,
                                      add_strip=False) == {"FINISHED"}
    path = json.loads((out / "camera_path_000003-000006.json").read_text())
    assert [f["frame"] for f in path["frames"]] == [5, 6]
    assert {n: os.stat(out / f"frame_{n:06d}.png").st_mtime_ns for n in (3, 4)} == before
    assert _rendered(out) == list(range(1, 11))

    assert bpy.ops.xscale.assemble_strip() == {"FINISHED"}
    assert sequencer.all_strips(blank) == []               # F12 of the shot still renders the model
    strips = sequencer.all_strips(_edit(blank))
    assert len(strips) == 1 and strips[0].name == f"XScale {blank.camera.name}"
    assert [e.filename for e in strips[0].elements] == [f"frame_{n:06d}.png" for n in range(1, 11)]
    assert (strips[0].frame_final_start, strips[0].frame_final_duration) == (1, 10)


def test_skip_existing_with_nothing_left_adds_the_strip(blank, bpy_module, trained, tmp_path):
    from xscale_blender import sequencer
    bpy = bpy_module
    assert bpy.ops.xscale.render_path() == {"FINISHED"}           # the whole range, strip added
    assert len(list(trained.glob("frame_*.png"))) == 10
    assert len(sequencer.all_strips(_edit(blank))) == 1
    argv = tmp_path / "argv.json"
    argv.unlink()
    assert bpy.ops.xscale.render_path(skip_existing=True) == {"FINISHED"}
    assert not argv.exists()                                       # no backend job at all
    assert len(sequencer.all_strips(_edit(blank))) == 1 and sequencer.all_strips(blank) == []


def test_the_strip_goes_where_f12_does_not_render_it_and_says_where(blank, bpy_module, trained, capfd):
    """Render Camera Path puts its strip in a scene made for it (following the shot's output size,
    frame rate and view transform), moves an older render's strip out of the shot's own sequencer
    (where F12 and Ctrl-F12 rendered it instead of the model), and reports where it went; a scene
    the user names gets it instead, the shot itself too (then the report warns)."""
    from xscale_blender import render_ops, sequencer
    bpy = bpy_module
    name = f"XScale {blank.camera.name}"
    blank.frame_start, blank.frame_end = 1, 3
    blank.render.fps = 30
    assert bpy.ops.xscale.render_path(add_strip=False) == {"FINISHED"}
    old = sequencer.add_image_strip(blank, str(trained), ["frame_000001.png"], name=name, channel=1, frame_start=1)
    assert blank.render.use_sequencer and len(sequencer.all_strips(blank)) == 1     # what hijacked F12
    capfd.readouterr()
    place = render_ops.add_render_strip(blank, str(trained), [1, 2, 3], "png", name)
    assert old.name not in [st.name for st in sequencer.all_strips(blank)]
    edit = _edit(blank)
    strips = sequencer.all_strips(edit)
    assert [(st.name, st.frame_final_start, st.frame_final_duration) for st in strips] == [(name, 1, 3)]
    assert blank.xscale.strip_scene == edit
    assert (edit.frame_start, edit.frame_end, edit.render.fps) == (1, 3, 30)
    assert (edit.render.resolution_x, edit.render.resolution_y) == (blank.render.resolution_x, blank.render.resolution_y)
    assert edit.view_settings.view_transform == blank.view_settings.view_transform == "Standard"
    assert place == (f"strip '{name}' (frames 1-3, channel 2) is in scene '{edit.name}': switch to it to play "
                     f"the frames; F12 here renders the model (moved out of the sequencer of '{blank.name}')")
    assert bpy.ops.xscale.assemble_strip() == {"FINISHED"}
    assert f"is in scene '{edit.name}'" in capfd.readouterr().out
    # a scene the user chose
    cut = bpy.data.scenes.new("Cut")
    blank.xscale.strip_scene = cut
    render_ops.add_render_strip(blank, str(trained), [1, 2, 3], "png", name)
    assert [st.name for st in sequencer.all_strips(cut)] == [name] and cut.frame_end == 250   # its own range kept
    # the shot itself, when the user asks for it: said plainly
    blank.xscale.strip_scene = blank
    place = render_ops.add_render_strip(blank, str(trained), [1, 2, 3], "png", name)
    assert [st.name for st in sequencer.all_strips(blank)] == [name]
    assert "F12 and Ctrl-F12 here render the strip, not the model" in place


def test_frame_ranges_text():
    from xscale_blender.render_ops import frame_ranges
    assert frame_ranges([7, 1, 2, 3, 9, 10]) == "1-3, 7, 9-10"
    assert frame_ranges(list(range(0, 40, 2)), limit=3) == "0, 2, 4, ..."
