"""Quality-benchmark baselines (benchmarks/baselines): the per-vertex-colour baseline fits a mesh
whose photos are per-vertex coloured exactly, and cannot represent texture finer than its
triangles; its barycentrics agree with the pipeline's rasterizer. The 3DGS baseline's CPU-side
helpers are checked here, its training on a CUDA machine with gsplat installed."""
import numpy as np
import pytest
import torch

from backend.colour import linear_to_srgb
from backend.metrics import psnr
from backend.raster import Rasterizer
from backend.raster_cpu import interpolate, rasterize, supersample_view
from benchmarks.baselines import gsplat_baseline as gs
from benchmarks.baselines import vertex_colour as vc
from conftest import gpu
from helpers import grid_plane, odd_camera

CPU = torch.device("cpu")
SS = 2


def _photo(mesh, cam, colour_fn, ss=SS) -> tuple[np.ndarray, np.ndarray]:
    """8-bit sRGB photo: linear colour_fn(points, raster) per sub-sample, averaged per pixel."""
    r = rasterize(mesh, cam.scaled(ss))
    col = np.where(r.mask[..., None], colour_fn(r), 0.0)
    lin = supersample_view(col, ss).mean(2)
    cover = supersample_view(r.mask, ss).all(2)
    return (linear_to_srgb(lin) * 255).round().astype(np.uint8), cover


def _cameras(n: int):
    eyes = [(2.2 * np.cos(a), 2.2 * np.sin(a), 1.6) for a in np.linspace(0, 2 * np.pi, n, endpoint=False)]
    return [odd_camera(64, 48, eye=e) for e in eyes]


def _fit_and_score(mesh, colour_fn, iters=200):
    cams = _cameras(7)
    photos = [_photo(mesh, c, colour_fn) for c in cams]
    rast = Rasterizer(mesh, CPU)
    table = vc.pixel_table(rast, [(c, p) for c, (p, _) in zip(cams[:-1], photos[:-1])], SS)
    model = vc.fit(table, mesh.faces, len(mesh.vertices), iters=iters, batch=1 << 12, lr=0.1)
    pred, alpha = vc.render(model, rast, cams[-1], SS)
    gt, cover = photos[-1]
    assert np.array_equal(alpha >= 1.0, cover)
    return psnr(pred, gt / 255.0, cover)


def test_tri_bary_matches_rasterizer_surface():
    mesh = grid_plane(6)
    cam = odd_camera(48, 32)
    rast = Rasterizer(mesh, CPU)
    tri, w = vc.tri_bary(rast, cam, SS)
    s = rast.surface(cam, SS)
    assert torch.equal(tri >= 0, s.mask)
    v = torch.as_tensor(mesh.vertices, dtype=torch.float32)[torch.as_tensor(mesh.faces).long()[tri.clamp_min(0)]]
    xyz = (w[..., None] * v).sum(-2)
    assert torch.allclose(xyz[s.mask], s.xyz[s.mask], atol=1e-5)


def test_vertex_colours_fit_a_per_vertex_coloured_mesh_exactly():
    mesh = grid_plane(5)
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.05, 0.9, (len(mesh.vertices), 3))
    score = _fit_and_score(mesh, lambda r: interpolate(r, mesh.faces, colours))
    assert score > 40.0, score          # 8-bit photos: exact up to quantisation


def test_vertex_colours_cannot_represent_sub_triangle_texture():
    mesh = grid_plane(5)                # triangles 0.5 wide, stripes 0.1 wide

    def stripes(r):
        x = interpolate(r, mesh.faces, mesh.vertices)[..., :1]
        return 0.15 + 0.7 * (0.5 + 0.5 * np.sin(2 * np.pi * 5.0 * x)) * np.ones(3)
    score = _fit_and_score(mesh, stripes)
    assert score < 16.0, score


def test_vertex_colour_render_is_transparent_off_the_mesh():
    mesh = grid_plane(4, half=0.3)
    cam = odd_camera(40, 30)
    model = vc.VertexColours(mesh.faces, len(mesh.vertices))
    img, alpha = vc.render(model, Rasterizer(mesh, CPU), cam, SS)
    assert (alpha == 0).any() and (alpha == 1).any()
    assert np.all(img[alpha == 0] == 0)
    assert np.allclose(img[alpha == 1], linear_to_srgb(np.float32(0.5)), atol=1e-6)


def test_gsplat_init_scales_from_nearest_neighbours():
    pts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3], [10, 10, 10]])
    d = gs.mean_knn_distance(pts, k=3, chunk=2)
    ref = torch.cdist(pts, pts).sort(1).values[:, 1:4].pow(2).mean(1).sqrt()
    assert torch.allclose(d, ref)


def test_gsplat_sh_dc_round_trip():
    rgb = torch.rand(10, 3)
    assert torch.allclose(gs.sh_dc_to_rgb(gs.rgb_to_sh_dc(rgb)), rgb, atol=1e-6)


def test_gsplat_reports_why_it_is_unavailable():
    reason = gs.unavailable_reason()
    if not torch.cuda.is_available():
        assert reason and "CUDA" in reason
    else:
        assert reason is None or "gsplat" in reason


@gpu
@pytest.mark.gpu
def test_tri_bary_cuda_matches_cpu():
    mesh = grid_plane(9)
    cam = odd_camera(96, 64)
    t0, w0 = vc.tri_bary(Rasterizer(mesh, CPU), cam, SS)
    t1, w1 = vc.tri_bary(Rasterizer(mesh, torch.device("cuda")), cam, SS)
    same = (t0 == t1.cpu())
    assert same.float().mean() > 0.995
    assert torch.allclose(w0[same & (t0 >= 0)], w1.cpu()[same & (t0 >= 0)], atol=1e-4)


@gpu
@pytest.mark.gpu
def test_gsplat_fits_training_views():
    if gs.unavailable_reason():
        pytest.skip(gs.unavailable_reason())
    mesh = grid_plane(9)
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.05, 0.9, (len(mesh.vertices), 3))
    cams = _cameras(6)
    views = []
    for c in cams:
        img, cover = _photo(mesh, c, lambda r: interpolate(r, mesh.faces, colours))
        views.append(gs.TrainView(c, img, cover))
    dev = torch.device("cuda")
    splats, info = gs.train(mesh, views, gs.GSConfig(steps=600), dev, Rasterizer(mesh, dev))
    pred, _ = gs.render(splats, cams[0], gs.GSConfig().sh_degree)
    score = psnr(pred, views[0].rgb / 255.0, views[0].mask)
    assert info["n_gaussians"] > 0
    assert score > 20.0, (score, info)
