"""Downsampling: K scales by exactly 1/k (no half-pixel term), the area filter keeps a projected
point on the pixel it should land on, and odd sizes are cropped on the right/bottom."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cameras import Camera, read_mvsnet_cam
from backend.errors import InputError
from backend.meshio import Mesh, write_ply
from backend.prepare import convert_colmap, convert_mvsnet
from backend.prepare.downsample import block_mean, crop_size, downsample_camera
from backend.scene import load_scene


def camera(w=40, h=30) -> Camera:
    a = 0.2
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    E = np.eye(4)
    E[:3, :3], E[:3, 3] = R, [0.1, -0.2, 3.0]
    return Camera(w, h, np.array([[52.0, 0, 19.3], [0, 49.0, 15.7], [0, 0, 1]]), E)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_projection_scales_by_exactly_one_over_k(k):
    cam = camera(48, 36)
    pts = np.random.default_rng(0).uniform(-1, 1, (200, 3))
    uv, z = cam.project(pts)
    small = downsample_camera(cam, k)
    uv_k, z_k = small.project(pts)
    assert (small.width, small.height) == (48 // k, 36 // k)
    assert np.allclose(uv_k, uv / k, rtol=0, atol=1e-12)
    assert np.array_equal(z_k, z)
    assert np.array_equal(small.world_to_camera, cam.world_to_camera)


def test_pixel_centres_map_to_block_centres():
    """Low-res pixel i has its centre at i + 0.5, which is full-res k*i + k/2: the block centre."""
    k = 4
    cam = camera()
    small = downsample_camera(cam, k)
    for i, j in [(0, 0), (3, 5), (9, 6)]:
        d = cam.directions(np.array([k * i + k / 2, k * j + k / 2], float))
        d_small = small.directions(np.array([i + 0.5, j + 0.5]))
        assert np.allclose(d, d_small, atol=1e-15)


def test_block_mean_is_the_area_filter():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)
    out = block_mean(img, 3)
    ref = img.reshape(4, 3, 6, 3, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.array_equal(out, np.floor(ref + 0.5).astype(np.uint8))
    box = np.asarray(Image.fromarray(img).resize((6, 4), Image.Resampling.BOX))
    assert np.abs(out.astype(int) - box.astype(int)).max() <= 1
    gray = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    assert block_mean(gray, 2).shape == (4, 4)


def test_crop_size():
    assert crop_size(41, 31, 2) == (40, 30)
    assert crop_size(40, 30, 1) == (40, 30)
    with pytest.raises(InputError, match="smaller than the factor"):
        crop_size(3, 30, 4)


def scene_with_dot(root: Path, w: int, h: int, k: int, point_uv: tuple[float, float], ext: str = ".png"):
    """COLMAP workspace with one camera; the photo is black except the k x k block whose centre is
    the projection of a known world point. Returns the world point."""
    K = np.array([[50.0, 0, w / 2 + 0.75], [0, 50.0, h / 2 - 0.5], [0, 0, 1]])
    (root / "images").mkdir(parents=True)
    (root / "sparse").mkdir()
    (root / "sparse" / "cameras.txt").write_text(
        f"1 PINHOLE {w} {h} {K[0, 0]!r} {K[1, 1]!r} {K[0, 2]!r} {K[1, 2]!r}\n")
    (root / "sparse" / "images.txt").write_text(f"1 1 0 0 0 0 0 0 1 view{ext}\n\n")
    img = np.zeros((h, w, 3), np.uint8)
    u, v = point_uv
    i0, j0 = int(u - k / 2), int(v - k / 2)
    img[j0:j0 + k, i0:i0 + k] = 255
    Image.fromarray(img).save(root / "images" / f"view{ext}")
    z = 4.0
    X = np.array([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z])
    tri = np.array([[-5, -5, 6], [5, -5, 6], [0, 5, 6]], np.float32)
    write_ply(root / "mesh.ply", Mesh(tri, np.array([[0, 1, 2]], np.int32)))
    return X


@pytest.mark.parametrize("k", [2, 4])
def test_downsampled_photo_and_camera_agree(tmp_path, k):
    """The world point projects, with the written camera, onto the centre of the written pixel
    that holds the (area-filtered) dot."""
    X = scene_with_dot(tmp_path / "ws", 40, 32, k, point_uv=(2 * k + k / 2 + 4 * k, 3 * k + k / 2))
    s = convert_colmap(tmp_path / "ws", tmp_path / "scene", downsample=k)
    assert s["level"] == k and s["resolutions"] == {f"{40 // k}x{32 // k}": 1}
    view = load_scene(tmp_path / "scene", level=k).views[0]
    img = np.asarray(Image.open(view.image_path))
    assert img.shape[:2] == (32 // k, 40 // k)
    uv, _ = view.camera.project(X[None])
    u, v = uv[0]
    jj, ii = np.nonzero(img[..., 0] == 255)
    assert len(ii) == 1 and (u, v) == pytest.approx((ii[0] + 0.5, jj[0] + 0.5), abs=1e-9)
    assert img.sum() == 255 * 3                                  # nothing leaked into neighbours
    E, K, _ = read_mvsnet_cam(tmp_path / "scene" / f"cams_{k}" / "view_cam.txt")
    assert np.array_equal(K[:2], np.array([[50.0, 0, 20.75], [0, 50.0, 15.5]]) / k)


def test_odd_size_is_cropped_right_bottom(tmp_path):
    X = scene_with_dot(tmp_path / "ws", 41, 31, 2, point_uv=(11.0, 9.0), ext=".jpg")
    s = convert_colmap(tmp_path / "ws", tmp_path / "scene", downsample=2)
    assert s["cropped"] == {"view": [1, 1]} and any("cropped" in n for n in s["notes"])
    view = load_scene(tmp_path / "scene", level=2).views[0]
    assert (view.camera.width, view.camera.height) == (20, 15)
    assert view.image_path.suffix == ".jpg"
    uv, _ = view.camera.project(X[None])
    u, v = uv[0]
    img = np.asarray(Image.open(view.image_path))[..., 0].astype(int)
    assert (u, v) == pytest.approx((5.5, 4.5))
    assert np.unravel_index(img.argmax(), img.shape) == (4, 5)    # (row, col) of the dot


def test_mvsnet_relevel(tmp_path):
    """An MVSNet level can be shrunk again; the folder suffix is the total factor."""
    scene_with_dot(tmp_path / "ws", 40, 32, 2, point_uv=(13.0, 11.0))
    convert_colmap(tmp_path / "ws", tmp_path / "scene", downsample=2)
    s = convert_mvsnet(tmp_path / "scene", tmp_path / "scene", downsample=2, level=2)
    assert s["level"] == 4 and (tmp_path / "scene" / "images_4" / "view.png").is_file()
    cam4 = load_scene(tmp_path / "scene", level=4).views[0].camera
    cam2 = load_scene(tmp_path / "scene", level=2).views[0].camera
    assert np.array_equal(cam4.K[:2], cam2.K[:2] / 2) and (cam4.width, cam4.height) == (10, 8)


def test_downsample_factor_must_be_whole(tmp_path):
    scene_with_dot(tmp_path / "ws", 40, 32, 2, point_uv=(13.0, 11.0))
    with pytest.raises(InputError, match="whole number"):
        convert_colmap(tmp_path / "ws", tmp_path / "scene", downsample=0)
