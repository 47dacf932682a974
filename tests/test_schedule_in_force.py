"""The schedule really in force, as the status page shows it: the crontab line, a live daemon, or none.

`crontab -l` and pgrep are stand-ins first on PATH (helpers.fake_cron); the daemon's record is
written here as run_daemon writes it, with this test's pid for a live one and a finished child's for
a dead one. The page is the real app's GET /.
"""
import json
import os
import pwd
import subprocess
import sys
from datetime import datetime, timezone

import pytest
from conftest import REPO
from helpers import fake_cron

import schedule
from app import create_app

NOW = datetime(2026, 11, 18, 16, 16, 40, tzinfo=timezone.utc)
USER = pwd.getpwuid(os.getuid()).pw_name
HOST = os.uname().nodename


@pytest.fixture(autouse=True)
def no_cached_crontab():
    schedule.forget_crontab()
    yield
    schedule.forget_crontab()


def cron_line(cfg, minutes="*/10"):
    """The line `make cron-install` writes for this checkout, running `cfg`."""
    return (f"{minutes} * * * * mkdir -p {REPO}/logs && {REPO}/.venv/bin/python {REPO}/fullprocess.py "
            f"--config {cfg.path} >> {REPO}/logs/cron.log 2>&1\n")


def write_beat(cfg, pid=None, heartbeat_at="2026-11-18T16:16:10+00:00", expr="*/10 * * * *"):
    cfg.log_folder_path.mkdir(parents=True, exist_ok=True)
    beat = {"pid": os.getpid() if pid is None else pid, "host": HOST, "schedule": expr, "config": str(cfg.path),
            "started_at": "2026-11-18T09:00:00+00:00", "heartbeat_at": heartbeat_at}
    (cfg.log_folder_path / schedule.HEARTBEAT).write_text(json.dumps(beat) + "\n")


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def schedule_section(cfg, monkeypatch, now=NOW):
    """The page's schedule paragraphs (the real page, its facts at `now`)."""
    import status

    monkeypatch.setattr(status, "gather", lambda c, _real=status.gather: _real(c, now=now))
    html = create_app(cfg).test_client().get("/").get_data(as_text=True)
    start = html.index("<h3>Schedule</h3>")
    return [line.strip() for line in html[start:html.index("</section>", start)].splitlines()[1:] if line.strip()]


NEXT = ('<p id="next-cycle">Next scheduled cycle: <time datetime="2026-11-18T16:20:00+00:00">2026-11-18 16:20 UTC'
        '</time> <span class="muted">(in 3 min)</span></p>')


def test_the_installed_crontab_line(world, monkeypatch, tmp_path):
    for key, value in fake_cron(tmp_path, table="0 3 * * * /usr/bin/backup\n" + cron_line(world)).items():
        monkeypatch.setenv(key, value)
    assert schedule.in_force(world.path, world.log_folder_path, NOW) == {
        "schedules": [{"source": "crontab", "expr": "*/10 * * * *", "next": "2026-11-18T16:20:00+00:00",
                       "period_seconds": 600.0, "problem": None,
                       "text": f"cron runs the cycle on */10 * * * * (the crontab of {USER}; the cron daemon is running)"}],
        "next": "2026-11-18T16:20:00+00:00", "none": None, "notes": []}
    assert schedule_section(world, monkeypatch) == [
        f'<p id="schedule-crontab">Cron runs the cycle on */10 * * * * (the crontab of {USER}; the cron daemon is '
        'running).</p>', NEXT]


def test_a_crontab_line_no_cron_daemon_runs_is_no_schedule(world, monkeypatch, tmp_path):
    for key, value in fake_cron(tmp_path, table=cron_line(world), running=False).items():
        monkeypatch.setenv(key, value)
    assert schedule_section(world, monkeypatch) == [
        f'<p class="flag" id="schedule-none">No schedule installed: the line is in the crontab of {USER}, but the '
        'cron daemon is not running, so nothing runs it; start it (as root) with: service cron start; no daemon '
        'runs (fullprocess.py --daemon).</p>']


def test_a_line_for_another_config_or_checkout_is_not_this_schedule(world, monkeypatch, tmp_path):
    other = f"*/10 * * * * /usr/bin/python3 {REPO}/fullprocess.py --config /srv/other/config.json\n"
    elsewhere = f"*/10 * * * * /usr/bin/python3 /srv/dras/fullprocess.py --config {world.path}\n"
    for key, value in fake_cron(tmp_path, table=other + elsewhere).items():
        monkeypatch.setenv(key, value)
    assert schedule.in_force(world.path, world.log_folder_path, NOW)["none"] == (
        f"no schedule installed: the crontab of {USER} has no monitoring cycle for {world.path}; "
        "no daemon runs (fullprocess.py --daemon)")


