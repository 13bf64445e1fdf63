"""In a terminal the commands show progress bars and readable lines; through a pipe (the
Blender add-on) and with --json they print the JSON-line events of docs/protocol.md."""
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys

from conftest import ROOT, cli

TINY_ARGS = ["--device", "cpu", "--batch-rays", "256", "--log2-table", "12"]


def in_terminal(args, stop_when=None, timeout=120, columns=120):
    """`python -m backend ARGS` with stdout and stderr on a pseudo-terminal (`columns` wide); its
    output without terminal control sequences, and its exit code. `stop_when(text)`: send
    SIGINT (Ctrl-C) once it holds."""
    rc, raw = _in_pty(args, stop_when, timeout, columns)
    return rc, _plain(raw)


def on_screen(args, columns=80, rows=50, **kw):
    """`python -m backend ARGS` on a pseudo-terminal `columns` wide, its output played on a
    terminal emulator: the exit code and the screen (pyte), whose lines that scrolled away are
    in `lines(screen)` too."""
    import pyte
    rc, raw = _in_pty(args, kw.pop("stop_when", None), kw.pop("timeout", 120), columns, rows)
    screen = pyte.HistoryScreen(columns, rows, history=10000)
    pyte.ByteStream(screen).feed(raw)
    return rc, screen


def lines(screen):
    """Every line the terminal showed, the scrolled-away ones first, without trailing blanks."""
    top = ["".join(line[x].data for x in range(screen.columns)) for line in screen.history.top]
    out = [ln.rstrip() for ln in top + screen.display]
    while out and not out[-1]:
        out.pop()
    return out


def _in_pty(args, stop_when, timeout, columns, rows=40):
    import fcntl
    import pty
    import struct
    import termios
    import time
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="xterm-256color", COLUMNS=str(columns), LINES=str(rows))
    env.pop("NO_COLOR", None)
    p = subprocess.Popen([sys.executable, "-m", "backend", *args], stdin=slave, stdout=slave, stderr=slave,
                         env=env, close_fds=True)
    os.close(slave)
    raw, sent, t_end = b"", False, time.monotonic() + timeout
    while time.monotonic() < t_end:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:            # the child closed the terminal
                break
            if not chunk:
                break
            raw += chunk
        elif p.poll() is not None:
            break
        if stop_when and not sent and stop_when(_plain(raw)):
            p.send_signal(signal.SIGINT)
            sent = True
    os.close(master)
    if p.poll() is None and (time.monotonic() >= t_end or (stop_when and not sent)):
        p.kill()                        # the test failed to get what it waited for
    rc = p.wait(timeout=30)
    return rc, raw


