"""The Triton rasterizer (backend.raster_triton) on CPU tensors under Triton's interpreter, against
the exact CPU rasterizer. Collected only through test_raster.py::test_gpu_paths_in_triton_interpreter,
which sets TRITON_INTERPRET=1."""
import numpy as np
import torch

import backend.raster_triton as T
from backend.cameras import look_at
from backend.meshio import Mesh
from backend.raster import Rasterizer
from backend.raster_cpu import rasterize
from helpers import Camera, grid_plane, odd_camera, uv_sphere
from standin_raster import assert_same_surface, exact

CPU = torch.device("cpu")


def triton(mesh: Mesh) -> Rasterizer:
    return Rasterizer(mesh, CPU, "triton")


def candidates(mesh: Mesh, cam) -> np.ndarray:
    """The candidate pass alone (before the exact resolve)."""
    r = triton(mesh)
    return r.triangle_ids(r.v, r.f, cam, *r._depth_range(cam)).numpy()


def test_same_surface_as_the_exact_rasterizer():
    """A sphere with an off-centre, anisotropic K at ss 1, 2 and 3: identical samples, and the
    candidate pass alone already finds the exact rasterizer's triangle everywhere."""
    mesh = uv_sphere(30)
    cam = odd_camera(64, 48, eye=(0.3, -3.2, 0.9))
    assert np.array_equal(candidates(mesh, cam), rasterize(mesh, cam).tri)
    for ss in (1, 2, 3):
        assert_same_surface(triton(mesh).surface(cam, ss), exact(mesh, cam, ss))


def test_sub_sample_triangles():
    """A mesh far finer than the samples (most triangles cover no sample centre, many lie between
    samples): the same triangle per sample as the exact rasterizer."""
    mesh = uv_sphere(90)
    cam = odd_camera(40, 30, eye=(0.3, -3.2, 0.9))
    ref = rasterize(mesh, cam).tri
    assert len(mesh.faces) > 10 * (ref >= 0).sum()
    assert np.array_equal(candidates(mesh, cam), ref)


def test_close_up_crossing_the_camera_plane_and_the_borders():
    """A camera inside a coarse plane's extent: two-triangle cells far larger than the image, some
    crossing the camera plane (partly behind the camera): every sample covered, exact points."""
    mesh = grid_plane(3, half=5.0)
    cam = odd_camera(80, 60, eye=(0.0, -1.0, 0.3), target=(0.0, 1.0, 0.0))
    assert_same_surface(triton(mesh).surface(cam, 1), exact(mesh, cam, 1))
    big = grid_plane(2, half=50.0)                          # one quad, 100 x 100 around the camera
    cam = Camera(300, 200, np.array([[150.0, 0, 151.3], [0, 150.0, 99.2], [0, 0, 1]]),
                 look_at((0.0, 0.0, 0.5), (0.0, 3.0, -0.2)))
    ids = candidates(big, cam)
    ref = rasterize(big, cam).tri
    assert (ref >= 0).mean() > 0.4 and np.array_equal(ids, ref)     # many tile runs of the second pass


def test_nearest_wins_and_ties_go_to_the_lowest_id():
    """A sphere in front of a plane (the plane listed first), and the plane's triangles listed
    twice with both windings: the nearest surface, the first copy on equal depth, both sides."""
    a, b = uv_sphere(16), grid_plane(12)
    verts = np.concatenate([a.vertices * 0.5, b.vertices * 3 + [0, 1.5, 0]]).astype(np.float32)
    plane = b.faces + len(a.vertices)
    faces = np.concatenate([plane, plane[:, [0, 2, 1]], a.faces]).astype(np.int32)
    mesh = Mesh(verts, faces)
    # A copy and its flipped twin are the same surface: either may win (their float32 depths can
    # differ in the last bit), so ids are compared up to the copy.
    def cell(t):
        return np.where((t >= 0) & (t < 2 * len(plane)), t % len(plane), t)

    for eye in ((0.2, -3.0, 0.4), (0.2, 3.0, 0.4)):          # the plane seen from each side
        cam = odd_camera(48, 36, eye=eye)
        ref = rasterize(mesh, cam).tri
        ids = candidates(mesh, cam)
        assert (ref >= len(faces) - len(a.faces)).any() and (cell(ref) < len(plane)).any()
        assert np.array_equal(cell(ids), cell(ref))
    assert_same_surface(triton(mesh).surface(cam, 1), exact(mesh, cam, 1))


def test_triangle_soup():
    """Random triangles of every size, many overlapping, some behind the camera or crossing its
    plane, some far outside the image: the same visible triangle as the exact rasterizer for all
    but samples on shared edges or at equal depth (none in a random soup)."""
    rng = np.random.default_rng(3)
    n = 250
    centre = rng.uniform([-3, -3, -1], [3, 3, 6], size=(n, 1, 3))
    size = np.exp(rng.uniform(np.log(0.01), np.log(4.0), size=(n, 1, 1)))
    verts = (centre + size * rng.normal(size=(n, 3, 3))).reshape(-1, 3).astype(np.float32)
    mesh = Mesh(verts, np.arange(3 * n, dtype=np.int32).reshape(n, 3))
    cam = Camera(56, 44, np.array([[47.0, 0, 29.1], [0, 52.0, 21.4], [0, 0, 1]]),
                 look_at((0.0, 0.0, -2.0), (0.1, 0.2, 3.0)))
    ref = rasterize(mesh, cam).tri
    ids = candidates(mesh, cam)
    assert (ref >= 0).mean() > 0.5
    assert (ids == ref).mean() > 0.999
    tri, *_ = triton(mesh).hits(cam)
    assert np.array_equal(tri.numpy(), ref)


def test_looking_away_and_empty():
    """Nothing in front of the camera, and a mesh with no triangles: no sample covered."""
    mesh = uv_sphere(12)
    cam = odd_camera(32, 24, eye=(0.0, -3.0, 0.0), target=(0.0, -6.0, 0.0))
    assert (candidates(mesh, cam) == -1).all()
    empty = Mesh(mesh.vertices, np.zeros((0, 3), np.int32))
    r = triton(empty)
    assert (r.triangle_ids(r.v, r.f, cam, 1e-3) == -1).all()


def test_keys_order_by_depth_then_id():
    """The packed key: positive float32 depth bits above the id keep depth order, then id order."""
    z = torch.tensor([0.5, 0.5, 2.0, 1e-5, 3e4], dtype=torch.float32)
    ids = torch.tensor([7, 3, 1, 9, 0], dtype=torch.int64)
    key = (z.view(torch.int32).to(torch.int64) << 32) | ids
    assert torch.argsort(key).tolist() == [3, 1, 0, 2, 4]
    assert (key < T.EMPTY).all()
