"""The suite's output is its own: no `--- Logging error ---` traceback from a logger left writing to a
stream pytest has closed, no log line from a monitoring thread after the last test (issue 14)."""
import subprocess
import sys

from conftest import REPO


def test_a_session_running_entry_points_and_apps_in_process_prints_nothing_after_it(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "inner"),
         str(REPO / "tests" / "logging_leak_session.py")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert result.stdout.split()[:2] == ["...", "[100%]"]
    assert result.stdout.splitlines()[-1].startswith("3 passed in ")
