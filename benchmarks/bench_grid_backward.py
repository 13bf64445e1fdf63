"""The hash grid's backward at the training batch: what its atomic adds cost, and what sorting the
batch's rays in space (ray_sort.py) and summing runs of shared corners on the chip
(triton_kernels Launch.scatter) buy. One CUDA GPU, reference grid (16 levels x 2^22 x 8).

    python benchmarks/bench_grid_backward.py [--out results/grid_backward.json] [--quick]

Batch: the reference preset's 1.57 M rays x 4 sub-samples (ss 2), footprint level weights on.
Points: on the procedural scene's surface (4 sub-samples a footprint apart, shuffled as the
cache gives them), and uniformly random in the cube (a bound: no two rays share anything).
Variants, per point set: today's kernels; plain stores instead of atomics (a WRONG gradient: what
the atomics cost); the batch sorted along a Morton curve (sort timed apart: key, argsort and
the gather of every batch field, as a loader would), with today's launches, the all-levels
launch, runs summed on the chip below a level size, plain stores; torch's index_add_ (the
scatter alone, indices precomputed). `grad err`: max |g - today's| / max |today's|.
--quick: a tiny grid and batch (CPU under TRITON_INTERPRET=1: a smoke run).
Prints a table (variant, forward ms, backward ms, sort ms, total vs today) as its last lines.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend.config import PRESETS, HashGridConfig  # noqa: E402
from backend.encoding import n_params  # noqa: E402
from backend.encoding import triton_kernels as ht  # noqa: E402
from backend.encoding.layout import levels, log2_cells, log2_footprint_offset, normalisation  # noqa: E402
from backend.encoding.reference import corner_indices_weights, level_weights  # noqa: E402
from backend.synthetic.procedural import make_spec  # noqa: E402
from common import report, write_json  # noqa: E402
from ray_sort import sort_batch  # noqa: E402

QUICK_CFG = HashGridConfig(n_levels=5, n_features=4, log2_table=12, base_res=6, per_level_scale=2.0)
S = 4                                   # sub-samples per ray (ss 2)
LOADER_FIELDS = ("xyz", "mask", "dir", "rgb", "view")   # a batch as loader.RayLoader gives it


def time_ms(fn, dev: torch.device) -> float:
    """Median ms of fn: triton's do_bench on CUDA, one timed call elsewhere."""
    if dev.type == "cuda":
        from triton.testing import do_bench
        return do_bench(fn, warmup=10, rep=60, return_mode="median")
    t0 = time.perf_counter()      # a smoke run (Triton's interpreter): one call, no warm-up
    fn()
    return (time.perf_counter() - t0) * 1e3


class Batch:
    """One training batch on `dev`: the loader's fields (world xyz, mask, dir, rgb, view), the
    grid's inputs (normalised points, weights) and an output gradient of the encoding."""

    def __init__(self, xyz: torch.Tensor, lo, inv, lf: torch.Tensor, cfg: HashGridConfig, seed: int):
        g = torch.Generator(device=xyz.device).manual_seed(seed)
        n, dev = len(xyz), xyz.device
        self.fields = {"xyz": xyz, "mask": torch.ones(n, S, dtype=torch.bool, device=dev),
                       "dir": torch.nn.functional.normalize(torch.randn(n, 3, device=dev, generator=g), dim=-1),
                       "rgb": torch.rand(n, 3, device=dev, generator=g),
                       "view": torch.randint(0, 1024, (n,), device=dev, generator=g),
                       "lf": lf, "gout": torch.randn(n, cfg.out_dim, device=dev, generator=g)}
        self.lo, self.inv = torch.as_tensor(lo, device=dev), torch.as_tensor(inv, device=dev)

    def sorted(self) -> "Batch":
        b = object.__new__(Batch)
        b.fields, b.lo, b.inv = sort_batch(self.fields), self.lo, self.inv
        return b

    @property
    def x(self) -> torch.Tensor:
        return ((self.fields["xyz"] - self.lo) * self.inv).clamp(0.0, 1.0).contiguous()

    @property
    def weights(self) -> ht.Weights:
        w = self.fields["mask"].float() / S
        return ht.Weights(w=w, log2_footprint=self.fields["lf"], fade=1.0, bias=0.0)


