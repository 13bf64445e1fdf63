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
    expect_error(cli("train", "--run", str(tmp_path / "nothing"), "--device", "cpu"), "backend cache")


@pytest.mark.skipif(__import__("importlib").util.find_spec("tinycudann") is not None,
                    reason="checks the message when tinycudann is missing")
def test_error_tcnn_backend_unavailable(run):
    expect_error(cli("train", "--run", str(run), "--grid-backend", "tcnn", "--device", "cpu"),
                  "--grid-backend tcnn", "--grid-backend auto")
