"""cronjob.txt: a valid crontab line every ten minutes, installed and removed by make with crontab."""
import getpass
import os
import shutil
import subprocess
import time
from datetime import datetime

import pytest
from apscheduler.triggers.cron import CronTrigger

import schedule
from conftest import REPO
from helpers import fake_cron

OTHER = "0 3 * * * /usr/bin/backup --nightly\n"


def test_the_schedule_is_every_ten_minutes():
    expr = schedule.read_cronjob()
    assert expr == "*/10 * * * *"
    trigger = CronTrigger.from_crontab(expr, timezone="UTC")
    now = datetime.fromisoformat("2026-01-05T12:03:30+00:00")
    fires = []
    for _ in range(4):
        now = trigger.get_next_fire_time(None, now)
        fires.append(now.strftime("%H:%M:%S"))
        now = now.replace(second=1)
    assert fires == ["12:10:00", "12:20:00", "12:30:00", "12:40:00"]
    assert schedule.make_trigger(expr).fields == trigger.fields


def test_the_line_is_one_job_with_placeholders():
    lines = [ln for ln in (REPO / "cronjob.txt").read_text().splitlines() if ln.strip()]
    assert len(lines) == 1
    fields = lines[0].split()
    assert fields[:5] == ["*/10", "*", "*", "*", "*"]
    command = " ".join(fields[5:])
    assert "@PYTHON@ @REPO@/fullprocess.py --config @REPO@/config.json" in command
    assert command.endswith(">> @REPO@/logs/cron.log 2>&1")
    assert "%" not in command  # cron would turn it into a newline


def make(target, tmp_path, daemon=True):
    """Run `make target` with a stand-in crontab (a file) and, unless `daemon` is None, a stand-in
    pgrep that says a cron daemon is (True) or is not (False) running."""
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), target],
                          env={**os.environ, **fake_cron(tmp_path, running=daemon)},
                          capture_output=True, text=True, timeout=60)


def job_line():
    return (f"*/10 * * * * mkdir -p {REPO}/logs && {REPO}/.venv/bin/python {REPO}/fullprocess.py "
            f"--config {REPO}/config.json >> {REPO}/logs/cron.log 2>&1")


def test_make_cron_install_and_uninstall(tmp_path):
    table = tmp_path / "table"
    table.write_text(OTHER)
    expected = job_line() + "\n"
    for _ in range(2):  # installing twice leaves one line
        result = make("cron-install", tmp_path)
        assert result.returncode == 0, result.stderr
        assert table.read_text() == OTHER + expected
    assert result.stdout.splitlines()[-1] == expected.rstrip("\n")
    result = make("cron-uninstall", tmp_path)
    assert result.returncode == 0, result.stderr
    assert table.read_text() == OTHER


def test_make_cron_install_into_an_empty_crontab(tmp_path):
    result = make("cron-install", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "table").read_text().count("fullprocess.py") == 1
    assert make("cron-uninstall", tmp_path).returncode == 0
    assert (tmp_path / "table").read_text() == ""


def test_cron_install_without_a_running_daemon_says_so_and_fails(tmp_path):
    result = make("cron-install", tmp_path, daemon=False)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.splitlines()[:2] == [
        f"the line is in the crontab of {getpass.getuser()}, but the cron daemon is not running, "
        "so nothing will run it.",
        "start it (as root) with: service cron start"]
    assert (tmp_path / "table").read_text() == job_line() + "\n"  # in place for when cron starts


def test_cron_install_says_what_it_installed(tmp_path):
    result = make("cron-install", tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (
        0, f"installed in the crontab of {getpass.getuser()} (the cron daemon is running):\n{job_line()}\n", "")


def test_cron_uninstall_says_what_it_removed_or_that_there_was_nothing(tmp_path):
    table = tmp_path / "table"
    table.write_text(OTHER)
    result = make("cron-uninstall", tmp_path)
    assert (result.returncode, result.stdout) == (
        0, f"nothing to remove: the crontab of {getpass.getuser()} has no monitoring cycle of {REPO}\n")
    assert make("cron-install", tmp_path).returncode == 0
    result = make("cron-uninstall", tmp_path)
    assert (result.returncode, result.stdout) == (
        0, f"removed from the crontab of {getpass.getuser()}:\n{job_line()}\n")
    assert table.read_text() == OTHER


def test_cron_install_sees_a_real_cron_daemon(tmp_path):
    """The real pgrep, and a real cron daemon started here when none runs (the crontab stays a stand-in)."""
    cron = shutil.which("cron")
    if cron is None:
        pytest.skip("Debian's cron is not installed (make setup installs it)")
    started = None
    if subprocess.run(["pgrep", "-x", "cron"], capture_output=True).returncode != 0:
        started = subprocess.Popen([cron, "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while subprocess.run(["pgrep", "-x", "cron"], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "cron did not start"
            time.sleep(0.05)
    try:
        result = make("cron-install", tmp_path, daemon=None)
        assert (result.returncode, result.stdout.splitlines()[-1]) == (0, job_line()), result.stderr
    finally:
        if started is not None:
            started.terminate()
            started.wait(timeout=10)
    if started is not None:
        result = make("cron-install", tmp_path, daemon=None)
        assert result.returncode != 0
        assert "the cron daemon is not running" in result.stderr
