"""The study's console (issue 18): a line per stage start and end, the rest in the log file, a live indicator on a
terminal, warnings a user can act on still shown. Run in a child process: it redirects its own file descriptors."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A stand-in for a study run: every kind of output a real one makes, through the same console.
CHILD = textwrap.dedent("""
    import logging, os, sys, time
    from cxr_ray.study.console import study_console

    root, verbose = sys.argv[1], sys.argv[2] == "1"
    with study_console(root, verbose) as console:
        console.say("study quick: header")
        with console.stage("gan"):
            console.detail("train-gan: epoch 1/2")
            print("(RayTrainWorker pid=1) Checkpoint successfully created")  # a forwarded worker line
            os.write(2, b"[2026 E core_worker.cc:2465] Actor has constructor arguments in the object store\\n")  # C++
            logging.getLogger("ray.data").warning("Warning: The Ray cluster currently does not have any available CPUs.")
            logging.getLogger("ray").warning("the object store is 95% full: spilling")
            console.detail("generate: warning: only 80% of the archive's sampled files share the format")
            console.detail("ingest summary\\n  train 220 images")  # several lines: the last one on the spinner
            time.sleep(float(os.environ.get("STAGE_S", "0")))
        console.skipped("ingest")
        console.summary(12.0, "/r/report.html")
    print("after the console")
""")


def run_child(root: Path, verbose: bool, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", CHILD, str(root), "1" if verbose else "0"], env=env, timeout=60,
                          **kwargs)


def test_quiet_console_shows_stage_lines_and_actionable_warnings_and_logs_the_rest(tmp_path):
    proc = run_child(tmp_path, verbose=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    shown = proc.stdout
    assert "study quick: header" in shown and "[gan] done in 0 s" in shown
    assert "warning (ray): the object store is 95% full: spilling" in shown
    assert "generate: warning: only 80% of the archive's sampled files share the format" in shown
    for hidden in ("epoch 1/2", "RayTrainWorker", "core_worker", "available CPUs", "ingest summary"):
        assert hidden not in shown + proc.stderr, hidden
    assert "after the console" in shown  # the descriptors are back afterwards
    # The closing table: each stage's outcome and time, the report, the log.
    assert re.search(r"^gan +ran +\d+$", shown, re.M) and re.search(r"^ingest +skipped +0$", shown, re.M), shown
    assert "report: /r/report.html" in shown
    (log,) = (tmp_path / "logs").glob("study-*.log")
    assert f"log: {log}" in shown
    text = log.read_text()
    for line in ("epoch 1/2", "RayTrainWorker", "core_worker.cc", "available CPUs", "[gan] done in", "report:"):
        assert line in text, line


def test_verbose_prints_everything_and_writes_no_log(tmp_path):
    proc = run_child(tmp_path, verbose=True, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    both = proc.stdout + proc.stderr
    for line in ("epoch 1/2", "RayTrainWorker", "core_worker.cc", "[gan] done in", "report: /r/report.html"):
        assert line in both, line
    assert not (tmp_path / "logs").exists()


def test_a_terminal_gets_a_live_indicator_a_job_log_does_not(tmp_path):
    """On a terminal the running stage shows a spinner with its latest detail line and elapsed time."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), "0"], stdout=follower, stderr=follower,
                            env={**os.environ, "PYTHONPATH": str(REPO), "STAGE_S": "1.5", "TERM": "xterm"})
    os.close(follower)
    chunks, deadline = [], time.time() + 60
    while time.time() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    screen = b"".join(chunks).decode(errors="replace")
    # The stage's latest detail (of a several-line one, its last line) and the elapsed time.
    assert "[gan]: train 220 images" in screen and "0:00:0" in screen
    assert "[gan] done in" in screen