def surface_batch(n: int, cfg: HashGridConfig, dev: torch.device, seed: int = 0) -> Batch:
    """n rays on the procedural scene's surface: area-weighted triangles, 4 sub-samples spread
    over the ray's footprint along the triangle (footprints log-uniform over 1-10 mm of a 5 m
    scene: photos of 2-8K pixels from a few metres), in random order."""
    mesh = make_spec(0).mesh
    g = torch.Generator(device=dev).manual_seed(seed)
    v = torch.from_numpy(mesh.vertices).to(dev, torch.float32)
    tri = v[torch.from_numpy(mesh.faces).to(dev).long()]                    # (F, 3, 3)
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = torch.linalg.cross(e1, e2).norm(dim=1)
    f = torch.multinomial(area, n, replacement=True, generator=g)
    a, b = torch.rand(n, 1, device=dev, generator=g), torch.rand(n, 1, device=dev, generator=g)
    flip = (a + b) > 1
    a, b = torch.where(flip, 1 - a, a), torch.where(flip, 1 - b, b)
    centre = tri[f, 0] + a * e1[f] + b * e2[f]
    t1 = torch.nn.functional.normalize(e1[f], dim=-1)
    t2 = torch.nn.functional.normalize(torch.linalg.cross(torch.linalg.cross(e1[f], e2[f]), t1), dim=-1)
    fp = 10 ** (-3 + torch.rand(n, 1, device=dev, generator=g))              # world footprint, 1-10 mm
    off = (torch.rand(n, S, 2, device=dev, generator=g) - 0.5) * fp[..., None]
    xyz = centre[:, None] + off[..., :1] * t1[:, None] + off[..., 1:] * t2[:, None]
    lo, inv = normalisation(mesh.vertices.min(0), mesh.vertices.max(0))
    lf = (torch.log2(fp) + log2_footprint_offset(inv)).expand(n, S).contiguous()
    return Batch(xyz.contiguous(), lo, inv, lf, cfg, seed)


def uniform_batch(n: int, cfg: HashGridConfig, dev: torch.device, seed: int = 1) -> Batch:
    """n rays of 4 independent uniformly random points in the unit cube, footprints between
    levels 6 and 15 (bench_hashgrid's): the bound where no two points share a corner."""
    g = torch.Generator(device=dev).manual_seed(seed)
    lc = torch.from_numpy(log2_cells(cfg)).to(dev)
    k = min(6, cfg.n_levels - 1)
    lf = lc[k] + (lc[-1] - lc[k]) * torch.rand(n, S, device=dev, generator=g)
    return Batch(torch.rand(n, S, 3, device=dev, generator=g), np.zeros(3, np.float32), np.ones(3, np.float32),
                 lf, cfg, seed)


def index_add_ms(b: Batch, cfg: HashGridConfig, dev: torch.device) -> tuple[float, torch.Tensor]:
    """torch's index_add_ of every level's 8 corner contributions (indices and values computed
    beforehand, one level at a time): summed ms, and the gradient it gives."""
    x = b.x.reshape(-1, 3)
    wts = b.weights
    lw = level_weights(wts.log2_footprint.reshape(-1), torch.from_numpy(log2_cells(cfg)).to(dev),
                       wts.fade, wts.bias) * wts.w.reshape(-1, 1)               # (N*S, L)
    gout = b.fields["gout"]
    gt = torch.zeros(n_params(cfg), cfg.n_features, device=dev)
    total = time_ms(lambda: gt.zero_(), dev)
    for lvl, lv in enumerate(levels(cfg)):
        idx, w = corner_indices_weights(x, lv.scale, lv.res, lv.size, cfg.smoothstep)
        g = gout[:, lvl * cfg.n_features:(lvl + 1) * cfg.n_features].repeat_interleave(S, 0) * lw[:, lvl:lvl + 1]
        contrib = (w[..., None] * g[:, None]).reshape(-1, cfg.n_features)
        rows = (idx + lv.offset).reshape(-1)
        scratch = torch.zeros_like(gt)
        total += time_ms(lambda: scratch.index_add_(0, rows, contrib), dev)
        gt.index_add_(0, rows, contrib)
        del idx, w, g, contrib, rows, scratch
    return total, gt


def variants(cfg: HashGridConfig, quick: bool) -> list[tuple]:
    """(name, sorted?, forward launch or None, backward launch, 'kernel' or 'index_add')."""
    L, blk = ht.Launch, (64 if quick else 128)
    base, fwd = L(blk, 8), L(blk, 8)
    sizes = sorted({lv.size for lv in levels(cfg)})
    dense_max = max(lv.size for lv in levels(cfg) if not lv.hashed)
    small = sizes[1] if quick else 2 ** 14
    return [
        ("today: shuffled, atomics", False, fwd, base, "kernel"),
        ("shuffled, plain stores (WRONG grad: atomics' cost)", False, None, L(blk, 8, scatter="store"), "kernel"),
        ("sorted, atomics", True, fwd, base, "kernel"),
        ("sorted, all-levels launch", True, L(blk, 8, per_level=False), L(blk, 8, per_level=False), "kernel"),
        (f"sorted, runs summed on levels <= {small} rows", True, None,
         L(blk, 8, scatter="segmented", segment_rows=small), "kernel"),
        (f"sorted, runs summed on dense levels (<= {dense_max} rows)", True, None,
         L(blk, 8, scatter="segmented", segment_rows=dense_max), "kernel"),
        ("sorted, runs summed on every level", True, None, L(blk, 8, scatter="segmented"), "kernel"),
        ("sorted, plain stores (WRONG grad)", True, None, L(blk, 8, scatter="store"), "kernel"),
        ("shuffled, torch index_add_ (scatter only)", False, None, None, "index_add"),
        ("sorted, torch index_add_ (scatter only)", True, None, None, "index_add"),
    ]


