"""Per-part times of training steps, for finding what does not scale over processes.

`XSCALE_PROFILE_STEPS=N` (environment; torchrun passes it to every rank) times the last N steps
of a `train` run, part by part (the names in PARTS, in step order). On CUDA each part boundary
records an event on the compute stream: a part's GPU time is the stream's time between its
boundaries (kernels, copies and collectives it waits for); nothing synchronises during the run,
the events are read once at the end. Every part also gets its host time (when the Python
thread passed the boundaries): host time above GPU time means the GPU waited for the host.

Rank 0 writes RUN/profile.json with every rank's numbers and their mean and maximum over ranks,
and the `done` event of `train` carries the per-part means (`profile`, milliseconds per step).
"""
from __future__ import annotations

import os
import time

import torch

PROFILE_ENV = "XSCALE_PROFILE_STEPS"
WARMUP = 5       # steps at the start of a run never profiled (compilation, first reads)

# Parts of a step, in order (a mode marks those it has: level-parallel runs exchange points and
# features; one process and data parallel do not).
PARTS = ("vote", "load", "points", "exchange_points", "grid_fwd", "exchange_features", "decoder_fwd",
         "decoder_bwd", "exchange_grads", "grid_bwd", "reduce", "regularise", "adam", "events")


def requested() -> int:
    try:
        return max(0, int(os.environ.get(PROFILE_ENV, "0") or 0))
    except ValueError:
        return 0


class NoProfile:
    """The profile of steps that are not timed."""
    on = False

    def mark(self, part: str) -> None:
        pass


NO_PROFILE = NoProfile()


class StepProfile:
    """Marks part boundaries of the steps in [first, last); summary() reads them (synchronises)."""

    def __init__(self, device: torch.device, steps: int, start: int, end: int):
        self.device = device
        self.cuda = device.type == "cuda"
        span = end - start
        self.first = max(start + min(WARMUP, span // 2), end - steps) if steps > 0 else end
        self.end = end
        self.on = False
        self.steps: list[list[tuple[str, object, float]]] = []    # per step: (part, event, host time)

    @property
    def enabled(self) -> bool:
        return self.first < self.end

    def begin(self, step: int) -> None:
        """Start of step `step` (the number of steps done before it)."""
        self.on = self.first <= step < self.end
        if self.on:
            self.steps.append([])
            self.mark("")

    def mark(self, part: str) -> None:
        """End of `part` (the boundary after it); "" is the start of the step."""
        if not self.on:
            return
        ev = None
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(self.device))
        self.steps[-1].append((part, ev, time.perf_counter()))

    def end_step(self) -> None:
        self.on = False

    def summary(self) -> dict:
        """Mean milliseconds per step of every part: {"steps", "step_ms", "step_host_ms",
        "parts": {part: {"gpu_ms", "host_ms"}}} (gpu_ms equals host_ms on the CPU)."""
        if self.cuda and self.steps:
            torch.cuda.synchronize(self.device)
        parts: dict[str, list[float]] = {}
        host: dict[str, list[float]] = {}
        totals, host_totals = [], []
        for marks in self.steps:
            if len(marks) < 2:
                continue
            for (_, e0, h0), (name, e1, h1) in zip(marks, marks[1:]):
                g = e0.elapsed_time(e1) if self.cuda else (h1 - h0) * 1e3
                parts.setdefault(name, []).append(g)
                host.setdefault(name, []).append((h1 - h0) * 1e3)
            totals.append(marks[0][1].elapsed_time(marks[-1][1]) if self.cuda else (marks[-1][2] - marks[0][2]) * 1e3)
            host_totals.append((marks[-1][2] - marks[0][2]) * 1e3)
        n = max(1, len(totals))
        order = [p for p in PARTS if p in parts] + [p for p in parts if p not in PARTS]
        return {"steps": len(totals), "step_ms": sum(totals) / n, "step_host_ms": sum(host_totals) / n,
                "parts": {p: {"gpu_ms": sum(parts[p]) / n, "host_ms": sum(host[p]) / n} for p in order}}


def combine(per_rank: list[dict]) -> dict:
    """Every rank's summary, plus per part the mean and the maximum over ranks (gpu_ms)."""
    names: list[str] = []
    for r in per_rank:
        names += [p for p in r["parts"] if p not in names]
    mean, worst = {}, {}
    for p in names:
        v = [r["parts"].get(p, {}).get("gpu_ms", 0.0) for r in per_rank]
        mean[p], worst[p] = sum(v) / len(v), max(v)
    steps = [r["step_ms"] for r in per_rank]
    return {"world": len(per_rank), "step_ms_mean": sum(steps) / len(steps), "step_ms_max": max(steps),
            "mean_ms": mean, "max_ms": worst, "ranks": per_rank}


def table(profiles: dict[str, dict]) -> str:
    """Side-by-side text table of combined profiles (column name -> combine() result): per part
    the mean over ranks in ms per step, with the slowest rank in brackets where it differs."""
    cols = list(profiles)
    names: list[str] = []
    for c in cols:
        names += [p for p in profiles[c]["mean_ms"] if p not in names]
    names = [p for p in PARTS if p in names] + [p for p in names if p not in PARTS]
    head = f"{'part (ms per step)':22s}" + "".join(f"{c:>20s}" for c in cols)
    lines = [head]

    def cell(prof, p):
        m, w = prof["mean_ms"].get(p), prof["max_ms"].get(p)
        if m is None:
            return f"{'-':>20s}"
        s = f"{m:.2f}" + (f" [{w:.2f}]" if w - m > 0.05 * max(m, 0.1) else "")
        return f"{s:>20s}"
    for p in names:
        lines.append(f"{p:22s}" + "".join(cell(profiles[c], p) for c in cols))
    lines.append(f"{'step':22s}" + "".join(
        f"{profiles[c]['step_ms_mean']:.2f} [{profiles[c]['step_ms_max']:.2f}]".rjust(20) for c in cols))
    return "\n".join(lines)


def loader_lines(profiles: dict[str, dict]) -> str:
    """Per profiled run: the ray reading of its slowest-reading rank (shard reads from disk or the
    page cache into pinned memory, the copies to the GPU on the loader's stream)."""
    lines = []
    for name, prof in profiles.items():
        stats = [r.get("loader") for r in prof.get("ranks", []) if r.get("loader")]
        if not stats:
            continue
        st = max(stats, key=lambda x: x["read_s"] / max(1, x["shards"]))
        n = max(1, st["shards"])
        mb = st["read_bytes"] / n / 1e6
        ms = st["read_s"] / n * 1e3
        h2d = st.get("h2d_ms_per_shard")
        lines.append(f"{name}: {st['shards']} shards of {mb:.0f} MB, read in {ms:.0f} ms each "
                     f"({mb / max(ms, 1e-9):.1f} GB/s)" + (f", copied to the GPU in {h2d:.1f} ms" if h2d else "")
                     + f"; training waited {st['wait_s']:.2f} s in all")
    return "\n".join(lines)
