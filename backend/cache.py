"""Ray cache: rasterize the mesh into every training photo and store each covered pixel's
sub-sample surface points, normal, view direction, colour and view id in shuffled shards.

Streaming, out of core: views are processed one at a time and every ray is appended to a random
bucket file on disk; each bucket is then shuffled in memory and saved as one shard of
memory-mappable .npy files. Host memory stays at one view (plus the next photo, decoded ahead)
and one shard. An interrupted run resumes after its last completed view
(RUN/cache.tmp/progress.json); the finished cache replaces RUN/cache atomically. A view starts
only when the disk has room for all its rays.

Shard fields (N rays, S = ss*ss sub-samples):
  xyz (N, S, 3) float32 world points (unused slots repeat a hit slot, see `mask`)
  mask (N,) uint16 bit k set when sub-sample k hits the mesh
  normal (N, 3) float16, dir (N, 3) float16 unit view direction (camera -> surface)
  rgb (N, 3) uint8 sRGB, view (N,) int32 index into config["views"]
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from . import events
from .cameras import Camera
from .config import SS, TEST_EVERY
from .encoding import normalisation
from .errors import InputError, first_line
from .footprint import FieldBuilder, camera_rows, footprints
from .imageio import read_mask
from .meshio import load_mesh
from .raster import Rasterizer, pixel_directions, resolve_device
from .runfolder import RunFolder, read_json, write_json
from .photos import check_photos, load_rgb8
from .scene import load_scene, mask_path_for
from .stopflag import StopFlag

FIELD_FILE = "footprint.npy"    # RUN/cache/: the finest log2 footprints seen (backend.footprint)
FIELDS = {"xyz": np.float32, "mask": np.uint16, "normal": np.float16, "dir": np.float16,
          "rgb": np.uint8, "view": np.int32}
CACHE_VERSION = 1
DISK_RESERVE = 1 << 30      # bytes left free on the run folder's disk for checkpoints and the OS


class PhaseClock:
    """Wall seconds spent per named phase (reported with the cache's done event)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def row_shape(field: str, S: int) -> tuple[int, ...]:
    """Shape of one ray's entry in `field` (see the module docstring)."""
    return {"xyz": (S, 3), "normal": (3,), "dir": (3,), "rgb": (3,)}.get(field, ())


def ray_bytes(ss: int) -> int:
    """Bytes one cached ray takes on disk (33 at ss=1, 69 at ss=2)."""
    return sum(np.dtype(dt).itemsize * int(np.prod(row_shape(k, ss * ss))) for k, dt in FIELDS.items())


def check_disk(folder: Path, need: int, views_left: int, done: int) -> None:
    """Stop before a view whose rays may not fit (the build resumes from it once there is room)."""
    free = shutil.disk_usage(folder).free
    if free < need + DISK_RESERVE:
        raise InputError(
            f"{folder}: the disk has {free / 1e9:.1f} GB free; the next view needs up to "
            f"{need / 1e9:.1f} GB (plus {DISK_RESERVE / 1e9:.1f} GB kept free) and {views_left} "
            f"views are left. Free some space or use a run folder on a larger disk, then run "
            f"again: the ray cache resumes after view {done}.")


def view_rays(rast: Rasterizer, cam: Camera, rgb8: np.ndarray, ss: int, view_id: int,
              valid: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """All covered pixels of one view as cache records, in their FIELDS dtypes, on the
    rasterizer's device (mask as int16: torch has few uint16 ops; the bits are the same).
    valid (H, W) bool: the photo's validity mask; invalid pixels give no ray."""
    s = rast.surface(cam, ss)
    covered = s.mask.any(-1)
    if valid is not None:
        covered &= torch.from_numpy(valid).to(covered.device)
    jj, ii = torch.nonzero(covered, as_tuple=True)
    if not len(jj):
        return {}
    m = s.mask[jj, ii]                                                   # (N, S)
    xyz = s.xyz[jj, ii]                                                  # (N, S, 3)
    # Fill missed slots with the first hit slot so that any reader stays finite.
    first = m.float().argmax(1)
    fill = xyz[torch.arange(len(xyz), device=xyz.device), first]
    xyz = torch.where(m[..., None], xyz, fill[:, None])
    bits = (m.to(torch.int32) << torch.arange(m.shape[1], device=m.device, dtype=torch.int32)).sum(1)
    rgb = torch.from_numpy(rgb8).to(xyz.device)[jj, ii]
    return {"xyz": xyz.float(), "mask": bits.to(torch.int16), "normal": s.normal[jj, ii].half(),
            "dir": pixel_directions(cam, ii, jj).half(), "rgb": rgb,
            "view": torch.full((len(jj),), view_id, dtype=torch.int32, device=xyz.device)}


def _to_host(t: torch.Tensor, dtype) -> np.ndarray:
    """Device tensor -> numpy array of `dtype` (same item size), through pinned memory on CUDA."""
    if t.device.type == "cuda":
        t = torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t)
    return t.numpy().view(dtype)


def unpack_mask(bits: torch.Tensor, S: int) -> torch.Tensor:
    """The `mask` field's bits (N,) -> (N, S) bool: sub-sample k hits the mesh."""
    return ((bits.to(torch.int32)[:, None] >> torch.arange(S, device=bits.device, dtype=torch.int32)) & 1).bool()


def _on_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(a.view(np.int16) if a.dtype == np.uint16 else a).to(device)


def bucket_parts(rec: dict[str, torch.Tensor], bucket: np.ndarray, n_buckets: int):
    """Yield (field, its column in FIELDS, bucket index, array) for every non-empty bucket's rows
    of every field, rows kept in their order. Sorting and gathering run where the records are
    (the GPU at 8K)."""
    b = torch.from_numpy(bucket).to(rec["view"].device)
    order = torch.argsort(b, stable=True)
    counts = torch.bincount(b, minlength=n_buckets).cpu().numpy()
    splits = np.cumsum(counts)[:-1]
    for c, (k, dt) in enumerate(FIELDS.items()):
        for j, part in enumerate(np.split(_to_host(rec[k][order], dt), splits)):
            if len(part):
                yield k, c, j, part


def build_cache(scene_dir: str, run_dir: str, mesh: str | None = None, level: int | None = None,
                ss: int = SS.default, test_every: int = TEST_EVERY.default, device: str = "auto",
                shard_rays: int = 1 << 22, seed: int = 0, overwrite: bool = False) -> dict:
    """The ray cache of SCENE in RUN/cache (see the module doc). Returns RUN/config.json's
    content, or {"stopped": True} after a requested stop (the build continues from there when
    run again). RUN must be new, empty or a run folder of SCENE whose model (if any) the cache
    still matches, unless `overwrite` (RunFolder.claim)."""
    # Inputs are read and checked before the run folder is created or locked.
    return CacheBuild(scene_dir, run_dir, mesh, level, ss, test_every, device, shard_rays, seed).build(overwrite)


class CacheBuild:
    """One ray cache build, in its phases: `start_or_resume` (RUN/cache.tmp, or its state after an
    interruption), `write_views` (every training view's rays appended to random bucket files),
    `write_shards` (each bucket shuffled into a shard), `finish` (RUN/cache replaced atomically,
    RUN/config.json). Constructing it reads and checks every input (nothing is written); `build`
    runs the phases. A stop (SIGINT/SIGTERM) is honoured between views and between shards: the
    build ends with a `stopped` event and continues from there when run again."""

    def __init__(self, scene_dir, run_dir, mesh=None, level=None, ss=SS.default, test_every=TEST_EVERY.default,
                 device="auto", shard_rays=1 << 22, seed=0):
        SS.check(ss)
        TEST_EVERY.check(test_every)
        self.dev = resolve_device(device)
        self.scene = load_scene(scene_dir, mesh, level)
        self.mesh = load_mesh(self.scene.mesh_path)
        nm = self.mesh.non_manifold_edges()
        if nm:
            events.log(f"{self.scene.mesh_path}: {nm} non-manifold edges (kept; they do not affect rasterization)")
        self.ss, self.seed = ss, seed
        self.train_ids, self.test_ids = self.scene.split(test_every)
        self.run = RunFolder(run_dir)
        self.tmp, self.progress = self.run.cache_tmp, self.run.cache_progress
        self.rast = Rasterizer(self.mesh, self.dev)
        views = self.scene.views
        max_rays = sum(views[i].camera.width * views[i].camera.height for i in self.train_ids)
        self.n_buckets = max(1, -(-max_rays // shard_rays))
        self.rng = np.random.default_rng(seed)
        self.sizes = np.zeros((self.n_buckets, len(FIELDS)), np.int64)   # committed bytes per bucket file
        self.key = {"scene": str(self.scene.root.resolve()), "mesh": str(self.scene.mesh_path.resolve()),
                    "level": level, "ss": ss, "test_every": test_every, "shard_rays": shard_rays,
                    "seed": seed, "train_views": self.train_ids, "inputs": inputs_fingerprint(self.scene)}
        lo, hi = self.mesh.bounds
        entries = [{"name": v.name, "image": str(v.image_path.resolve()), "camera": v.camera.to_dict(),
                    "split": "test" if i in self.test_ids else "train"} for i, v in enumerate(views)]
        # RUN/config.json, once the cache is complete
        self.config = {"version": CACHE_VERSION, "scene": self.key["scene"], "mesh": self.key["mesh"],
                       "level": level, "ss": ss, "test_every": test_every, "aabb": [lo.tolist(), hi.tolist()],
                       "views": entries, "train_views": self.train_ids, "test_views": self.test_ids,
                       "inputs": self.key["inputs"]}
        self.done, self.coverage, self.total = 0, {}, 0
        self.clock = PhaseClock()
        self.camera_rows = camera_rows([v.camera for v in views])
        self.field = FieldBuilder(*normalisation(lo, hi), self.dev)
        self.flag: StopFlag | None = None
        # Held-out photos are otherwise decoded only by `eval`, after the training time.
        check_photos([views[i] for i in self.test_ids], "held-out")

    def build(self, overwrite: bool = False) -> dict:
        with StopFlag() as self.flag:
            if self.flag.stop:          # asked to stop while the inputs were read: nothing written
                return self._stopped("views", 0, len(self.train_ids))
            self.check_run_folder(overwrite)            # before the lock creates anything there
            with self.run.exclusive("the ray cache"):
                self.run.claim(self.key["scene"], self.config, overwrite)
                return self._build()

    def check_run_folder(self, overwrite: bool = False) -> None:
        """InputError unless this cache may be built in the run folder (RunFolder.claim)."""
        self.run.claim(self.key["scene"], self.config, overwrite, write=False)

    def _build(self) -> dict:
        self.start_or_resume()
        if not self.write_views():
            return self._stopped("views", self.done, len(self.train_ids))
        shards = self.write_shards()
        if shards is None:
            return self._stopped("shards", self._shards_done(), self.n_buckets)
        return self.finish(shards)

    def _stopped(self, phase: str, step: int, total: int) -> dict:
        events.emit("stopped", stage="cache", phase=phase, step=step, total=total, run=str(self.run.root))
        return {"stopped": True, "phase": phase, "step": step, "total": total}

    def _stop_requested(self) -> bool:
        return self.flag is not None and self.flag.stop

    def _shards_done(self) -> int:
        return sum((self.tmp / f"shard_{b:05d}").is_dir() for b in range(self.n_buckets))

    def start_or_resume(self) -> None:
        """Resume an interrupted build of the same inputs (dropping bytes written after its last
        completed view), else start from an empty RUN/cache.tmp."""
        tmp = self.tmp
        state = read_json(self.progress) if self.progress.is_file() else None
        resumable = state is not None and state.get("key") == self.key
        if resumable and not _buckets_complete(tmp, np.array(state["sizes"], np.int64)):
            events.log("the interrupted ray cache lost data (the machine stopped before its files "
                       "reached the disk); building it again from the first view")
            resumable = False
        if resumable:
            self.done, self.coverage, self.total = state["done"], state["coverage"], state["total"]
            self.rng.bit_generator.state = state["rng"]
            self.sizes = np.array(state["sizes"], np.int64)
            for b, c, f in _unsharded_buckets(tmp, self.n_buckets):
                with open(f, "ab") as fh:
                    fh.truncate(int(self.sizes[b, c]))
            events.log(f"resuming the ray cache after {self.done} of {len(self.train_ids)} views")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "buckets").mkdir(parents=True)

    def write_views(self) -> bool:
        """Rasterize every remaining training view and append its rays to random buckets; the
        progress file is written after each view (the resume point). False when a stop ended it
        before the last view."""
        scene, train_ids, clock, tmp = self.scene, self.train_ids, self.clock, self.tmp
        prog = events.Progress("cache", len(train_ids), start_step=self.done)
        per_ray = ray_bytes(self.ss)
        # The next photo is decoded in a thread while this one is rasterized and written.
        pool = ThreadPoolExecutor(1)

        def load(n: int):
            if n < len(train_ids):
                v = scene.views[train_ids[n]]
                return pool.submit(lambda: (load_rgb8(v.image_path, v.camera),
                                            read_mask(v.mask_path, v.camera.width, v.camera.height)))

        nxt = load(self.done)
        try:
            for n in range(self.done, len(train_ids)):
                if self._stop_requested():
                    return False
                i = train_ids[n]
                v = scene.views[i]
                check_disk(tmp, v.camera.width * v.camera.height * per_ray, len(train_ids) - n, n)
                with clock("decode_wait"):
                    (rgb8, valid), nxt = nxt.result(), load(n + 1)
                with clock("rasterize"):
                    rec = view_rays(self.rast, v.camera, rgb8, self.ss, i, valid)
                cnt = len(rec["view"]) if rec else 0
                self.coverage[v.name] = cnt / (v.camera.width * v.camera.height)
                if cnt:
                    self._append(rec, cnt)
                else:
                    events.log(f"view {v.name}: the mesh covers no pixel; skipped")
                self.total += cnt
                if n == self.done and cnt and len(train_ids) > n + 1:
                    _warn_if_short(tmp, cnt * per_ray, len(train_ids) - n - 1)
                write_json(self.progress, {"key": self.key, "done": n + 1, "coverage": self.coverage,
                                           "total": self.total, "rng": self.rng.bit_generator.state,
                                           "sizes": self.sizes.tolist()})
                self.done = n + 1
                prog.update(n + 1, view=v.name, rays=self.total)
        finally:
            pool.shutdown(cancel_futures=True)
        if self.total == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise InputError(f"{scene.mesh_path}: no training camera sees the mesh; check that the mesh "
                             "and the cameras are in the same world frame (no axis change on export).")
        return True

    def _append(self, rec: dict[str, torch.Tensor], cnt: int) -> None:
        bucket = self.rng.integers(0, self.n_buckets, cnt, dtype=np.int32)
        # Files are opened per write, not kept open: thousands of buckets at 8K would exceed the
        # open-file limit.
        with self.clock("bucket_write"):
            for k, c, b, part in bucket_parts(rec, bucket, self.n_buckets):
                with open(_bucket_file(self.tmp, b, k), "ab") as fh:
                    part.tofile(fh)
                self.sizes[b, c] += part.nbytes

    def write_shards(self) -> list[dict] | None:
        """Shuffle each bucket into a shard of .npy files (a shard written before an interruption
        is kept); bucket files are deleted as they are used. None when a stop ended it before
        the last shard."""
        tmp, clock, S = self.tmp, self.clock, self.ss * self.ss
        shards, deletes, deleter = [], [], ThreadPoolExecutor(1)
        try:
            for b in range(self.n_buckets):
                if self._stop_requested():
                    return None
                shard = self._write_shard(b, S, deletes, deleter)
                if shard is not None:
                    shards.append(shard)
        finally:
            with clock("free_disk"):
                deleter.shutdown()
                for d in deletes:
                    d.result()                                 # re-raise a failed delete
        shutil.rmtree(tmp / "buckets")
        self.progress.unlink()
        return shards

    def _write_shard(self, b: int, S: int, deletes: list, deleter: ThreadPoolExecutor) -> dict | None:
        """Bucket `b` shuffled into shard_{b}/ (None for an empty bucket)."""
        tmp, clock = self.tmp, self.clock
        # Each shuffle seeds from (seed, bucket), so a resumed run rebuilds identical shards.
        name = f"shard_{b:05d}"
        dev = self.rast.device
        if (tmp / name).is_dir():                          # written before an interruption
            old = {k: np.load(tmp / name / f"{k}.npy") for k in ("xyz", "mask", "view")}
            self._add_to_field({k: _on_device(v, dev) for k, v in old.items()})
            return {"name": name, "n": len(old["view"])}
        with clock("shuffle_read"):
            data = {k: np.fromfile(_bucket_file(tmp, b, k), dtype=dt) for k, dt in FIELDS.items()}
        n = len(data["view"])
        if n == 0:
            return None
        data = {k: v.reshape(n, *row_shape(k, S)) for k, v in data.items()}
        with clock("shuffle"):
            # The random gather on the GPU (numpy's single-threaded one took 1 s per 4M-ray
            # shard: memory latency); the footprint field from the same copies.
            rows = {k: _on_device(v, dev) for k, v in data.items()}
            self._add_to_field(rows)
            perm = torch.from_numpy(np.random.default_rng([self.seed, b]).permutation(n)).to(dev)
            data = {k: _to_host(rows[k][perm], FIELDS[k]) for k in FIELDS}
        part = tmp / (name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir()
        with clock("shuffle_write"):
            for k in FIELDS:
                np.save(part / f"{k}.npy", data[k])
        part.replace(tmp / name)
        # Free the disk as we go, in a thread: unlinking a large file takes ~10 ms.
        deletes += [deleter.submit(_bucket_file(tmp, b, k).unlink) for k in FIELDS]
        return {"name": name, "n": int(n)}

    def _add_to_field(self, rows: dict[str, torch.Tensor]) -> None:
        """The finest footprint of every hit sub-sample of these rays, per field cell."""
        with self.clock("footprints"):
            hit = unpack_mask(rows["mask"], self.ss * self.ss)
            fp = footprints(rows["xyz"], self.camera_rows.to(hit.device)[rows["view"].long()], self.ss)
            self.field.add(rows["xyz"], hit, fp)

    def finish(self, shards: list[dict]) -> dict:
        """RUN/cache.tmp -> RUN/cache, then RUN/config.json (scene, split, cameras, AABB)."""
        run, tmp, config = self.run, self.tmp, self.config
        meta = {"version": CACHE_VERSION, "ss": self.ss, "n_rays": int(self.total), "shards": shards,
                "coverage": self.coverage, "seconds": self.clock.seconds}   # this run's, not a resumed one's
        np.save(tmp / FIELD_FILE, self.field.finish())
        write_json(tmp / "meta.json", meta)
        shutil.rmtree(run.cache, ignore_errors=True)
        tmp.replace(run.cache)
        write_json(run.config, config)
        events.emit("done", stage="cache", rays=int(self.total), shards=len(shards),
                    train_views=len(self.train_ids), test_views=len(self.test_ids), cache=str(run.cache),
                    seconds=self.clock.seconds)
        return config


def _bucket_file(tmp: Path, b: int, field: str) -> Path:
    return tmp / "buckets" / f"{b:05d}.{field}"


def _unsharded_buckets(tmp: Path, n_buckets: int):
    """(bucket, field column, file) of every bucket file not yet turned into a shard."""
    for b in range(n_buckets):
        if not (tmp / f"shard_{b:05d}").is_dir():
            for c, k in enumerate(FIELDS):
                yield b, c, _bucket_file(tmp, b, k)


def _buckets_complete(tmp: Path, sizes: np.ndarray) -> bool:
    """Every bucket file not yet turned into a shard holds at least its committed bytes."""
    return all((f.stat().st_size if f.exists() else 0) >= sizes[b, c]
               for b, c, f in _unsharded_buckets(tmp, len(sizes)))


def _warn_if_short(folder: Path, view_bytes: int, views_left: int) -> None:
    """After the first view: say early when the whole cache is unlikely to fit."""
    need, free = view_bytes * views_left, shutil.disk_usage(folder).free - DISK_RESERVE
    if need > free:
        events.log(f"warning: the ray cache will need about {need / 1e9:.0f} GB more for the "
                   f"remaining {views_left} views (judging by the first one) but {folder} has "
                   f"{max(free, 0) / 1e9:.0f} GB free; the build will stop when the disk is full.")


def inputs_fingerprint(scene) -> str:
    """What a cache is made from beyond its paths: the size and modification time of the mesh and of
    every photo and its mask, and the cameras. A scene prepared again in place (other cameras,
    photos or mesh at the same paths) changes it, so its old cache is not taken for up to date."""
    def stamp(path):
        try:
            st = Path(path).stat()
        except (OSError, TypeError):
            return None
        return [str(path), st.st_size, st.st_mtime_ns]
    items = [stamp(scene.mesh_path)] + [[stamp(v.image_path), stamp(mask_path_for(v.image_path)), v.camera.to_dict()]
                                        for v in scene.views]
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:24]


def cache_matches(run_dir: str, scene_dir: str, ss: int, test_every: int, level: int | None,
                  mesh: str | None) -> bool:
    """True when RUN has a complete cache built from the same inputs (inputs_fingerprint) and settings."""
    run = RunFolder(run_dir)
    try:
        cfg = run.settings()
    except InputError:
        return False
    same_mesh = mesh is None or str(Path(mesh).resolve()) == cfg.mesh
    if not (cfg.scene == str(Path(scene_dir).resolve()) and cfg.ss == ss and
            cfg.test_every == test_every and cfg.level == level and same_mesh):
        return False
    try:
        return cfg.inputs == inputs_fingerprint(load_scene(scene_dir, mesh, level))
    except InputError:            # the scene no longer loads: building the cache says why
        return False


class ShardReader:
    """Memory-mapped access to the cache shards."""

    def __init__(self, run_dir: str | Path):
        self.run = RunFolder(run_dir)
        self.meta = read_json(self.run.cache / "meta.json")
        self.shards = self.meta["shards"]

    @property
    def rays(self) -> int:
        """The training rays in the shards (what the loader reads)."""
        return sum(s["n"] for s in self.shards)

    def load(self, i: int, mmap: bool = True) -> dict[str, np.ndarray]:
        d = self.run.cache / self.shards[i]["name"]
        arrays = {k: load_cache_array(d / f"{k}.npy", mmap) for k in FIELDS}
        for k, a in arrays.items():          # a file of the right format but another length
            if a.ndim < 1 or a.shape[0] != self.shards[i]["n"]:
                raise damaged_cache(d / f"{k}.npy", f"{a.shape[0] if a.ndim else 0} rays where meta.json "
                                    f"says {self.shards[i]['n']}")
        return arrays


def damaged_cache(path: Path, why: str) -> InputError:
    """The one-line error for a ray cache file (RUN/cache/...) that is not what the cache wrote."""
    path = Path(path)
    run = next((p.parent for p in path.parents if p.name == "cache"), path.parent)
    return InputError(f"{path}: the ray cache is damaged ({why}); build it again with: python -m backend cache "
                      f"--scene SCENE --run {run} --overwrite (or fit again), or restore the file.")


def load_cache_array(path: Path, mmap: bool = False) -> np.ndarray:
    """A ray cache array; a damaged or tampered file (truncated, not .npy, pickled objects) is a
    one-line error naming it, not a traceback."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise damaged_cache(path, first_line(e)[:120]) from e
