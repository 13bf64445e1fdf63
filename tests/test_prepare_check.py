"""`check` report (coverage, unreached views, frame-mismatch hints) and the prepare/check CLI."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import pytest
from PIL import Image

from backend import events
from backend.cameras import Camera, look_at, write_mvsnet_cam
from backend.errors import InputError
from backend.meshio import Mesh, write_ply
from backend.prepare import check_scene, format_report
from backend.prepare_cli import add_parsers

W, H = 40, 30
K = np.array([[30.0, 0, W / 2], [0, 30.0, H / 2], [0, 0, 1]])


def make_scene(root: Path, poses: dict[str, np.ndarray], mesh_offset=(0.0, 0.0, 0.0)) -> Path:
    """MVSNet scene: a 2x2 square at z = 0 and one 40x30 photo per pose."""
    (root / "images").mkdir(parents=True)
    (root / "cams").mkdir()
    for name, E in poses.items():
        Image.new("RGB", (W, H), (90, 120, 150)).save(root / "images" / f"{name}.png")
        write_mvsnet_cam(root / "cams" / f"{name}_cam.txt", Camera(W, H, K, E, name))
    v = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float32) + np.float32(mesh_offset)
    write_ply(root / "mesh.ply", Mesh(v, np.array([[0, 1, 2], [0, 2, 3]], np.int32)))
    return root


POSES = {
    "above": look_at((0, 0, 3), (0, 0, 0), up=(0, 1, 0)),
    "close": look_at((0, 0, 0.5), (0, 0, 0), up=(0, 1, 0)),            # the square fills the whole image
    "oblique": look_at((2, 0, 2), (0, 0, 0), up=(0, 1, 0)),
    "away": look_at((0, 0, 3), (0, 0, 6), up=(0, 1, 0)),               # looks away from the mesh
}


def test_report_contents(tmp_path):
    r = check_scene(make_scene(tmp_path / "s", POSES))
    views = {v["name"]: v for v in r["views"]}
    assert r["n_views"] == 4 and r["resolutions"] == {"40x30": 4}
    assert r["mesh"]["vertices"] == 4 and r["mesh"]["faces"] == 2 and r["mesh"]["file_bytes"] > 0
    assert views["close"]["coverage"] == 1.0
    # From z = 3 with f = 30 the square spans 2 * 30 / 3 = 20 px: 20 x 20 of 40 x 30 pixels.
    assert views["above"]["coverage"] == pytest.approx(400 / 1200)
    assert 0 < views["oblique"]["coverage"] < 1
    assert views["away"]["coverage"] == 0 and views["away"]["vertices_in_front"] == 0
    assert r["views_not_reached"] == ["away"] and r["status"] == "warning"
    assert views["above"]["centre_in_image"] and not views["away"]["centre_in_image"]
    assert r["views_seeing_mesh_centre"] == 3
    json.dumps(r)                                        # serialisable for --json and events
    text = format_report(r)
    assert "views the mesh does not reach: away" in text and "WARNING" in text


def test_views_the_mesh_covers_poorly_are_named(tmp_path):
    """From z = 40 the square spans 1.5 px of 40 x 30: the report names the view, not only counts it."""
    far = look_at((0, 0, 40), (0, 0, 0), up=(0, 1, 0))
    r = check_scene(make_scene(tmp_path / "s", {"above": POSES["above"], "far": far}))
    assert r["views_low_coverage"] == ["far"]
    text = format_report(r)
    assert "views the mesh covers poorly (< 1% of their pixels): far" in text, text
    assert "4 vertices, 2 triangles" in text


def test_reduced_resolution_coverage(tmp_path):
    big = Camera(400, 300, K * [[10], [10], [1]], POSES["above"], "big")
    root = make_scene(tmp_path / "s", {"above": POSES["above"]})
    Image.new("RGB", (400, 300)).save(root / "images" / "above.png")
    write_mvsnet_cam(root / "cams" / "above_cam.txt", big)
    r = check_scene(root, max_side=40)
    assert r["views"][0]["coverage"] == pytest.approx(400 / 1200)


def test_mesh_in_another_frame_is_an_error(tmp_path):
    r = check_scene(make_scene(tmp_path / "s", POSES, mesh_offset=(500.0, 0, 0)))
    assert r["status"] == "error" and "different frames" in r["errors"][0]
    assert len(r["views_not_reached"]) == 4


def test_opengl_poses_are_hinted(tmp_path):
    flip = np.diag([1.0, -1, -1, 1])                     # OpenGL camera axes: y up, z back
    r = check_scene(make_scene(tmp_path / "s", {k: flip @ E for k, E in POSES.items() if k != "away"}))
    assert any("OpenGL" in w for w in r["warnings"])


def test_no_coverage_mode(tmp_path):
    r = check_scene(make_scene(tmp_path / "s", POSES), coverage=False)
    assert all(v["coverage"] is None for v in r["views"]) and r["views_not_reached"] == ["away"]
    assert "-" in format_report(r)


# --- CLI ----------------------------------------------------------------------------------

def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="backend")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def run(argv: list[str], capsys) -> tuple[int, list[dict], str]:
    args = parse(argv)
    events.set_stream(sys.stdout)        # the stream capsys installed, not the one at import time
    code = args.func(args)
    out = capsys.readouterr().out
    evs = []
    for ln in out.splitlines():
        try:
            obj = json.loads(ln)
        except ValueError:
            continue
        if isinstance(obj, dict) and "event" in obj:
            evs.append(obj)
    return code, evs, out


def test_cli_check(tmp_path, capsys):
    scene = make_scene(tmp_path / "s", POSES)
    code, evs, out = run(["check", str(scene)], capsys)
    assert code == 0 and "Scene" in out
    done = [e for e in evs if e["event"] == "done"][0]
    assert done["stage"] == "check" and done["views_not_reached"] == ["away"]
    assert any(e["event"] == "progress" and e["stage"] == "check" for e in evs)
    code, evs, out = run(["check", str(scene), "--json", "--no-coverage"], capsys)
    report = json.loads(out[out.index("{\n"):out.index("\n}\n") + 2])
    assert report["n_views"] == 4 and report["coverage_measured"] is False


def test_cli_check_fails_when_mesh_unreachable(tmp_path, capsys):
    scene = make_scene(tmp_path / "s", POSES, mesh_offset=(500.0, 0, 0))
    with pytest.raises(InputError, match="not seen by any camera"):
        run(["check", str(scene)], capsys)


def test_cli_prepare_mvsnet_downsample(tmp_path, capsys):
    scene = make_scene(tmp_path / "s", {k: v for k, v in POSES.items() if k != "away"})
    code, evs, out = run(["prepare", str(scene), "--out", str(tmp_path / "out"), "--downsample", "2"], capsys)
    assert code == 0
    done = [e for e in evs if e["event"] == "done" and e["stage"] == "prepare"][0]
    assert done["views"] == 3 and done["level"] == 2 and done["status"] == "ok"
    assert (tmp_path / "out" / "images_2" / "close.png").is_file()
    assert "Scene" in out                                 # the check report follows the conversion


def test_cli_rejects_options_of_another_source(tmp_path, capsys):
    scene = make_scene(tmp_path / "s", POSES)
    with pytest.raises(InputError, match="--mesh-frame does not apply"):
        run(["prepare", str(scene), "--out", str(tmp_path / "o"), "--mesh-frame", "chunk"], capsys)


@pytest.fixture(autouse=True)
def _restore_event_stream():
    saved = events._stream
    yield
    events.set_stream(saved)
