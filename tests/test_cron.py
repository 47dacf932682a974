"""cronjob.txt: a valid crontab line every ten minutes, installed and removed by make with crontab."""
import os
import subprocess
from datetime import datetime

from apscheduler.triggers.cron import CronTrigger

import schedule
from conftest import REPO

FAKE_CRONTAB = """#!/bin/sh
# A stand-in for crontab(1): `crontab -l` prints the table, `crontab -` replaces it from stdin.
case "$1" in
  -l) [ -f "$CRONTAB_FILE" ] || { echo "no crontab for $(id -un)" >&2; exit 1; }; cat "$CRONTAB_FILE" ;;
  -) cat > "$CRONTAB_FILE.new" && mv "$CRONTAB_FILE.new" "$CRONTAB_FILE" ;;  # like crontab: read all, then replace
  *) echo "unexpected arguments: $*" >&2; exit 2 ;;
esac
"""
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


def make(target, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "crontab"
    fake.write_text(FAKE_CRONTAB)
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "CRONTAB_FILE": str(tmp_path / "table")}
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), target], env=env,
                          capture_output=True, text=True, timeout=60)


def test_make_cron_install_and_uninstall(tmp_path):
    table = tmp_path / "table"
    table.write_text(OTHER)
    expected = (f"*/10 * * * * mkdir -p {REPO}/logs && {REPO}/.venv/bin/python {REPO}/fullprocess.py "
                f"--config {REPO}/config.json >> {REPO}/logs/cron.log 2>&1\n")
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
