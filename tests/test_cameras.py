import numpy as np
import pytest

from backend.cameras import read_mvsnet_cam, write_mvsnet_cam
from backend.errors import InputError
from helpers import odd_camera


def test_mvsnet_roundtrip_exact(tmp_path):
    cam = odd_camera()
    cam.depth_range = (0.5, 9.0)
    write_mvsnet_cam(tmp_path / "c_cam.txt", cam)
    E, K, depth = read_mvsnet_cam(tmp_path / "c_cam.txt")
    assert np.array_equal(E, cam.world_to_camera)
    assert np.array_equal(K, cam.K)
    assert depth == pytest.approx((0.5, 9.0))


def test_projection_honours_all_intrinsics():
    cam = odd_camera()
    X = np.array([[0.1, 0.2, -0.3]])
    pc = cam.world_to_camera[:3, :3] @ X[0] + cam.world_to_camera[:3, 3]
    uv, z = cam.project(X)
    assert uv[0] == pytest.approx([80 * pc[0] / pc[2] + cam.cx, 73 * pc[1] / pc[2] + cam.cy])
    # directions() inverts project(): the ray through uv passes through X
    d = cam.directions(uv)[0]
    v = X[0] - cam.center
    assert np.cross(d, v / np.linalg.norm(v)) == pytest.approx(np.zeros(3), abs=1e-12)


def test_sample_coords_pixel_centres():
    cam = odd_camera(4, 3)
    c1 = cam.sample_coords(1)
    assert c1[0, 0, 0].tolist() == [0.5, 0.5] and c1[2, 3, 0].tolist() == [3.5, 2.5]
    c2 = cam.sample_coords(2)
    assert c2[0, 0].tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    # scaled(2) puts its pixel centres exactly on the sub-samples
    s = cam.scaled(2)
    p = np.array([[0.3, -0.2, 0.1]])
    assert s.project(p)[0] == pytest.approx(cam.project(p)[0] * 2)


@pytest.mark.parametrize("text,needle", [
    ("extrinsic\n1 0 0\n", "extrinsic"),
    ("extrinsic\n1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n\nintrinsic\n100 0 50\n0 100 x\n0 0 1\n", "intrinsic"),
    ("extrinsic\n2 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n\nintrinsic\n100 0 50\n0 100 40\n0 0 1\n", "rigid"),
    ("nothing here", "malformed"),
])
def test_malformed_cam_files_name_the_problem(tmp_path, text, needle):
    p = tmp_path / "bad_cam.txt"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        read_mvsnet_cam(p)
    assert str(p) in str(e.value) and needle in str(e.value)


def test_cam_file_that_is_not_utf8_is_named(scene, tmp_path):
    """A cams file in Latin-1 (or binary) ended in a UnicodeDecodeError traceback."""
    import shutil
    from conftest import expect_error
    from fuzzing import run_main
    s = shutil.copytree(scene, tmp_path / "s")
    cam = sorted((s / "cams").iterdir())[1]
    cam.write_bytes(b"# cam\xe9ra\n" + cam.read_bytes())
    with pytest.raises(InputError, match="byte 5 is not UTF-8"):
        read_mvsnet_cam(cam)
    expect_error(run_main("check", str(s)), cam.name, "not UTF-8")
