import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.raster import Rasterizer
from backend.raster_cpu import interpolate, rasterize
from conftest import gpu, needs_triton, run_triton_interpreted
from helpers import grid_plane, odd_camera, uv_sphere

REPO = Path(__file__).resolve().parents[1]


def test_vertices_project_onto_their_own_surface_point():
    """Anisotropic, off-centre K: a mesh vertex projected with K[R|t] lands on a pixel whose
    rasterized surface point is (within the pixel's footprint) that vertex."""
    mesh = grid_plane(9)
    cam = odd_camera(160, 120)
    r = rasterize(mesh, cam)
    P = interpolate(r, mesh.faces, mesh.vertices)
    uv, _ = cam.project(mesh.vertices.astype(np.float64))
    interior = np.abs(mesh.vertices[:, :2]).max(1) < 0.99     # pixel of a border vertex may miss
    inside = interior & (uv[:, 0] > 1) & (uv[:, 0] < cam.width - 1) & (uv[:, 1] > 1) & (uv[:, 1] < cam.height - 1)
    assert inside.sum() > 20
    for (u, v), X in zip(uv[inside], mesh.vertices[inside]):
        i, j = int(u), int(v)
        assert r.mask[j, i]
        # the hit at the pixel centre re-projects to the pixel centre: sub-pixel agreement
        uv_hit, _ = cam.project(P[j, i][None])
        assert uv_hit[0] == pytest.approx([i + 0.5, j + 0.5], abs=1e-4)
        # and the vertex itself is within one pixel footprint of that hit
        assert abs(u - (i + 0.5)) <= 0.5 and abs(v - (j + 0.5)) <= 0.5


def test_depth_is_camera_z_and_background_is_empty():
    mesh = uv_sphere(20)
    cam = odd_camera(64, 48, eye=(0, -4, 0.5))
    r = rasterize(mesh, cam)
    P = interpolate(r, mesh.faces, mesh.vertices)
    z = cam.to_camera(P[r.mask])[:, 2]
    assert np.allclose(z, r.depth[r.mask], rtol=1e-5)
    assert not r.mask[0, 0] and np.isinf(r.depth[0, 0])
    assert 0.1 < r.mask.mean() < 0.6


def test_supersampling_edge_pixels_average_only_hits():
    mesh = uv_sphere(20)
    cam = odd_camera(48, 32, eye=(0, -4, 0.5))
    s = Rasterizer(mesh, torch.device("cpu")).surface(cam, 2)
    n_hit = s.mask.sum(-1)
    edge = (n_hit > 0) & (n_hit < 4)
    assert edge.sum() > 10
    # every sub-sample flagged as a hit lies on the sphere; missed ones carry no point
    pts = s.xyz[s.mask]
    assert torch.allclose(pts.norm(dim=-1), torch.ones(len(pts)), atol=0.02)
    assert torch.all(s.xyz[~s.mask] == 0)
    # the sub-samples follow Camera.sample_coords exactly
    uv, _ = cam.project(pts.double().numpy())
    assert np.abs(uv - cam.sample_coords(2)[s.mask.numpy()]).max() < 1e-4


def test_near_plane_crossing_triangles_are_exact():
    """A camera inside the mesh's extent: large triangles cross the image border and the camera plane."""
    mesh = grid_plane(3, half=5.0)
    cam = odd_camera(40, 30, eye=(0.0, -1.0, 0.3), target=(0.0, 1.0, 0.0))
    r = rasterize(mesh, cam)
    P = interpolate(r, mesh.faces, mesh.vertices)
    assert r.mask.mean() > 0.3
    assert np.abs(P[r.mask][:, 2]).max() < 1e-6           # on the plane z = 0
    uv, _ = cam.project(P[r.mask])
    jj, ii = np.nonzero(r.mask)
    assert np.abs(uv - np.stack([ii + 0.5, jj + 0.5], 1)).max() < 1e-3


