"""The events shown to a person at a terminal: a progress bar per stage (step/total, rate,
PSNR, elapsed, ETA; the less needed parts give way on a narrow terminal), log lines as text, a
short summary when a stage is done (a red ✗ when a check found errors), a stop as a
"stopped at ..., resume with ..." line and errors as one red line.

Used only when stdout is a terminal and --json is not given (backend.cli); the JSON lines of
docs/protocol.md stay the output everywhere else (the Blender add-on reads a pipe). The view
consumes the same events (backend.events.set_view), so the commands do not know about it. Stage
names, durations and where a stop stopped are worded by backend.event_text, as in the add-on.
"""
from __future__ import annotations

import sys
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, ProgressBar
from rich.table import Table

from .event_text import STAGE_NAMES, duration, stopped

BAR_MAX, BAR_MIN = 30, 15
# A bar's optional parts in the order they give way when the terminal is too narrow for all of
# them; the stage's name, the bar, the step count and the ETA always stay.
GIVE_WAY = ("rays", "loss", "item", "elapsed", "rate", "psnr")
# The status of a `done` event that carries one (check, prepare): its mark and colour.
MARKS = {"error": ("✗", "red"), "warning": ("!", "yellow")}


def _si(x: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


def row_parts(name: str, ev: dict, rate: str = "") -> dict:
    """The texts of a stage's bar, from its latest progress event (laid out by `layout`)."""
    step, total = int(ev.get("step") or 0), ev.get("total")
    item = next((f"{k} {ev[k]}" for k in ("view", "frame") if ev.get(k) is not None and "psnr" not in ev), "")
    if ev.get("items_total"):                   # a stage of many items (prepare: depth maps)
        item = f"{ev.get('items', 0)}/{ev['items_total']} {ev.get('item_unit', '')}".rstrip()
    return {"name": name, "step": step, "total": total, "rate": rate, "item": item,
            "psnr": f"PSNR {ev['psnr']:.2f} dB" if ev.get("psnr") is not None else "",
            "loss": f"loss {ev['loss']:.4f}" if ev.get("loss") is not None else "",
            "rays": f"{_si(ev['rays_per_s'])} rays/s" if ev.get("rays_per_s") else "",
            "elapsed": duration(float(ev.get("elapsed_s") or 0.0)), "eta": duration(ev.get("eta_s"))}


def _texts(r: dict, dropped: tuple) -> list[str]:
    """A bar's texts without the `dropped` parts: name, count, rate, numbers, times (the bar
    itself goes after the name)."""
    numbers = "  ".join(r[k] for k in ("psnr", "loss", "rays", "item") if r[k] and k not in dropped)
    times = f"ETA {r['eta']}" if "elapsed" in dropped else f"{r['elapsed']} elapsed, ETA {r['eta']}"
    count = f"{r['step']:>{len(str(r['total']))}}/{r['total']}" if r["total"] else str(r["step"])
    return [r["name"], count, "" if "rate" in dropped else r["rate"], numbers, times]


def layout(rows: list[dict], width: int) -> tuple[int, list[int], list[list[str]]]:
    """Fit the bars of `rows` (row_parts) into `width` columns, aligned with each other: (the bar's
    width, the width of each text column, each row's texts). The optional parts give way in
    GIVE_WAY's order until the bar has BAR_MIN columns; when even that is too wide the bar shrinks
    (0: no bar)."""
    for n in range(len(GIVE_WAY) + 1):
        texts = [_texts(r, GIVE_WAY[:n]) for r in rows]
        widths = [max((cell_len(t[i]) for t in texts), default=0) for i in range(5)]
        bar = min(BAR_MAX, width - sum(widths) - sum(1 for w in widths if w))   # a space after each column
        if bar >= BAR_MIN:
            break
    return (bar if bar >= 3 else 0), widths, texts


class _Bars(Progress):
    """rich's Progress with its rows laid out by `layout` for the terminal's width at each draw."""

    def __init__(self, console: Console):
        self.screen = console                # drawn on (Progress.console exists only once started)
        super().__init__(console=console, auto_refresh=False, transient=False,
                         redirect_stdout=False, redirect_stderr=False)

    def make_tasks_table(self, tasks) -> Table:
        rows = [t.fields["row"] for t in tasks if t.visible]
        bar, widths, texts = layout(rows, self.screen.width)
        table = Table.grid(padding=(0, 1))
        table.add_column(width=widths[0], style="bold")
        if bar:
            table.add_column(width=bar)
        shown = [i for i in range(1, 5) if widths[i]]
        for i in shown:          # count and rate right-aligned, the times dim
            table.add_column(width=widths[i], justify="right" if i < 3 else "left",
                             style={1: "green", 4: "dim"}.get(i, ""))
        for r, t in zip(rows, texts):
            cells = [ProgressBar(total=r["total"] or None, completed=r["step"], width=bar)] if bar else []
            table.add_row(t[0], *cells, *(t[i] for i in shown))
        for column in table.columns:
            column.no_wrap, column.overflow = True, "ellipsis"
        return table


class TerminalView:
    """Renders events with rich. Drawing happens only when an event arrives (no refresh thread),
    so a terminal that goes away raises in the caller, which turns the output off. Once every bar
    is finished they stay where they are, and what follows (a summary, a report) goes below them."""

    def __init__(self, file: Any = None, resume_hint: str | None = None):
        self.console = Console(file=file or sys.stdout, highlight=False, soft_wrap=False)
        self.resume_hint = resume_hint
        self.progress: Progress | None = None
        self.tasks: dict[str, Any] = {}                       # stage (or stage:phase) -> its bar
        self.first: dict[str, tuple[int, float]] = {}       # stage -> (step, elapsed) of its first event
        self.left: dict[str, tuple[int, Any]] = {}          # stage -> (step, total) of a bar left behind

    # --- the progress display -------------------------------------------------------------------
    def _progress(self, ev: dict) -> None:
        stage, step, total = ev.get("stage", ""), int(ev.get("step") or 0), ev.get("total")
        if ev.get("phase"):                      # a stage in several parts: one bar each
            stage = f"{stage}:{ev['phase']}"
        if self.left.get(stage) == (step, total):
            return                               # that bar is already drawn above, as it is
        elapsed = float(ev.get("elapsed_s") or 0.0)
        first = self.first.setdefault(stage, (step, elapsed))
        rate = ""
        if elapsed > first[1] and step > first[0]:
            r = (step - first[0]) / (elapsed - first[1])
            rate = f"{r:.1f} it/s" if r >= 1 else f"{1 / r:.1f} s/it"
        row = row_parts(STAGE_NAMES.get(stage, stage), ev, rate)
        if self.progress is None:
            self.progress = _Bars(self.console)
            self.progress.start()
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(row["name"], total=total, completed=step, row=row)
        else:
            self.progress.update(self.tasks[stage], total=total, completed=step, row=row)
        self.progress.refresh()

    def _finish(self, stage: str | None) -> None:
        """Mark a stage's bars complete (their last event may have been rate-limited away)."""
        if self.progress is None:
            return
        mine = {t for k, t in self.tasks.items() if k == stage or k.startswith(f"{stage}:")}
        for task in self.progress.tasks:
            row = task.fields["row"]
            if task.id in mine and row["total"]:
                self.progress.update(task.id, completed=row["total"],
                                     row=dict(row, step=row["total"], eta=duration(0)))
        self.progress.refresh()

    def _leave_finished_bars(self) -> None:
        """Stop drawing the bars when all are finished: they stay above what is printed next,
        instead of being drawn again below it."""
        if self.progress is not None and all(t.total and t.completed >= t.total for t in self.progress.tasks):
            self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            rows = {t.id: t.fields["row"] for t in self.progress.tasks}
            self.left.update({k: (rows[t]["step"], rows[t]["total"]) for k, t in self.tasks.items()})
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
                mark, colour = MARKS.get(ev.get("status"), ("✓", "green"))
                self._print(f"[{colour}]{mark}[/{colour}] {escape(line)}")
        elif kind == "stopped":
            self.close()
            self._print(f"[yellow]{escape(stopped_line(ev, self.resume_hint))}[/yellow]", soft_wrap=True)
        elif kind == "error":
            self.close()
            self._print(f"[bold red]error:[/bold red] [red]{escape(str(ev.get('message', '')))}[/red]", soft_wrap=True)

    def text(self, message: str) -> None:
        self._print(escape(message), soft_wrap=True)     # reports keep their own line breaks

    def _print(self, markup: str, **kw) -> None:
        self._leave_finished_bars()
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
        checked = f" (check: {ev['status'].upper()})" if ev.get("status") in MARKS else ""
        return f"Prepared {ev.get('views')} views in {ev.get('scene')}{checked}"
    if stage == "demo":
        return ""                   # the demo prints its own summary text
    return f"{stage} done"
