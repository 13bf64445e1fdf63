"""The demo says at its start how long it will take, and keeps the README's promise with room."""
import os
import signal
import subprocess
import sys

from conftest import ROOT, events_of


def test_cpu_demo_fits_the_readme_promise_with_margin():
    from backend.demo import SIZES, expected_seconds
    cpu = SIZES["cpu"]
    assert expected_seconds(cpu, cpu["iters"]) <= 10 * 60 / 3        # README: under 10 minutes on 2 cores
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "about 3 minutes on an idle 2-core CPU and under 10 minutes" in readme


def test_demo_prints_the_expected_duration_first_and_stops_cleanly(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "backend", "demo", "--out", str(tmp_path / "d"), "--device", "cpu"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    first = p.stdout.readline()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    evs = events_of(first + out)
    assert evs[0]["event"] == "log" and "expect about 3 minutes" in evs[0]["message"], evs[0]
    assert "400 training steps" in evs[0]["message"]
    assert p.returncode == 0, err
    assert evs[-1]["event"] == "stopped" and not any(e["event"] == "error" for e in evs)


def test_openmp_threads_sleep_when_idle_for_every_command():
    """OMP_WAIT_POLICY=PASSIVE is in the environment when torch (and its OpenMP runtime) loads,
    so a CPU run does not burn the cores that other programs need; a user's setting wins."""
    probe = ("import os, sys\n"
             "class Spy:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'torch' and 'seen' not in os.environ:\n"
             "            os.environ['seen'] = os.environ.get('OMP_WAIT_POLICY', 'unset')\n"
             "            print('torch loads with', os.environ['seen'], file=sys.stderr)\n"
             "sys.meta_path.insert(0, Spy())\n"
             "from backend.cli import main\n"
             "main(sys.argv[1:])\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OMP_WAIT_POLICY", None)
    res = subprocess.run([sys.executable, "-c", probe, "doctor", "--json"], env=env, capture_output=True, text=True)
    assert "torch loads with PASSIVE" in res.stderr, res.stderr
    res = subprocess.run([sys.executable, "-c", probe, "doctor", "--json"], env=dict(env, OMP_WAIT_POLICY="ACTIVE"),
                         capture_output=True, text=True)
    assert "torch loads with ACTIVE" in res.stderr, res.stderr
