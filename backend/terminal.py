"""The events shown to a person at a terminal: a progress bar per stage (step/total, rate,
PSNR, elapsed, ETA), log lines as text, a short summary when a stage is done, a stop as a
"stopped at ..., resume with ..." line and errors as one red line.

Used only when stdout is a terminal and --json is not given (backend.cli); the JSON lines of
docs/protocol.md stay the output everywhere else (the Blender add-on reads a pipe). The view
consumes the same events (backend.events.set_view), so the commands do not know about it. Stage
names, durations and where a stop stopped are worded by backend.event_text, as in the add-on.
"""
from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from .event_text import STAGE_NAMES, duration, stopped


def _si(x: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


def _info(ev: dict) -> str:
    """The stage's numbers of one progress event: PSNR, loss, rays/s, the view or frame."""
    parts = []
    if ev.get("psnr") is not None:
        parts.append(f"PSNR {ev['psnr']:.2f} dB")
    if ev.get("loss") is not None:
        parts.append(f"loss {ev['loss']:.4f}")
    if ev.get("rays_per_s"):
        parts.append(f"{_si(ev['rays_per_s'])} rays/s")
    for key in ("view", "frame"):
        if ev.get(key) is not None and "psnr" not in ev:
            parts.append(f"{key} {ev[key]}")
    return "  ".join(parts)


class TerminalView:
    """Renders events with rich. Drawing happens only when an event arrives (no refresh thread),
    so a terminal that goes away raises in the caller, which turns the output off."""

    def __init__(self, file: Any = None, resume_hint: str | None = None):
        self.console = Console(file=file or sys.stdout, highlight=False, soft_wrap=False)
        self.resume_hint = resume_hint
        self.progress: Progress | None = None
        self.tasks: dict[str, Any] = {}
        self.totals: dict[str, float | None] = {}
        self.first: dict[str, tuple[int, float]] = {}       # stage -> (step, elapsed) of its first event

    # --- the progress display -------------------------------------------------------------------
    def _bars(self) -> Progress:
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]{task.description:<12}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>9}"), TextColumn("{task.fields[info]}"),
                TextColumn("[dim]{task.fields[elapsed]} elapsed, ETA {task.fields[eta]}"),
                console=self.console, auto_refresh=False, transient=False,
                redirect_stdout=False, redirect_stderr=False)
            self.progress.start()
        return self.progress

    def _progress(self, ev: dict) -> None:
        stage, step, total = ev.get("stage", ""), int(ev.get("step") or 0), ev.get("total")
        if ev.get("phase"):                      # a stage in several parts: one bar each
            stage = f"{stage}:{ev['phase']}"
        elapsed = float(ev.get("elapsed_s") or 0.0)
        first = self.first.setdefault(stage, (step, elapsed))
        rate = ""
        if elapsed > first[1] and step > first[0]:
            r = (step - first[0]) / (elapsed - first[1])
            rate = f"{r:.1f} it/s" if r >= 1 else f"{1 / r:.1f} s/it"
        fields = dict(rate=rate, info=_info(ev), elapsed=duration(elapsed), eta=duration(ev.get("eta_s")))
        bars = self._bars()
        self.totals[stage] = total
        if stage not in self.tasks:
            self.tasks[stage] = bars.add_task(STAGE_NAMES.get(stage, stage), total=total, completed=step, **fields)
        else:
            bars.update(self.tasks[stage], total=total, completed=step, **fields)
        bars.refresh()

    def _finish(self, stage: str | None) -> None:
        """Mark a stage's bars complete (their last event may have been rate-limited away)."""
        if self.progress is None:
            return
        for key in [k for k in self.tasks if k == stage or k.startswith(f"{stage}:")]:
            task, total = self.tasks.pop(key), self.totals.pop(key, None)
            if total:
                self.progress.update(task, completed=total, eta="0s")
        self.progress.refresh()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.tasks.clear()

    # --- events ----------------------------------------------------------------------------------
    def event(self, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "progress":
            self._progress(ev)
        elif kind == "log":
            self._print(escape(str(ev.get("message", ""))))
        elif kind == "done":
            self._finish(ev.get("stage"))
            line = summary(ev)
            if line:
                self._print(f"[green]✓[/green] {escape(line)}")
        elif kind == "stopped":
            self.close()
            self._print(f"[yellow]{escape(stopped_line(ev, self.resume_hint))}[/yellow]", soft_wrap=True)
        elif kind == "error":
            self.close()
            self._print(f"[bold red]error:[/bold red] [red]{escape(str(ev.get('message', '')))}[/red]", soft_wrap=True)

    def text(self, message: str) -> None:
        self._print(escape(message), soft_wrap=True)     # reports keep their own line breaks

    def _print(self, markup: str, **kw) -> None:
        (self.progress.console if self.progress is not None else self.console).print(markup, **kw)


def stopped_line(ev: dict, resume_hint: str | None) -> str:
    where = stopped(ev)
    if ev.get("checkpoint"):
        where += f"; checkpoint saved to {ev['checkpoint']}"
    return where[0].upper() + where[1:] + "." + (f"\nResume with: {resume_hint}" if resume_hint else "")


def summary(ev: dict) -> str:
    """One line for a `done` event (the stage's outputs, not the whole event)."""
    stage = ev.get("stage")
    if stage == "cache":
        secs = sum((ev.get("seconds") or {}).values())
        return (f"Ray cache: {ev.get('rays', 0):,} rays from {ev.get('train_views')} training views "
                f"({ev.get('test_views')} held out) in {duration(secs)}: {ev.get('cache')}")
    if stage == "train":
        psnr = f", training PSNR {ev['psnr']:.2f} dB" if ev.get("psnr") is not None else ""
        steps = f"steps {ev['start_step']}-{ev.get('step')}" if ev.get("start_step") else f"{ev.get('step')} steps"
        return f"Trained {steps}{psnr}; checkpoint: {ev.get('checkpoint')}"
    if stage == "render":
        return f"Rendered {ev.get('frames')} frames in {duration(ev.get('seconds'))} to {ev.get('out_dir')}"
    if stage == "eval":
        metrics = ", ".join(f"{k.upper()} {ev[k]:.3f}" if k != "psnr" else f"PSNR {ev[k]:.2f} dB"
                            for k in ("psnr", "ssim", "lpips") if ev.get(k) is not None)
        return f"Held-out views: {metrics or 'no pixel fully covered'}; details in {ev.get('eval_json')}"
    if stage == "check":
        return f"Check: {str(ev.get('status', '')).upper()} ({ev.get('n_views')} views)"
    if stage == "prepare":
        return f"Prepared {ev.get('views')} views in {ev.get('scene')}"
    if stage == "demo":
        return ""                   # the demo prints its own summary text
    return f"{stage} done"
