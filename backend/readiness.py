"""Is this machine ready: every default component run once on a tiny problem.

`checks(device)` runs the default rasterizer against the exact CPU one and a hash-grid forward and
backward of the default encoder against its plain PyTorch twin, on the device the commands would
use. `doctor` says "ready" only when they pass. On CUDA the first run compiles the Triton kernels
(seconds); a pass is remembered in the user's cache folder for this combination of Python, torch,
Triton, GPU and backend sources, so later runs take no time.

A failure's cause, when it is a missing build tool, is worded by backend.toolchain.explain.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE_ENV = "XSCALE_CACHE_DIR"
_SOURCES = ("raster.py", "raster_triton.py", "raster_resolve.py", "encoding")   # what a pass vouches for


@dataclass
class Check:
    name: str
    ok: bool
    message: str

    def line(self) -> str:
        return ("passed" if self.ok else "FAILED") + (f": {self.message}" if self.message else "")


def cache_dir() -> Path:
    """The user's cache folder for the backend ($XSCALE_CACHE_DIR overrides)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "xscale-nvs"


def fingerprint(device) -> str:
    """What a passed check depends on: versions, the GPU, and the backend's kernel sources."""
    import torch
    h = hashlib.sha256()
    parts = [sys.version, torch.__version__, str(torch.version.cuda), device.type]
    try:
        import triton
        parts.append(triton.__version__)
    except ImportError:
        parts.append("no triton")
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        parts += [p.name, f"{p.major}.{p.minor}"]
    h.update("|".join(parts).encode())
    here = Path(__file__).parent
    for name in _SOURCES:
        for f in sorted((here / name).rglob("*.py")) if (here / name).is_dir() else [here / name]:
            h.update(f.read_bytes())
    return h.hexdigest()[:32]


def _tiny_scene():
    """A small sphere and an off-centre camera (numpy; no test helpers in the runtime)."""
    from .cameras import Camera, look_at
    from .meshio import Mesh
    n = 12
    th, ph = np.meshgrid(np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, 2 * n), indexing="ij")
    V = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3)
    idx = np.arange(n * 2 * n).reshape(n, 2 * n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    F = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    K = np.array([[40.0, 0, 25.3], [0, 38.0, 17.1], [0, 0, 1]])
    return Mesh(V.astype(np.float32), F.astype(np.int32)), Camera(48, 32, K, look_at((0.3, -3.0, 0.8), (0, 0, 0)))


def check_rasterizer(device) -> Check:
    import torch
    from .raster import Rasterizer
    mesh, cam = _tiny_scene()
    rast = Rasterizer(mesh, device)
    got = rast.surface(cam, 2)
    ref = Rasterizer(mesh, torch.device("cpu"), "cpu").surface(cam, 2)
    differ = (got.mask.cpu() != ref.mask).float().mean().item()
    both = got.mask.cpu() & ref.mask
    err = (got.xyz.cpu()[both] - ref.xyz[both]).abs().max().item() if both.any() else 0.0
    ok = differ <= 1e-3 and err < 1e-4 and ref.mask.any().item()
    return Check("rasterizer", ok, f"{rast.kind.name}" + ("" if ok else f": {differ:.2%} of samples differ from "
                                                          f"the exact rasterizer, points up to {err:.2g} apart"))


def check_hash_grid(device) -> Check:
    import torch
    from .config import preset
    from .encoding.registry import ENCODERS
    from .model import Manifold
    cfg = preset("small", device.type).model
    gen = torch.Generator().manual_seed(0)
    xyz = (torch.rand(256, 4, 3, generator=gen) * 2 - 1).to(device)
    mask = torch.rand(256, 4, generator=gen).to(device) > 0.2

    def run(backend: str):
        torch.manual_seed(0)
        m = Manifold(cfg, [-1.0] * 3, [1.0] * 3, n_views=1, grid_backend=backend).to(device)
        with torch.no_grad():
            m.grid.table.normal_(0, 0.1, generator=torch.Generator(device).manual_seed(1))
        feat = m.features(xyz, mask)
        (feat * torch.linspace(-1, 1, feat.shape[1], device=device)).sum().backward()
        impl = type(m.grid.encoder(device)).__name__
        name = next(n for n, e in ENCODERS.items() if e.cls == impl)
        return name, feat.detach(), m.grid.table.grad

    name, feat, grad = run("auto")
    if not (torch.isfinite(feat).all() and torch.isfinite(grad).all()):
        return Check("hash grid", False, f"{name}: non-finite features or gradients")
    if name == "torch":
        return Check("hash grid", True, name)
    _, ref_feat, ref_grad = run("torch")
    fe = (feat - ref_feat).abs().max().item()
    ge = (grad - ref_grad).abs().max().item()
    ok = fe < 1e-4 and ge < 1e-4
    return Check("hash grid", ok, name + ("" if ok else f": differs from the PyTorch twin (features {fe:.2g}, "
                                                         f"gradients {ge:.2g})"))


def checks(device, use_cache: bool = True) -> list[Check]:
    """Run (or recall) the checks on `device` (torch.device)."""
    path = cache_dir() / "ready.json"
    key = fingerprint(device)
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if use_cache and isinstance(known.get(key), list):
        return [Check(c["name"], True, c["message"] + " (checked before)") for c in known[key]]
    from .toolchain import explain
    out = []
    for fn in (check_rasterizer, check_hash_grid):
        try:
            out.append(fn(device))
        except Exception as e:      # what the check is for: report it, with the fix when known
            out.append(Check(fn.__name__.removeprefix("check_").replace("_", " "), False,
                             explain(e) or f"{type(e).__name__}: {e}"))
    if all(c.ok for c in out):
        known[key] = [{"name": c.name, "message": c.message} for c in out]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(known), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            pass                    # a read-only home: the checks run again next time
    return out
