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


def in_terminal(args, stop_when=None, timeout=120):
    """`python -m backend ARGS` with stdout and stderr on a pseudo-terminal (120 columns); its
    output without terminal control sequences, and its exit code. `stop_when(text)`: send
    SIGINT (Ctrl-C) once it holds."""
    import fcntl
    import pty
    import struct
    import termios
    import time
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="xterm-256color", COLUMNS="120")
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
    return rc, _plain(raw)


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