@pytest.mark.parametrize(("line", "expr", "next_run"), [
    ("@hourly", "@hourly", "2026-11-18T17:00:00+00:00"),
    # cron counts weekdays from Sunday = 0: 2026-11-18 is a Wednesday, so "1-2" is Monday and Tuesday
    ("0 9 * * 1-2", "0 9 * * 1-2", "2026-11-23T09:00:00+00:00"),
    ("0 9 * * */3", "0 9 * * */3", "2026-11-21T09:00:00+00:00"),  # Sunday, Wednesday, Saturday
])
def test_the_crontab_schedule_read_with_crons_meaning(world, monkeypatch, tmp_path, line, expr, next_run):
    cmd = cron_line(world).split(None, 5)[5]
    for key, value in fake_cron(tmp_path, table=f"{line} {cmd}").items():
        monkeypatch.setenv(key, value)
    found = schedule.in_force(world.path, world.log_folder_path, NOW)
    assert [(s["expr"], s["next"]) for s in found["schedules"]] == [(expr, next_run)]


def test_a_live_daemon_with_a_fresh_heartbeat(world, monkeypatch, tmp_path):
    for key, value in fake_cron(tmp_path).items():  # an empty crontab
        monkeypatch.setenv(key, value)
    write_beat(world)
    daemon = (f"the daemon (fullprocess.py --daemon, pid {os.getpid()} on {HOST}) runs the cycle on */10 * * * *; "
              "last heartbeat 2026-11-18 16:16 UTC (30 s ago)")
    assert schedule.in_force(world.path, world.log_folder_path, NOW) == {
        "schedules": [{"source": "daemon", "expr": "*/10 * * * *", "next": "2026-11-18T16:20:00+00:00",
                       "period_seconds": 600.0, "problem": None, "pid": os.getpid(), "host": HOST,
                       "started_at": "2026-11-18T09:00:00+00:00", "heartbeat_at": "2026-11-18T16:16:10+00:00",
                       "text": daemon}],
        "next": "2026-11-18T16:20:00+00:00", "none": None, "notes": []}
    assert schedule_section(world, monkeypatch) == [f'<p id="schedule-daemon">{daemon[0].upper()}{daemon[1:]}.</p>', NEXT]


def test_a_stale_heartbeat_is_no_schedule(world, monkeypatch, tmp_path):
    for key, value in fake_cron(tmp_path).items():
        monkeypatch.setenv(key, value)
    write_beat(world, heartbeat_at="2026-11-18T15:51:40+00:00")  # 25 min: more than two periods of 10 min
    assert schedule_section(world, monkeypatch) == [
        f'<p class="flag" id="schedule-none">No schedule installed: the crontab of {USER} has no monitoring cycle '
        f'for {world.path}; the daemon (pid {os.getpid()} on {HOST}) has stopped beating: last heartbeat '
        '2026-11-18 15:51 UTC, 25 min ago (more than two schedule periods, 20 min); its record '
        f'{world.log_folder_path}/daemon.json is left behind (the next daemon replaces it).</p>']


def test_a_dead_daemons_record_is_no_schedule_and_a_note_beside_cron(world, monkeypatch, tmp_path):
    pid = dead_pid()
    write_beat(world, pid=pid)
    gone = (f"the daemon (pid {pid} on {HOST}) is gone (last heartbeat 2026-11-18 16:16 UTC, 30 s ago); "
            f"its record {world.log_folder_path}/daemon.json is left behind (the next daemon replaces it)")
    for key, value in fake_cron(tmp_path).items():
        monkeypatch.setenv(key, value)
    assert schedule.in_force(world.path, world.log_folder_path, NOW)["none"] == (
        f"no schedule installed: the crontab of {USER} has no monitoring cycle for {world.path}; {gone}")
    schedule.forget_crontab()
    (tmp_path / "table").write_text(cron_line(world))
    assert schedule_section(world, monkeypatch) == [
        f'<p id="schedule-crontab">Cron runs the cycle on */10 * * * * (the crontab of {USER}; the cron daemon is '
        'running).</p>', f'<p class="flag">{gone[0].upper()}{gone[1:]}.</p>', NEXT]


def test_nothing_installed(world, monkeypatch, tmp_path):
    for key, value in fake_cron(tmp_path).items():
        monkeypatch.setenv(key, value)
    assert schedule_section(world, monkeypatch) == [
        f'<p class="flag" id="schedule-none">No schedule installed: the crontab of {USER} has no monitoring cycle '
        f'for {world.path}; no daemon runs (fullprocess.py --daemon).</p>']


def test_no_crontab_on_path(world, monkeypatch, tmp_path):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert schedule.in_force(world.path, world.log_folder_path, NOW) == {
        "schedules": [], "next": None, "notes": [],
        "none": "no schedule installed: crontab is not installed (not on PATH), so no cron line can run the cycle; "
                "no daemon runs (fullprocess.py --daemon)"}


def test_crontab_is_asked_once_in_a_while(world, monkeypatch, tmp_path):
    for key, value in fake_cron(tmp_path, table=cron_line(world)).items():
        monkeypatch.setenv(key, value)
    assert schedule.in_force(world.path, world.log_folder_path, NOW)["schedules"][0]["source"] == "crontab"
    (tmp_path / "table").unlink()
    assert schedule.in_force(world.path, world.log_folder_path, NOW)["schedules"][0]["source"] == "crontab"  # cached
    schedule.forget_crontab()
    assert schedule.in_force(world.path, world.log_folder_path, NOW)["schedules"] == []