GPU_KINDS = ["triton", pytest.param("nvdiffrast", marks=pytest.mark.skipif(
    importlib.util.find_spec("nvdiffrast") is None, reason="nvdiffrast is optional (not installed)"))]


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("kind", GPU_KINDS)
@pytest.mark.parametrize("ss", [1, 2])
def test_cuda_matches_cpu(ss, kind):
    mesh = uv_sphere(40)
    cam = odd_camera(320, 240, eye=(0.3, -3.2, 0.9))
    cpu = Rasterizer(mesh, torch.device("cpu")).surface(cam, ss)
    cu = Rasterizer(mesh, torch.device("cuda"), kind).surface(cam, ss)
    agree = (cpu.mask == cu.mask.cpu()).float().mean().item()
    assert agree > 0.999                                   # ties on silhouettes/shared edges only
    both = cpu.mask & cu.mask.cpu()
    err = (cpu.xyz[both] - cu.xyz.cpu()[both]).norm(dim=-1)
    # scene units (sphere radius 1): exact re-intersection on both paths; a sample on a shared edge
    # may pick either triangle, which is the same point
    assert torch.quantile(err, 0.99).item() < 1e-5
    assert err.max().item() < 1e-3
    # off-centre, anisotropic K on the CUDA path: hits re-project to their sub-sample coordinates
    uv, _ = cam.project(cu.xyz.cpu()[cu.mask.cpu()].double().numpy())
    assert np.abs(uv - cam.sample_coords(ss)[cu.mask.cpu().numpy()]).max() < 1e-3


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("kind", GPU_KINDS)
def test_cuda_close_up_has_no_pinholes(kind):
    """A camera close to a coarse plane: huge triangles cross the image borders and the camera
    plane; every sample must still be covered, as on the exact CPU path."""
    mesh = grid_plane(3, half=5.0)
    cam = odd_camera(400, 300, eye=(0.0, -1.0, 0.3), target=(0.0, 1.0, 0.0))
    cpu = Rasterizer(mesh, torch.device("cpu")).surface(cam, 1)
    cu = Rasterizer(mesh, torch.device("cuda"), kind).surface(cam, 1)
    assert int((cpu.mask & ~cu.mask.cpu()).sum()) == 0
    both = cpu.mask & cu.mask.cpu()
    assert (cpu.xyz[both] - cu.xyz.cpu()[both]).norm(dim=-1).max().item() < 1e-4


@gpu
@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("nvdiffrast") is None, reason="nvdiffrast is optional (not installed)")
def test_nvdiffrast_tiles_match_untiled(monkeypatch):
    import backend.raster_nvdiffrast as R
    mesh = uv_sphere(30)
    cam = odd_camera(300, 200, eye=(0.3, -3.2, 0.9))
    rast = Rasterizer(mesh, torch.device("cuda"), "nvdiffrast")
    full = rast.surface(cam, 1)
    monkeypatch.setattr(R, "MAX_TILE", 128)
    tiled = rast.surface(cam, 1)
    assert torch.equal(full.mask, tiled.mask)
    assert (full.xyz - tiled.xyz).abs().max().item() < 1e-4     # float32 clip-space rounding


@needs_triton
@pytest.mark.parametrize("module", ["interpreted_triton_raster.py", "standin_raster.py"])
def test_gpu_paths_in_triton_interpreter(module):
    """The GPU rasterizers' kernels on CPU tensors through Triton's interpreter, in a child with
    TRITON_INTERPRET=1 (set before triton loads): the Triton rasterizer against the exact CPU one
    (tests/interpreted_triton_raster.py), and nvdiffrast's path (cull, exact resolve, pinhole fill,
    tiling, sub-sample grouping) with nvdiffrast replaced by an exact stand-in (standin_raster.py)."""
    r = run_triton_interpreted(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "tests" / module)])
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]


def test_rasterizer_registry_picks_and_refuses(monkeypatch):
    """auto: the exact rasterizer on the CPU, Triton on CUDA; XSCALE_RASTERIZER picks another; an
    unknown name or a GPU rasterizer on the CPU is refused with what to do."""
    from backend.errors import DeviceError
    from backend.raster import ENV, choose
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert choose("auto", torch.device("cpu")).name == "cpu"
    assert choose("auto", torch.device("cuda")).name == "triton"
    monkeypatch.setenv(ENV, "nvdiffrast")
    assert choose("auto", torch.device("cuda")).name == "nvdiffrast"
    with pytest.raises(DeviceError, match="needs a CUDA device"):
        choose("auto", torch.device("cpu"))
    monkeypatch.setenv(ENV, "optix")
    with pytest.raises(DeviceError, match="unknown rasterizer 'optix'.*known: triton, nvdiffrast, cpu"):
        choose("auto", torch.device("cuda"))
