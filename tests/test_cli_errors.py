"""Bad input: one line naming the file and the fix, exit code 2, an error event, no traceback."""

import pytest
import torch

from conftest import cli, expect_error
from helpers import grid_plane


def test_error_missing_image(scene, tmp_path):
    import shutil
    s = tmp_path / "s"
    shutil.copytree(scene, s)
    (s / "images" / "00000002.png").unlink()
    expect_error(cli("cache", "--scene", str(s), "--run", str(tmp_path / "r"), "--device", "cpu"),
                  "00000002_cam.txt", "no image")


def test_error_malformed_cam(scene, tmp_path):
    import shutil
    s = tmp_path / "s"
    shutil.copytree(scene, s)
    (s / "cams" / "00000001_cam.txt").write_text("extrinsic\n1 0 0 0\n")
    expect_error(cli("cache", "--scene", str(s), "--run", str(tmp_path / "r"), "--device", "cpu"),
                  "00000001_cam.txt", "malformed")


def test_error_image_size_disagrees_with_K(scene, tmp_path):
    import shutil
    from PIL import Image
    s = tmp_path / "s"
    shutil.copytree(scene, s)
    Image.new("RGB", (24, 16)).save(s / "images" / "00000003.png")      # half size, full-size K
    expect_error(cli("cache", "--scene", str(s), "--run", str(tmp_path / "r"), "--device", "cpu"),
                  "00000003.png", "24x16")


def test_error_empty_mesh(scene, tmp_path):
    import shutil
    s = tmp_path / "s"
    shutil.copytree(scene, s)
    (s / "1.obj").write_text("# nothing\n")
    expect_error(cli("cache", "--scene", str(s), "--run", str(tmp_path / "r"), "--device", "cpu"),
                  "1.obj", "empty")


def test_error_mesh_no_camera_sees(scene, tmp_path):
    import shutil
    from backend.meshio import write_obj
    s = tmp_path / "s"
    shutil.copytree(scene, s)
    far = grid_plane(4)
    far.vertices[:, 2] -= 100.0                                      # behind/below every camera's view
    far.vertices[:, 0] += 500.0
    write_obj(s / "1.obj", far)
    expect_error(cli("cache", "--scene", str(s), "--run", str(tmp_path / "r"), "--device", "cpu"),
                  "1.obj", "same world frame")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_error_no_cuda(scene, tmp_path):
    expect_error(cli("cache", "--scene", str(scene), "--run", str(tmp_path / "r"), "--device", "cuda"),
                  "--device cuda", "--device cpu")


def test_error_train_without_cache(tmp_path):
    (tmp_path / "empty").mkdir()
    expect_error(cli("train", "--run", str(tmp_path / "empty"), "--device", "cpu"), "backend cache")


def test_a_run_folder_that_does_not_exist_is_named_and_fit_suggested(tmp_path):
    """eval, render and train on a mistyped --run say that the folder is not there and how to
    make one, not that its ray cache is missing."""
    import shlex
    missing = tmp_path / "my runs" / "castle"
    (tmp_path / "p.json").write_text("{}")
    for args in (("eval",), ("train",), ("render", "--path", str(tmp_path / "p.json"), "--out", str(tmp_path / "o"))):
        expect_error(cli(*args, "--run", str(missing), "--device", "cpu"),
                     f"{missing}: the run folder does not exist",
                     f"python -m backend fit --scene SCENE --run {shlex.quote(str(missing))}")
    assert not (tmp_path / "my runs").exists() and not (tmp_path / "o").exists()
    expect_error(cli("eval", "--run", str(tmp_path / "p.json"), "--device", "cpu"),
                 "p.json: --run names a file, not a run folder", "fit --scene SCENE")


def test_run_settings_fallbacks_and_errors(tmp_path):
    """RUN/config.json is read in one place (RunFolder.settings): a file without the supersampling
    (a hand-written run for the render server) means 1; one that is not a run's settings is a
    one-line error naming the file."""
    import json
    from backend.errors import InputError
    from backend.runfolder import RunFolder
    run = RunFolder(tmp_path)
    with pytest.raises(InputError, match="not a run folder"):
        run.settings(need_cache=False)
    with pytest.raises(InputError, match="no complete ray cache"):
        run.settings()
    run.config.write_text(json.dumps({"version": 1, "mesh": "m.ply", "views": [{"name": "a"}]}))
    s = run.settings(need_cache=False)
    assert s.ss == 1 and s.view_names == ["a"] and s.test_views == [] and s.mesh == "m.ply"
    for bad in ("[1]", '{"mesh": "m.ply"}'):
        run.config.write_text(bad)
        with pytest.raises(InputError, match="config.json: not a run's settings"):
            run.settings(need_cache=False)


@pytest.mark.skipif(__import__("importlib").util.find_spec("tinycudann") is not None,
                    reason="checks the message when tinycudann is missing")
def test_error_tcnn_backend_unavailable(run):
    expect_error(cli("train", "--run", str(run), "--grid-backend", "tcnn", "--device", "cpu"),
                  "--grid-backend tcnn", "--grid-backend auto")


def test_failed_commands_create_nothing(scene, run, tmp_path):
    """Bad input to any command: exit 2 with one line, and no run folder, output folder or lock
    left behind."""
    import shutil
    from backend.campath import write_camera_path
    from backend.train import train
    from conftest import TINY
    from helpers import odd_camera
    trained = shutil.copytree(run, tmp_path / "trained")
    train(str(trained), iters=2, device="cpu", preset="small", overrides=TINY)
    write_camera_path(tmp_path / "p.json", [1], [odd_camera(40, 30)])
    (tmp_path / "afile").write_text("")
    w = tmp_path / "work"
    w.mkdir()
    cpu = ("--device", "cpu")
    cases = [(("fit", "--scene", str(w / "no_scene"), "--run", str(w / "r1"), *cpu), "scene folder not found"),
             (("cache", "--scene", str(w / "no_scene"), "--run", str(w / "r2"), *cpu), "scene folder not found"),
             (("train", "--run", str(w / "r3"), *cpu), "the run folder does not exist"),
             (("eval", "--run", str(w / "r4"), *cpu), "the run folder does not exist"),
             (("render", "--run", str(w / "r5"), "--path", str(tmp_path / "p.json"), "--out", str(w / "o5"), *cpu),
              "the run folder does not exist"),
             (("render", "--run", str(trained), "--path", str(w / "no.json"), "--out", str(w / "o6"), *cpu),
              "cannot read camera path"),
             (("render", "--run", str(trained), "--path", str(tmp_path / "p.json"), "--out",
               str(tmp_path / "afile" / "o7"), *cpu), "cannot create the --out folder"),
             (("demo", "--out", str(tmp_path / "afile" / "d"), *cpu), "cannot create the demo --out folder")]
    for args, needle in cases:
        expect_error(cli(*args), needle)
        assert sorted(w.iterdir()) == [], (args, list(w.iterdir()))
    res = cli("doctor", "--json", "--path", str(w / "run_to_be"))      # the disk a new run folder would use
    assert res.returncode in (0, 2) and "Traceback" not in res.stderr and list(w.iterdir()) == []
