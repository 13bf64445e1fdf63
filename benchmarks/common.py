"""Shared helpers for the benchmark scripts: timing on the GPU, result tables, JSON output, mesh subdivision."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from backend.meshio import Mesh


def device_name() -> str:
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), torch {torch.__version__}"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Timer:
    def __enter__(self):
        sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync()
        self.s = time.perf_counter() - self.t0


def report(rows: list[dict], row: dict) -> None:
    """Add a table row and print it at once (long benchmarks show results as they come)."""
    rows.append(row)
    print(f"  {row['metric']}: {row['value']:.4g} {row.get('unit', '')}", flush=True)


def print_table(rows: list[dict], title: str) -> None:
    """rows: metric, value, target (or None), unit, higher_is_better. Ratio = value / target
    (target / value when lower is better): >= 1 meets the target."""
    print(f"\n{title} -- {device_name()}")
    print(f"{'metric':52s} {'value':>14s} {'target':>12s} {'ratio':>7s}")
    for r in rows:
        t = r.get("target")
        if t:
            ratio = r["value"] / t if r.get("higher_is_better", True) else t / max(r["value"], 1e-12)
            r["ratio"] = ratio
            ts, rs = f"{t:.4g}", f"{ratio:.2f}"
        else:
            ts = rs = "-"
        print(f"{r['metric'] + ' [' + r.get('unit', '') + ']':52s} {r['value']:14.4g} {ts:>12s} {rs:>7s}")


def write_json(path: str | Path, rows: list[dict], **extra) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"device": device_name(), "rows": rows, **extra}, indent=1))


def subdivide(mesh: Mesh, times: int) -> Mesh:
    """Midpoint subdivision with shared vertices (each triangle -> 4, same surface)."""
    v, f = mesh.vertices.astype(np.float64), mesh.faces.astype(np.int64)
    for _ in range(times):
        e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1)
        key = e[:, 0] * len(v) + e[:, 1]
        uniq, inv = np.unique(key, return_inverse=True)
        mid = len(v) + inv.reshape(3, -1).T                       # (F, 3): edges 01, 12, 20
        v = np.concatenate([v, (v[uniq // len(v)] + v[uniq % len(v)]) / 2])
        a, b, c = f.T
        m01, m12, m20 = mid.T
        f = np.concatenate([np.stack([a, m01, m20], 1), np.stack([m01, b, m12], 1),
                            np.stack([m20, m12, c], 1), np.stack([m01, m12, m20], 1)])
    return Mesh(v.astype(np.float32), f.astype(np.int32))
