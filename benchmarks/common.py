"""Shared helpers for the benchmark scripts: timing on the GPU, result tables, JSON output."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch


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