def run_set(label: str, shuffled: Batch, cfg: HashGridConfig, dev: torch.device, quick: bool,
            rows: list[dict], table_rows: list[dict], only: set[str] | None) -> None:
    table = torch.randn(n_params(cfg), cfg.n_features, device=dev) * 0.1
    loaded = {k: shuffled.fields[k] for k in LOADER_FIELDS}      # what a loader would sort
    sort_ms = time_ms(lambda: sort_batch(loaded), dev)
    report(rows, {"metric": f"{label}: sort (Morton key, argsort, gather of the batch)", "value": sort_ms, "unit": "ms"})
    batches = {False: shuffled, True: shuffled.sorted()}
    ref, fwd_ms = None, {}
    for name, srt, fl, bl, kind in variants(cfg, quick):
        if only is not None and not any(name.startswith(o) for o in only):
            continue
        b = batches[srt]
        x, wts, gout = b.x, b.weights, b.fields["gout"]
        row = {"set": label, "variant": name, "fwd_ms": None, "bwd_ms": None, "sort_ms": sort_ms if srt else 0.0}
        try:
            if kind == "index_add":
                row["bwd_ms"], grad = index_add_ms(b, cfg, dev)
            else:
                if fl is not None:
                    fwd_ms[srt, fl] = time_ms(lambda: ht.forward_pixels(x, table, cfg, wts, fl), dev)
                row["fwd_ms"] = fwd_ms.get((srt, fl or ht.Launch(bl.block, bl.num_warps)))
                row["bwd_ms"] = time_ms(lambda: ht.backward_pixels(x, gout, cfg, wts, bl), dev)
                grad = ht.backward_pixels(x, gout, cfg, wts, bl)
            if ref is None:
                ref = grad
            row["grad_err"] = ((grad - ref).abs().max() / ref.abs().max()).item()
            del grad
        except Exception as e:      # noqa: BLE001 - one failing variant must not lose the others
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            print(f"  {label} / {name}: FAILED {row['error']}", flush=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        for k in ("fwd_ms", "bwd_ms"):
            if row.get(k) is not None:
                report(rows, {"metric": f"{label} / {name}: {k[:3]}", "value": row[k], "unit": "ms"})
        table_rows.append(row)
    today = next((r for r in table_rows if r["set"] == label and r["variant"].startswith("today")), None)
    if today and today.get("bwd_ms") is not None:
        base = (today["fwd_ms"] or 0.0) + today["bwd_ms"]
        for r in table_rows:
            if r["set"] == label and r.get("bwd_ms") is not None:
                r["total_vs_today"] = ((r["fwd_ms"] if r["fwd_ms"] is not None else today["fwd_ms"] or 0.0)
                                       + r["bwd_ms"] + r["sort_ms"]) / base


def print_variants(table_rows: list[dict], header: str) -> None:
    fmt = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    print(f"\n{header}")
    print(f"{'set':8s} {'variant':58s} {'fwd ms':>8s} {'bwd ms':>8s} {'sort ms':>8s} {'total/today':>11s} {'grad err':>9s}")
    for r in table_rows:
        err = r.get("error")
        print(f"{r['set']:8s} {r['variant'][:58]:58s} {fmt(r['fwd_ms'])[:8]:>8s} {fmt(r['bwd_ms'])[:8]:>8s} "
              f"{fmt(r['sort_ms'])[:8]:>8s} {fmt(r.get('total_vs_today'), 3):>11s} "
              f"{'FAILED ' + err[:60] if err else ('%.1e' % r['grad_err'] if 'grad_err' in r else '-'):>9s}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/grid_backward.json")
    ap.add_argument("--quick", action="store_true", help="tiny grid and batch: a smoke run (CPU: TRITON_INTERPRET=1)")
    ap.add_argument("--rays", type=int, help="rays per batch (default: the reference preset's)")
    ap.add_argument("--sets", default="surface,uniform")
    ap.add_argument("--only", help="variant name prefixes, separated by semicolons (default: all)")
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = QUICK_CFG if a.quick else HashGridConfig()
    n = a.rays or (40 if a.quick else PRESETS["reference"].config.optim.batch_rays)
    only = set(a.only.split(";")) if a.only else None
    rows, table_rows = [], []
    t0 = time.perf_counter()
    makers = {"surface": surface_batch, "uniform": uniform_batch}
    for label in a.sets.split(","):
        batch = makers[label](n, cfg, dev)
        run_set(label, batch, cfg, dev, a.quick, rows, table_rows, only)
        del batch
    header = (f"Hash grid backward, {n} rays x {S} sub-samples, {cfg.n_levels} levels x 2^{cfg.log2_table} x "
              f"{cfg.n_features} ({time.perf_counter() - t0:.0f} s)")
    write_json(a.out, rows, variants=table_rows, rays=n, sub_samples=S, config=cfg.__dict__)
    print_variants(table_rows, header)


if __name__ == "__main__":
    main()
