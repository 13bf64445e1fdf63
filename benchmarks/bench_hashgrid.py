"""Hash encoding throughput on one CUDA GPU: Triton kernels, PyTorch reference, memory floors.

    python benchmarks/bench_hashgrid.py [--out benchmarks/results/hashgrid.json] [--n-log2 22]

Measures first the device's rates for random 32-byte row reads and atomic adds (a Triton gather /
scatter of 8 rows per point, like the 8 corners of a cell) over tables of each level's size, then
the encodings at the reference settings on 2^22 uniformly random points and on points in rendering
order. Prints a table (metric, value, target, ratio) last and writes all numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dataclasses import asdict  # noqa: E402

from backend.config import HashGridConfig  # noqa: E402
from backend.encoding import n_params  # noqa: E402
from backend.encoding.layout import levels  # noqa: E402
from backend.encoding import triton_kernels as ht  # noqa: E402
from backend.encoding.reference import encode_reference  # noqa: E402
from backend.encoding.triton_encoder import encode_pixels_triton, encode_triton  # noqa: E402

DEV = "cuda"
TARGETS = {"triton_fwd_random_Mpts": 400.0, "triton_fwd_bwd_random_Mpts": 100.0}


@triton.jit
def _mix(h):
    # murmur3 finaliser: cheap well-spread pseudo-random indices, no index array to read.
    h ^= h >> 16
    h *= 0x85EBCA6B
    h ^= h >> 13
    h *= 0xC2B2AE35
    h ^= h >> 16
    return h


@triton.jit
def _random_rows_kernel(table_ptr, out_ptr, n_rows, seed, BLOCK: tl.constexpr, F: tl.constexpr,
                        ATOMIC: tl.constexpr):
    """Each point touches 8 random 32-byte rows: gathers them (sum stored) or atomically adds."""
    pts = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    feat = tl.arange(0, F)
    acc = tl.zeros((BLOCK, F), dtype=tl.float32)
    for c in tl.static_range(8):
        h = _mix((pts * 8 + c + seed).to(tl.uint32))
        row = tl.umulhi(h, n_rows.to(tl.uint32)).to(tl.int64)            # uniform in [0, n_rows)
        ptrs = table_ptr + row[:, None] * F + feat[None, :]
        if ATOMIC:
            tl.atomic_add(ptrs, tl.full((BLOCK, F), 1.0, tl.float32), sem="relaxed")
        else:
            acc += tl.load(ptrs)
    if not ATOMIC:
        tl.store(out_ptr + pts, tl.sum(acc, 1))


def bench_ms(fn, rep: int = 200, grad_to_none=None) -> float:
    return do_bench(fn, warmup=25, rep=rep, grad_to_none=grad_to_none, return_mode="median")


def random_row_rate(table_bytes: int, atomic: bool, n_points: int) -> float:
    """Random 32-byte rows per second (8 per point) over a float32 table of table_bytes."""
    n_rows = table_bytes // 32
    table = torch.rand(n_rows, 8, device=DEV)
    out = torch.empty(n_points, device=DEV)
    calls = [0]

    def fn() -> None:
        calls[0] += 1
        seed = (calls[0] % 31 + 1) << 25          # other rows each call; one specialisation
        _random_rows_kernel[(triton.cdiv(n_points, 128),)](
            table, out, n_rows, seed, BLOCK=128, F=8, ATOMIC=atomic, num_warps=4)

    ms = bench_ms(fn, rep=100)
    return n_points * 8 / (ms * 1e-3)


def copy_bandwidth() -> float:
    a = torch.empty(1 << 28, device=DEV)  # 1 GiB
    b = torch.empty_like(a)
    ms = bench_ms(lambda: b.copy_(a), rep=100)
    return 2 * a.numel() * 4 / (ms * 1e-3)


def frame_points(side: int) -> torch.Tensor:
    """Surface points of a side x side frame in raster order: a wavy height field seen from above."""
    v, u = torch.meshgrid(torch.linspace(0, 1, side, device=DEV),
                          torch.linspace(0, 1, side, device=DEV), indexing="ij")
    z = 0.5 + 0.15 * torch.sin(6 * math.pi * u) * torch.cos(4 * math.pi * v)
    return torch.stack([0.1 + 0.8 * u, 0.1 + 0.8 * v, z], -1).reshape(-1, 3).contiguous()


def morton_sorted(x: torch.Tensor) -> torch.Tensor:
    q = (x * 1023).long()

    def spread(a: torch.Tensor) -> torch.Tensor:  # 10 bits -> every third bit
        a = (a | (a << 16)) & 0x030000FF
        a = (a | (a << 8)) & 0x0300F00F
        a = (a | (a << 4)) & 0x030C30C3
        return (a | (a << 2)) & 0x09249249

    code = spread(q[:, 0]) | (spread(q[:, 1]) << 1) | (spread(q[:, 2]) << 2)
    return x[torch.argsort(code)].contiguous()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "hashgrid.json"))
    ap.add_argument("--n-log2", type=int, default=22)
    ap.add_argument("--no-sweep", action="store_true", help="skip the launch-variant sweep")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = HashGridConfig()
    n = 1 << args.n_log2
    props = torch.cuda.get_device_properties(0)
    res: dict = {"device": props.name, "sm_count": props.multi_processor_count,
                 "l2_bytes": props.L2_cache_size, "torch": torch.__version__,
                 "triton": triton.__version__, "n_points": n, "config": asdict(cfg)}
    log = lambda k, v: (res.__setitem__(k, v), print(f"{k}: {v}", flush=True))  # noqa: E731
    res["launch_fwd"], res["launch_bwd"] = str(ht.FWD_LAUNCH), str(ht.BWD_LAUNCH)
    res["launch_coherent"] = str(ht.COHERENT_LAUNCH)
    log("device", f"{props.name}, {props.multi_processor_count} SMs, L2 {props.L2_cache_size >> 20} MiB")

    # ---- device ceilings
    log("copy_GBps", round(copy_bandwidth() / 1e9, 1))
    layout = levels(cfg)
    sizes = sorted({lv.size * cfg.n_features * 4 for lv in layout})
    hashed = [lv.size for lv in layout if lv.hashed]
    sizes.append(sum(hashed) * cfg.n_features * 4)               # all hashed tables at once
    rate_rd, rate_at = {}, {}
    for b in sizes:
        rate_rd[b] = random_row_rate(b, atomic=False, n_points=n)
        rate_at[b] = random_row_rate(b, atomic=True, n_points=n)
        print(f"table {b / 1e6:9.1f} MB: random 32B read {rate_rd[b] * 32 / 1e9:7.1f} GB/s "
              f"({rate_rd[b] / 1e9:5.2f} G rows/s), atomic add {rate_at[b] * 32 / 1e9:7.1f} GB/s",
              flush=True)
    res["random_rows"] = {str(b): {"read_rows_per_s": rate_rd[b], "atomic_rows_per_s": rate_at[b]}
                          for b in sizes}
    big, lvl_max = sizes[-1], sizes[-2]
    log("rand32_read_GBps_all_hashed", round(rate_rd[big] * 32 / 1e9, 1))
    log("rand32_read_GBps_one_level", round(rate_rd[lvl_max] * 32 / 1e9, 1))
    log("rand32_atomic_GBps_one_level", round(rate_at[lvl_max] * 32 / 1e9, 1))

    # ---- floors (seconds for n points): output written once + 8 corner rows per point and level.
    bw = res["copy_GBps"] * 1e9                                   # bytes moved per second
    out_s = n * cfg.out_dim * 4 / bw
    lvl_bytes = [lv.size * cfg.n_features * 4 for lv in layout]
    n_miss = sum(b > props.L2_cache_size for b in lvl_bytes)
    small = sizes[0]
    # (a) every level beyond L2 misses, all tables live at once (read rate over all hashed tables)
    floor_a = out_s + n * 8 * (n_miss / rate_rd[big] + (cfg.n_levels - n_miss) / rate_rd[small])
    # (b) one level at a time: each level's rows at the rate measured on a table of its size
    floor_b = out_s + sum(n * 8 / rate_rd[b] for b in lvl_bytes)
    # backward: grad_out read + gradient table zeroed + atomics at the per-level-size rates
    zero_s = n_params(cfg) * cfg.n_features * 4 / bw
    floor_bwd = out_s + zero_s + sum(n * 8 / rate_at[b] for b in lvl_bytes)
    log("levels_beyond_L2", n_miss)
    log("bytes_per_point_all_miss", n_miss * 8 * 32 + cfg.out_dim * 4 + 12)
    log("floor_fwd_all_miss_Mpts", round(n / floor_a / 1e6, 1))
    log("floor_fwd_level_major_Mpts", round(n / floor_b / 1e6, 1))
    log("floor_bwd_level_major_Mpts", round(n / floor_bwd / 1e6, 1))
    log("floor_fwd_bwd_level_major_Mpts", round(n / (floor_b + floor_bwd) / 1e6, 1))

    # ---- encodings
    table = (torch.randn(n_params(cfg), cfg.n_features, device=DEV) * 1e-2).requires_grad_()
    x_rand = torch.rand(n, 3, device=DEV)
    side = int(round(math.sqrt(n)))
    inputs = {"random": x_rand, "frame": frame_points(side), "morton": morton_sorted(x_rand)}
    gout = torch.randn(n, cfg.out_dim, device=DEV)
    mpts = lambda ms, m=n: round(m / (ms * 1e-3) / 1e6, 1)  # noqa: E731

    def fwd_bwd(x: torch.Tensor, g: torch.Tensor, enc, **kw):
        return lambda: enc(x, table, cfg, **kw).backward(g)

    if not args.no_sweep:
        L = ht.Launch
        variants = [L(128, 4), L(128, 8), L(64, 4), L(128, 16), L(128, 4, per_level=False),
                    L(128, 8, per_level=False)]
        half_sweep = table.detach().half()
        sweep = []
        for v in variants:
            row = {"launch": str(v)}
            for name in ("random", "frame"):
                x = inputs[name]
                k = x.shape[0]
                row[f"fwd_{name}"] = mpts(bench_ms(lambda: ht.forward(x, table.detach(), cfg, v)), k)
                row[f"bwd_{name}"] = mpts(bench_ms(lambda: ht.backward(x, gout[:k], cfg, v)), k)
            row["fwd_random_half_table"] = mpts(bench_ms(lambda: ht.forward(x_rand, half_sweep, cfg, v)))
            print("sweep", row, flush=True)
            sweep.append(row)
        res["sweep_Mpts"] = sweep

    for name, x in inputs.items():
        k = x.shape[0]
        for coh in (False, True):
            key = name + ("_coherent_launch" if coh else "")
            log(f"triton_fwd_{key}_Mpts",
                mpts(bench_ms(lambda: encode_triton(x, table, cfg, coherent=coh)), k))
            log(f"triton_fwd_bwd_{key}_Mpts",
                mpts(bench_ms(fwd_bwd(x, gout[:k], encode_triton, coherent=coh),
                              grad_to_none=[table]), k))
    # Training at supersampling 2: 4 sub-samples per ray reduced on the chip, with footprint level
    # weights (Mrays/s; each ray is 4 encoded points). Against the per-point path of before.
    from backend.encoding.layout import log2_cells
    rays = n // 4
    xs = inputs["random"][: rays * 4].reshape(rays, 4, 3)
    w4 = torch.full((rays, 4), 0.25, device=DEV)
    lc = torch.from_numpy(log2_cells(cfg)).to(DEV)
    lf = lc[6] + (lc[-1] - lc[6]) * torch.rand(rays, 4, device=DEV)     # footprints between levels 6 and 15
    g_pix = gout[:rays]
    for label, wts in (("plain", ht.Weights(w=w4)), ("footprint", ht.Weights(w=w4, log2_footprint=lf))):
        log(f"triton_pixels_S4_{label}_fwd_bwd_Mrays",
            mpts(bench_ms(lambda: encode_pixels_triton(xs, table, cfg, wts).backward(g_pix),
                          grad_to_none=[table]), rays))
    log("triton_per_point_S4_fwd_bwd_Mrays (before)",
        mpts(bench_ms(lambda: (encode_triton(xs.reshape(-1, 3), table, cfg).reshape(rays, 4, -1)
                               * w4[..., None]).sum(1).backward(g_pix), grad_to_none=[table]), rays))
    half = table.detach().half()  # half-precision storage, fp32 accumulate (forward only)
    log("triton_fwd_random_half_table_Mpts",
        mpts(bench_ms(lambda: ht.forward(x_rand, half, cfg, ht.FWD_LAUNCH))))

    # PyTorch reference on fewer points (it needs ~1 GB of temporaries per level at 2^22).
    m = min(n, 1 << 20)
    xr, gr = x_rand[:m].contiguous(), gout[:m].contiguous()
    with torch.no_grad():
        log("torch_fwd_random_Mpts", mpts(bench_ms(lambda: encode_reference(xr, table, cfg), 50), m))
    log("torch_fwd_bwd_random_Mpts",
        mpts(bench_ms(fwd_bwd(xr, gr, encode_reference), 50, grad_to_none=[table]), m))

    rows = [
        (f"rand 32B read GB/s ({big / 1e6:.0f} MB table)", res["rand32_read_GBps_all_hashed"], None),
        (f"rand 32B read GB/s ({lvl_max / 1e6:.0f} MB table)", res["rand32_read_GBps_one_level"], None),
        (f"rand 32B atomic GB/s ({lvl_max / 1e6:.0f} MB)", res["rand32_atomic_GBps_one_level"], None),
        ("floor fwd all-miss Mpts/s", res["floor_fwd_all_miss_Mpts"], None),
        ("floor fwd level-major Mpts/s", res["floor_fwd_level_major_Mpts"], None),
        ("floor fwd+bwd level-major Mpts/s", res["floor_fwd_bwd_level_major_Mpts"], None),
        ("triton fwd random Mpts/s", res["triton_fwd_random_Mpts"], TARGETS["triton_fwd_random_Mpts"]),
        ("triton fwd+bwd random Mpts/s", res["triton_fwd_bwd_random_Mpts"],
         TARGETS["triton_fwd_bwd_random_Mpts"]),
        ("triton fwd random, half table Mpts/s", res["triton_fwd_random_half_table_Mpts"], None),
        ("triton fwd frame order Mpts/s", res["triton_fwd_frame_Mpts"], None),
        ("  coherent=True Mpts/s", res["triton_fwd_frame_coherent_launch_Mpts"], None),
        ("triton fwd+bwd frame order Mpts/s", res["triton_fwd_bwd_frame_Mpts"], None),
        ("  coherent=True Mpts/s", res["triton_fwd_bwd_frame_coherent_launch_Mpts"], None),
        ("triton fwd morton order Mpts/s", res["triton_fwd_morton_Mpts"], None),
        ("  coherent=True Mpts/s", res["triton_fwd_morton_coherent_launch_Mpts"], None),
        ("triton fwd+bwd morton order Mpts/s", res["triton_fwd_bwd_morton_Mpts"], None),
        ("  coherent=True Mpts/s", res["triton_fwd_bwd_morton_coherent_launch_Mpts"], None),
        ("torch fwd random Mpts/s", res["torch_fwd_random_Mpts"], None),
        ("torch fwd+bwd random Mpts/s", res["torch_fwd_bwd_random_Mpts"], None),
    ]
    res["table"] = [{"metric": k, "value": v, "target": t, "ratio": None if t is None else v / t}
                    for k, v, t in rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"\n{res['device']} (wrote {args.out}, {time.strftime('%Y-%m-%d %H:%M')})")
    print(f"{'metric':38s} {'value':>9s} {'target':>7s} {'ratio':>6s}")
    for k, v, t in rows:
        print(f"{k:38s} {v:9.1f} {'' if t is None else f'{t:7.0f}':>7s} "
              f"{'' if t is None else f'{v / t:6.2f}':>6s}")


if __name__ == "__main__":
    main()
