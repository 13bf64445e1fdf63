"""The input-source registry (backend.prepare.sources): detection, the option check and its
messages, and that a new source is one module plus one entry."""
from __future__ import annotations

import sys
import types

import pytest
from helpers import python_without

from backend.errors import InputError
from backend.prepare import sources
from backend.prepare.sources import Flag, SourceFormat, convert, detect_source


def test_detection_order_and_kinds(tmp_path):
    colmap = tmp_path / "ws"
    (colmap / "sparse").mkdir(parents=True)
    (colmap / "sparse" / "cameras.txt").write_text("")
    (colmap / "cams.xml").write_text("")                # a COLMAP model wins over an XML next to it
    assert detect_source(colmap) == "colmap"
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "export.xml").write_text("")
    assert detect_source(meta) == "metashape" and detect_source(meta / "export.xml") == "metashape"
    mvs = tmp_path / "mvs"
    (mvs / "cams_2").mkdir(parents=True)
    assert detect_source(mvs) == "mvsnet"


def test_detection_messages(tmp_path):
    with pytest.raises(InputError, match="^.*nowhere: source folder not found.$"):
        detect_source(tmp_path / "nowhere")
    (tmp_path / "photo.jpg").write_text("")
    with pytest.raises(InputError) as e:
        detect_source(tmp_path / "photo.jpg")
    assert str(e.value).endswith("photo.jpg: expected a folder (COLMAP workspace, Metashape export, MVSNet "
                                 "scene, nerfstudio dataset, RealityScan export, Meshroom export, OpenMVS scene, "
                                 "folder of photos) or a Metashape cameras .xml, a nerfstudio transforms.json, a "
                                 "Bundler .out, a Meshroom .sfm, or an OpenMVS .mvs.")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as e:
        detect_source(tmp_path / "empty")
    assert str(e.value).endswith("empty: cannot tell what this is; expected a COLMAP model (sparse/ with cameras "
                                 "and images files), a Metashape cams.xml, an MVSNet scene (cams/), a nerfstudio "
                                 "transforms.json, a RealityScan export (Bundler .out or XMP camera files), a Meshroom "
                                 "cameras.sfm (AliceVision SfMData), an OpenMVS scene (.mvs), or a "
                                 "folder of photos only (no cameras: structure from motion); pass --from KIND.")


def test_option_check_messages(tmp_path):
    with pytest.raises(InputError, match=r"^--from nothing: choose one of auto, colmap, metashape, mvsnet, "
                                         r"nerfstudio, realityscan, meshroom, openmvs, photos\.$"):
        convert(tmp_path, tmp_path / "out", source="nothing")
    with pytest.raises(InputError, match=r": --model, --xml does not apply to mvsnet input\.$"):
        convert(tmp_path, tmp_path / "out", source="mvsnet", xml="c.xml", model="m", level=None,
                undistorted=False, copy_images=False)


def test_registry_loads_without_numpy():
    """The command line builds its parser, and the add-on its menu, from the registry alone."""
    code = ("from backend.prepare import SOURCES\n"
            "assert [s.name for s in SOURCES] == ['colmap', 'metashape', 'mvsnet', 'nerfstudio', 'realityscan', "
            "'meshroom', 'openmvs', 'photos']\n"
            "from backend.cli import build_parser\n"
            "assert 'prepare' in build_parser().format_help()\n")
    r = python_without(("numpy",), code)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def toy_source(monkeypatch):
    """A source added as the instructions in sources.py say: a module and one entry."""
    module = types.ModuleType("backend.prepare.toy")
    module.detect = lambda src: (src / "toy.json").is_file()
    module.convert_toy = lambda src, dst, **options: {"kind": "toy", "src": str(src), "options": options}
    monkeypatch.setitem(sys.modules, module.__name__, module)
    entry = SourceFormat("toy", "Toy", "toy export", "a toy.json", "toy cameras with photos and a mesh",
                         flags=(sources.IMAGES, Flag("frames", "--frames", "frames to read", kind=int)))
    monkeypatch.setattr(sources, "SOURCES", (*sources.SOURCES, entry))
    return entry


def test_a_new_source_is_one_module_and_one_entry(toy_source, tmp_path):
    src = tmp_path / "capture"
    src.mkdir()
    (src / "toy.json").write_text("{}")
    assert detect_source(src) == "toy"
    summary = convert(src, tmp_path / "out", images="photos", frames=3, model=None, copy_images=True)
    assert summary["kind"] == "toy"
    assert summary["options"] == {"images": "photos", "frames": 3, "copy_images": True}
    with pytest.raises(InputError, match="--frames does not apply to colmap input"):
        convert(src, tmp_path / "out", source="colmap", frames=3)
    (src / "toy.json").unlink()
    with pytest.raises(InputError, match=r"an MVSNet scene \(cams/\), .*, or a toy.json; pass --from KIND"):
        detect_source(src)


def _prepare_parser():
    import argparse
    from backend.prepare_cli import add_prepare_parser
    return add_prepare_parser(argparse.ArgumentParser().add_subparsers())


def test_cli_follows_the_registry(toy_source, tmp_path, monkeypatch):
    p = _prepare_parser()
    args = p.parse_args([str(tmp_path), "--from", "toy", "--frames", "3", "--images", "photos"])
    assert (args.source, args.frames, args.images) == ("toy", 3, "photos")
    toy_group = next(g for g in p._action_groups if g.title == "Toy")
    assert [a.option_strings for a in toy_group._group_actions] == [["--frames"]]   # --images is shared
    assert "Toy" in p.format_help() and "toy cameras with photos and a mesh" in p.format_help()

    seen = {}
    summary = {"views": 0, "images_dir": "i", "cams_dir": "c", "mesh": "m", "level": 1, "notes": []}
    monkeypatch.setattr(sources, "convert", lambda src, dst, **kw: seen.update(kw) or summary)
    args = p.parse_args([str(tmp_path), "--from", "toy", "--frames", "3", "--no-check", "--json"])
    assert args.func(args) == 0
    assert seen["source"] == "toy" and seen["frames"] == 3 and seen["downsample"] == 1
    assert seen["xml"] is None and seen["level"] is None        # every source's flags are passed on
