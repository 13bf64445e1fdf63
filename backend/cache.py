"""Ray cache: rasterize the mesh into every training photo and store each covered pixel's
sub-sample surface points, normal, view direction, colour and view id in shuffled shards.

Streaming, out of core: views are processed one at a time and every ray is appended to a random
bucket file on disk; each bucket is then shuffled in memory and saved as one shard of
memory-mappable .npy files. Host memory stays at one view plus one shard. An interrupted run
resumes after its last completed view (RUN/cache.tmp/progress.json); the finished cache replaces
RUN/cache atomically.

Shard fields (N rays, S = ss*ss sub-samples):
  xyz (N, S, 3) float32 world points (unused slots repeat a hit slot, see `mask`)
  mask (N,) uint16 bit k set when sub-sample k hits the mesh
  normal (N, 3) float16, dir (N, 3) float16 unit view direction (camera -> surface)
  rgb (N, 3) uint8 sRGB, view (N,) int32 index into config["views"]
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from . import events
from .cameras import Camera
from .errors import InputError
from .meshio import load_mesh
from .raster import Rasterizer, pixel_directions, resolve_device
from .runfolder import RunFolder, read_json, write_json
from .scene import load_scene

FIELDS = {"xyz": np.float32, "mask": np.uint16, "normal": np.float16, "dir": np.float16,
          "rgb": np.uint8, "view": np.int32}
CACHE_VERSION = 1


def load_rgb8(path: Path, cam: Camera) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(path) as im:
            if im.mode == "I;16" or im.mode.startswith("I;16"):
                a = (np.asarray(im, dtype=np.float32) / 257.0).round().astype(np.uint8)
                a = np.repeat(a[..., None], 3, -1)
            else:
                a = np.asarray(im.convert("RGB"))
    except OSError as e:
        raise InputError(f"{path}: cannot decode the image ({e}); re-export it as PNG or JPEG.") from None
    if a.shape[:2] != (cam.height, cam.width):
        raise InputError(f"{path}: image is {a.shape[1]}x{a.shape[0]} but its camera expects "
                         f"{cam.width}x{cam.height}.")
    return a


def view_rays(rast: Rasterizer, cam: Camera, rgb8: np.ndarray, ss: int, view_id: int) -> dict[str, np.ndarray]:
    """All covered pixels of one view as cache records."""
    s = rast.surface(cam, ss)
    covered = s.mask.any(-1)
    if not covered.any():
        return {}
    m = s.mask[covered]                                                  # (N, S)
    xyz = s.xyz[covered]                                                 # (N, S, 3)
    # Fill missed slots with the first hit slot so that any reader stays finite.
    first = m.float().argmax(1)
    fill = xyz[torch.arange(len(xyz)), first]
    xyz = torch.where(m[..., None], xyz, fill[:, None])
    bits = (m.to(torch.int32) << torch.arange(m.shape[1], device=m.device, dtype=torch.int32)).sum(1)
    jj, ii = torch.nonzero(covered, as_tuple=True)
    d = pixel_directions(cam, ii, jj).cpu().numpy()
    return {"xyz": xyz.cpu().numpy().astype(np.float32),
            "mask": bits.cpu().numpy().astype(np.uint16),
            "normal": s.normal[covered].cpu().numpy().astype(np.float16),
            "dir": d.astype(np.float16),
            "rgb": rgb8[jj.cpu().numpy(), ii.cpu().numpy()],
            "view": np.full(len(d), view_id, np.int32)}


def build_cache(scene_dir: str, run_dir: str, mesh: str | None = None, level: int | None = None,
                ss: int = 2, test_every: int = 8, device: str = "auto", shard_rays: int = 1 << 22,
                seed: int = 0) -> dict:
    with RunFolder(run_dir).exclusive("the ray cache"):
        return _build_cache(scene_dir, run_dir, mesh, level, ss, test_every, device, shard_rays, seed)


def _build_cache(scene_dir, run_dir, mesh, level, ss, test_every, device, shard_rays, seed) -> dict:
    if not 1 <= ss <= 4:
        raise InputError(f"--ss {ss}: supersampling must be 1, 2, 3 or 4.")
    dev = resolve_device(device)
    scene = load_scene(scene_dir, mesh, level)
    mesh_obj = load_mesh(scene.mesh_path)
    nm = mesh_obj.non_manifold_edges()
    if nm:
        events.log(f"{scene.mesh_path}: {nm} non-manifold edges (kept; they do not affect rasterization)")
    train_ids, test_ids = scene.split(test_every)
    run = RunFolder(run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    tmp = run.root / "cache.tmp"

    rast = Rasterizer(mesh_obj, dev)
    S = ss * ss
    max_rays = sum(scene.views[i].camera.width * scene.views[i].camera.height for i in train_ids)
    n_buckets = max(1, -(-max_rays // shard_rays))
    rng = np.random.default_rng(seed)
    names = list(FIELDS)
    sizes = np.zeros((n_buckets, len(names)), np.int64)      # committed bytes per bucket file
    key = {"scene": str(scene.root.resolve()), "mesh": str(scene.mesh_path.resolve()), "level": level,
           "ss": ss, "test_every": test_every, "shard_rays": shard_rays, "seed": seed,
           "train_views": train_ids}
    done, coverage, total = 0, {}, 0
    progress = tmp / "progress.json"
    state = read_json(progress) if progress.is_file() else None
    if state is not None and state.get("key") == key:
        # Resume an interrupted run: drop bytes written after the last completed view.
        done, coverage, total = state["done"], state["coverage"], state["total"]
        rng.bit_generator.state = state["rng"]
        sizes = np.array(state["sizes"], np.int64)
        for b in range(n_buckets):
            for c, k in enumerate(names):
                f = tmp / "buckets" / f"{b:05d}.{k}"
                if f.exists() or not (tmp / f"shard_{b:05d}").is_dir():
                    with open(f, "ab") as fh:
                        fh.truncate(int(sizes[b, c]))
        events.log(f"resuming the ray cache after {done} of {len(train_ids)} views")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "buckets").mkdir(parents=True)
    prog = events.Progress("cache", len(train_ids), start_step=done)
    for n in range(done, len(train_ids)):
        i = train_ids[n]
        v = scene.views[i]
        rgb8 = load_rgb8(v.image_path, v.camera)
        rec = view_rays(rast, v.camera, rgb8, ss, i)
        cnt = len(rec["view"]) if rec else 0
        coverage[v.name] = cnt / (v.camera.width * v.camera.height)
        if cnt:
            bucket = rng.integers(0, n_buckets, cnt)
            order = np.argsort(bucket, kind="stable")
            splits = np.searchsorted(bucket[order], np.arange(1, n_buckets))
            # Files are opened per write, not kept open: thousands of buckets at 8K would
            # exceed the open-file limit.
            for c, k in enumerate(names):
                for b, part in enumerate(np.split(rec[k][order], splits)):
                    if len(part):
                        with open(tmp / "buckets" / f"{b:05d}.{k}", "ab") as fh:
                            fh.write(np.ascontiguousarray(part).tobytes())
                        sizes[b, c] += part.nbytes
        else:
            events.log(f"view {v.name}: the mesh covers no pixel; skipped")
        total += cnt
        write_json(progress, {"key": key, "done": n + 1, "coverage": coverage, "total": total,
                              "rng": rng.bit_generator.state, "sizes": sizes.tolist()})
        prog.update(n + 1, view=v.name, rays=total)
    if total == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"{scene.mesh_path}: no training camera sees the mesh; check that the mesh "
                         "and the cameras are in the same world frame (no axis change on export).")

    shards = []
    for b in range(n_buckets):
        # Each shuffle seeds from (seed, bucket), so a resumed run rebuilds identical shards.
        name = f"shard_{b:05d}"
        if (tmp / name).is_dir():                          # written before an interruption
            shards.append({"name": name, "n": int(np.load(tmp / name / "view.npy", mmap_mode="r").shape[0])})
            continue
        data = {k: np.fromfile(tmp / "buckets" / f"{b:05d}.{k}", dtype=dt) for k, dt in FIELDS.items()}
        n = len(data["view"])
        if n == 0:
            continue
        data["xyz"] = data["xyz"].reshape(n, S, 3)
        for k in ("normal", "dir", "rgb"):
            data[k] = data[k].reshape(n, 3)
        perm = np.random.default_rng([seed, b]).permutation(n)
        part = tmp / (name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir()
        for k in FIELDS:
            np.save(part / f"{k}.npy", data[k][perm])
        part.replace(tmp / name)
        for k in FIELDS:                                   # free the disk as we go
            (tmp / "buckets" / f"{b:05d}.{k}").unlink()
        shards.append({"name": name, "n": int(n)})
    shutil.rmtree(tmp / "buckets")
    progress.unlink()

    lo, hi = mesh_obj.bounds
    views = [{"name": v.name, "image": str(v.image_path.resolve()), "camera": v.camera.to_dict(),
              "split": "test" if i in test_ids else "train"} for i, v in enumerate(scene.views)]
    config = {"version": CACHE_VERSION, "scene": str(scene.root.resolve()),
              "mesh": str(scene.mesh_path.resolve()), "level": level, "ss": ss,
              "test_every": test_every, "aabb": [lo.tolist(), hi.tolist()], "views": views,
              "train_views": train_ids, "test_views": test_ids}
    meta = {"version": CACHE_VERSION, "ss": ss, "n_rays": int(total), "shards": shards,
            "coverage": coverage}
    write_json(tmp / "meta.json", meta)
    shutil.rmtree(run.cache, ignore_errors=True)
    tmp.replace(run.cache)
    write_json(run.config, config)
    events.emit("done", stage="cache", rays=int(total), shards=len(shards), train_views=len(train_ids),
                test_views=len(test_ids), cache=str(run.cache))
    return config


def cache_matches(run_dir: str, scene_dir: str, ss: int, test_every: int, level: int | None,
                  mesh: str | None) -> bool:
    """True when RUN has a complete cache built from the same inputs and settings."""
    run = RunFolder(run_dir)
    try:
        cfg = run.read_config()
    except InputError:
        return False
    same_mesh = mesh is None or str(Path(mesh).resolve()) == cfg["mesh"]
    return (cfg["scene"] == str(Path(scene_dir).resolve()) and cfg["ss"] == ss and
            cfg["test_every"] == test_every and cfg["level"] == level and same_mesh)


class ShardReader:
    """Memory-mapped access to the cache shards."""

    def __init__(self, run_dir: str | Path):
        self.run = RunFolder(run_dir)
        from .runfolder import read_json
        self.meta = read_json(self.run.cache / "meta.json")
        self.shards = self.meta["shards"]

    def load(self, i: int, mmap: bool = True) -> dict[str, np.ndarray]:
        d = self.run.cache / self.shards[i]["name"]
        return {k: np.load(d / f"{k}.npy", mmap_mode="r" if mmap else None) for k in FIELDS}
