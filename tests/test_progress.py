"""Progress on long work (progress.py): a line on a terminal, nothing in a file or cron's log.

The scripts run as real processes, their stderr on a real pseudo-terminal (os.openpty) or in a file.
"""
import fcntl
import io
import logging
import os
import re
import struct
import subprocess
import sys
import termios

import pytest

import deployment
import progress
import scoring
from conftest import REPO, write_delivery

ERASE = b"\r\x1b[K"


def run_script_on(stderr, script, *args, cwd):
    """Run one of the repo's scripts with stderr on a new pseudo-terminal (120 columns) or in a file;
    return (exit code, stdout, the bytes written to stderr)."""
    return run_file_on(stderr, REPO / script, *args, cwd=cwd)


def run_file_on(stderr, path, *args, cwd=REPO):
    """run_script_on for any Python file, run from `cwd` (default: the repo)."""
    cmd = [sys.executable, str(path), *map(str, args)]
    if stderr == "file":
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=300)
        return done.returncode, done.stdout.decode(), done.stderr
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    with subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave) as proc:
        os.close(slave)
        written = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child has closed the terminal
                break
            if not chunk:
                break
            written += chunk
        out = proc.stdout.read().decode()
        proc.wait(timeout=300)
    os.close(master)
    return proc.returncode, out, written


LINES = {
    "ingestion.py": [b"ingestion: reading a.csv (file 1 of 1, 0.0 MB read before it)",
                     b"ingestion: checking a.csv, {size} (file 1 of 1, 0.0 MB read before it)",
                     b"ingestion: merging 1 file(s) into finaldata.csv"],
    "training.py": [b"training: reading finaldata.csv", b"training: fitting the model on 20,000 rows",
                    b"training: cross-validation, 5 folds on 20,000 rows",
                    b"training: cross-validation, fold 1 of 5 done on 20,000 rows",
                    b"training: cross-validation, fold 5 of 5 done on 20,000 rows",
                    b"training: scoring the test data and its slices"],
    "deployment.py": [b"reproducing: reading delivery 1 of 1 from the archive (a.csv)",
                      b"training: fitting the model on 20,000 rows"],  # the same bytes: nothing more to score
}


@pytest.mark.parametrize("stderr", ["terminal", "file"])
def test_long_work_shows_progress_on_a_terminal_only(world, stderr):
    path = write_delivery(world, "a.csv", rows=20000, seed=1)
    size = progress.megabytes(path.stat().st_size).encode()
    said = {}
    for script, args in (("ingestion.py", ()), ("training.py", ())):
        code, out, said[script] = run_script_on(stderr, script, "--config", world.path, *args, cwd=world.base)
        assert code == 0, said[script]
    scoring.run(world)
    deployment.deploy_from_config(world)
    code, out, said["deployment.py"] = run_script_on(stderr, "deployment.py", "--config", world.path,
                                                     "--reproduce", "1", cwd=world.base)
    assert (code, out.split(":")[0]) == (0, "version 1 reproduced"), said["deployment.py"]
    for script, lines in LINES.items():
        for line in lines:
            line = line.replace(b"{size}", size)
            if stderr == "terminal":
                assert ERASE + line in said[script], (script, line, said[script])
            else:
                assert line not in said[script], (script, line)
        if stderr == "file":
            assert b"\r" not in said[script] and b"\x1b" not in said[script], said[script]
    if stderr == "terminal":
        # each log line starts on a cleared line, never after a progress text; the last write erases the line
        assert re.search(rb"\r\x1b\[K\d{4}-\d\d-\d\d [\d:,]+ INFO __main__: ingested 1 file", said["ingestion.py"])
        for script, lines in LINES.items():
            text = said[script]
            assert text.rfind(ERASE) > text.rfind(lines[-1]), script  # the last line erased


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_ticks_are_throttled_and_stages_are_not(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(progress, "_line", progress._Line())
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    progress.tick("round 1 of 9")
    clock[0] += 0.1
    progress.tick("round 2 of 9")  # within a quarter second: not written
    progress.show("a new stage")  # a stage: written at once
    clock[0] += 0.3
    progress.tick("round 3 of 9")
    progress.clear()
    progress.clear()  # nothing shown: nothing to erase
    assert term.getvalue() == "\r\x1b[Kround 1 of 9\r\x1b[Ka new stage\r\x1b[Kround 3 of 9\r\x1b[K"


def test_nothing_is_written_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(progress, "_line", progress._Line())
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    progress.show("a stage")
    progress.tick("a count")
    progress.clear()
    assert plain.getvalue() == ""


def test_a_log_record_erases_the_line_first(monkeypatch):
    monkeypatch.setattr(progress, "_line", progress._Line())
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    handler = progress.LogHandler(term)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    progress.show("training: fitting")
    handler.emit(logging.LogRecord("x", logging.INFO, __file__, 1, "trained", None, None))
    assert term.getvalue() == "\r\x1b[Ktraining: fitting\r\x1b[KINFO trained\n"


def test_a_line_is_cut_to_the_terminal_width(monkeypatch):
    monkeypatch.setattr(progress, "_line", progress._Line())
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setattr(progress, "_columns", lambda stream: 20)
    progress.show("x" * 50)
    assert term.getvalue() == "\r\x1b[K" + "x" * 19


BENCH = ("import sys; sys.path.insert(0, 'bench'); import bench_drift as b; "
         "b.simulate(trials=2, none_trials=3, rounds=50, sizes=b.SIZES[:1], conditions=(('none', 0.0),))")


def test_a_benchmark_shows_its_trials_on_a_terminal(tmp_path):
    """bench_drift's trials, a small run of its own simulation (the whole benchmark takes minutes)."""
    script = tmp_path / "small_bench.py"
    script.write_text(BENCH + "\n")
    code, _, said = run_file_on("terminal", script)
    assert code == 0, said
    assert ERASE + b"bench_drift: size 1 of 1: trial 1 of 3" in said, said