def _plain(raw: bytes) -> str:
    """Terminal output as text: control sequences dropped, carriage returns as line ends."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode(errors="replace")).replace("\r\n", "\n").replace("\r", "\n")


def _json_lines(text):
    return [ln for ln in text.splitlines() if ln.strip().startswith("{")]


def test_terminal_shows_progress_and_a_summary_not_json(run, tmp_path):
    r = shutil.copytree(run, tmp_path / "r")
    rc, text = in_terminal(["train", "--run", str(r), "--iters", "3", *TINY_ARGS])
    assert rc == 0, text
    assert not _json_lines(text), text
    assert re.search(r"training .*3/3 .*PSNR \d+\.\d+ dB.*elapsed, ETA", text), text
    assert "Trained 3 steps" in text and "checkpoint:" in text
    # the same command through a pipe, and --json in the terminal: JSON lines only
    res = cli("train", "--run", str(r), "--iters", "4", "--resume", *TINY_ARGS)
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert res.returncode == 0 and lines and all(json.loads(ln)["event"] for ln in lines)
    rc, text = in_terminal(["train", "--run", str(r), "--iters", "5", "--resume", "--json", *TINY_ARGS])
    events = [json.loads(ln) for ln in _json_lines(text)]
    assert rc == 0 and events[-1]["event"] == "done" and events[-1]["step"] == 5


def test_ctrl_c_in_a_terminal_says_where_it_stopped_and_how_to_resume(run, tmp_path):
    r = shutil.copytree(run, tmp_path / "r")
    rc, text = in_terminal(["train", "--run", str(r), "--iters", "100000", *TINY_ARGS],
                           stop_when=lambda t: any(int(n) >= 2 for n in re.findall(r" (\d+)/100000 ", t)))
    assert rc == 0, text
    m = re.search(r"Stopped at step (\d+) of 100000; checkpoint saved to (\S+)\.\nResume with: (.*)", text)
    assert m, text
    assert m.group(3).split() == ["python", "-m", "backend", "train", "--run", str(r), "--iters", "100000",
                                  *TINY_ARGS, "--resume"]
    assert "Traceback" not in text and "interrupted" not in text


def test_errors_in_a_terminal_are_one_line(tmp_path):
    rc, text = in_terminal(["train", "--run", str(tmp_path / "missing"), "--device", "cpu"])
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "does not exist" in lines[0]


def test_at_80_columns_the_training_bar_keeps_bar_count_and_eta_and_the_summary_comes_last(run, tmp_path):
    r = shutil.copytree(run, tmp_path / "r")
    rc, screen = on_screen(["train", "--run", str(r), "--iters", "3", *TINY_ARGS], columns=80)
    shown = lines(screen)
    assert rc == 0, shown
    bars = [i for i, ln in enumerate(shown) if "━" in ln]
    assert len(bars) == 1, shown                       # drawn once, not again below the summary
    bar = shown[bars[0]]
    assert re.match(r"training +━{15,} +3/3 .*PSNR \d+\.\d+ dB.*ETA 0s$", bar) and "…" not in bar, shown
    summary = next(i for i, ln in enumerate(shown) if ln.startswith("✓ Trained 3 steps"))
    assert summary > bars[0] and "checkpoint" in " ".join(shown[summary:]), shown


def test_at_80_columns_a_long_run_shows_its_step_count_and_eta_and_a_stop_comes_last(run, tmp_path):
    r = shutil.copytree(run, tmp_path / "r")
    rc, screen = on_screen(["train", "--run", str(r), "--iters", "100000", *TINY_ARGS], columns=80,
                           stop_when=lambda t: any(int(n) >= 2 for n in re.findall(r" (\d+)/100000 ", t)))
    shown = lines(screen)
    assert rc == 0, shown
    bars = [i for i, ln in enumerate(shown) if "━" in ln]
    assert len(bars) == 1, shown
    assert re.match(r"training +━{15,} +\d+/100000 .*PSNR .*ETA (\d+h\d\dm|\d+m\d\ds)$", shown[bars[0]]), shown
    after = shown[bars[0] + 1:]
    assert after[0].startswith("Stopped at step ") and any(ln.startswith("Resume with:") for ln in after), shown
    assert shown[-1].endswith("--resume"), shown


def test_check_of_a_bad_scene_ends_in_a_red_cross_not_a_green_tick(scene, tmp_path):
    bad = shutil.copytree(scene, tmp_path / "bad")
    data = (bad / "images" / "00000002.png").read_bytes()
    (bad / "images" / "00000002.png").write_bytes(data[:len(data) // 2])        # a truncated photo
    rc, screen = on_screen(["check", str(bad)], columns=80)
    shown = lines(screen)
    assert rc == 2 and not any("✓" in ln for ln in shown), shown
    row = next(y for y, ln in enumerate(screen.display) if "Check: ERROR" in ln)
    assert screen.display[row].startswith("✗ Check: ERROR (6 views)") and screen.buffer[row][0].fg == "red"
    cross, err = shown.index(screen.display[row].rstrip()), len(shown) - 1
    while not shown[err].startswith("error: "):
        err -= 1
    assert cross < err and "".join(shown[err:]).endswith("re-export it as PNG or JPEG."), shown   # the error last
    assert all(ln.startswith(("photos ", "check ")) for ln in shown[:2]), shown   # bars above the report
    rc, screen = on_screen(["check", str(scene)], columns=80)
    row = next(y for y, ln in enumerate(screen.display) if "Check: OK" in ln)
    assert rc == 0 and screen.display[row].startswith("✓ Check: OK") and screen.buffer[row][0].fg == "green"


def _row(**ev):
    from backend.terminal import row_parts
    ev = {"step": 1200, "total": 30000, "psnr": 27.41, "loss": 0.0312, "rays_per_s": 1.2e6,
          "elapsed_s": 62, "eta_s": 410, **ev}
    return row_parts("training", ev, "3.2 it/s")


def _line(width, *rows):
    """The bars as plain text lines at `width` columns."""
    from backend.terminal import layout
    bar, widths, texts = layout(list(rows), width)
    out = []
    for t in texts:
        cells = [t[0].ljust(widths[0])] + (["━" * bar] if bar else [])
        cells += [t[i].rjust(widths[i]) if i < 3 else t[i].ljust(widths[i]) for i in range(1, 5) if widths[i]]
        out.append(" ".join(cells))
    return out


def test_bars_fit_the_width_giving_up_the_least_needed_parts_first():
    full = _line(200, _row())[0]
    assert "1200/30000" in full and "3.2 it/s" in full and "PSNR 27.41 dB" in full and "loss 0.0312" in full
    assert "1.2M rays/s" in full and "1m02s elapsed, ETA 6m50s" in full and "━" * 30 in full
    at80 = _line(80, _row())[0]
    assert len(at80) <= 80 and re.search("━{15,}", at80)
    assert "1200/30000" in at80 and "ETA 6m50s" in at80 and "PSNR 27.41 dB" in at80 and "3.2 it/s" in at80
    assert "rays/s" not in at80 and "loss" not in at80          # the first to give way
    for width in (100, 80, 60, 50, 40, 36):
        line = _line(width, _row())[0]
        assert len(line) <= width and "1200/30000" in line and "ETA 6m50s" in line, (width, line)
    assert "━" in _line(40, _row())[0]
    # rows of one display stay aligned: the counts end in the same column
    a, b = _line(80, _row(), _row(step=7, total=6, psnr=None, loss=None, rays_per_s=None, view="00000005"))
    assert a.index("/30000") + len("/30000") == b.index("7/6") + len("7/6")


def test_a_finished_stage_leaves_its_bars_above_its_report_and_summary():
    """Once every bar is finished, what is printed next goes below them and they are not drawn
    again (rich's live display redraws itself below whatever is printed while it runs)."""
    import io
    from backend.terminal import TerminalView
    out = io.StringIO()
    view = TerminalView(file=out)
    view.event({"event": "progress", "stage": "check", "phase": "photos", "step": 6, "total": 6})
    view.event({"event": "progress", "stage": "check", "step": 6, "total": 6, "view": "00000005"})
    view.text("Scene s: ERROR")
    view.event({"event": "progress", "stage": "check", "step": 6, "total": 6, "view": "00000005"})  # again
    view.event({"event": "done", "stage": "check", "status": "error", "n_views": 6})
    view.event({"event": "error", "message": "s: broken"})
    view.close()
    shown = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    assert [ln.split()[0] for ln in shown] == ["photos", "check", "Scene", "✗", "error:"], shown
    assert shown[3] == "✗ Check: ERROR (6 views)"


def test_the_terminal_and_blender_word_durations_and_stops_alike():
    """backend.event_text words both: the terminal's compact durations, the add-on's spaced ones,
    and where a stop stopped."""
    from backend import event_text, terminal
    assert [event_text.duration(s) for s in (None, -1, 7, 123, 3900)] == ["--", "--", "7s", "2m03s", "1h05m"]
    assert event_text.duration(410, sep=" ") == "6m 50s"
    cache = {"event": "stopped", "stage": "cache", "phase": "views", "step": 12, "total": 40}
    assert terminal.stopped_line(cache, None) == "Stopped the ray cache after 12 of 40 views (kept)."
    train = {"event": "stopped", "stage": "train", "step": 7, "total": 9, "checkpoint": "c.pt"}
    assert terminal.stopped_line(train, "X") == "Stopped at step 7 of 9; checkpoint saved to c.pt.\nResume with: X"
    assert event_text.stopped({"stage": "render", "step": 3, "total": 5}) == "stopped rendering after 3 of 5 frames"
