"""`python status.py --check`: is it running? Each failing state and the healthy one, line by line.

The crontab is a stand-in first on PATH (helpers.fake_cron); the API is a real gunicorn on 127.0.0.1
(or a closed port); the serving model is the module's deployed world (a copy, where it is tampered with).
The facts are taken at a fixed time in-process, and the command's own screen from a real process.
"""
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from contextlib import closing
from datetime import datetime, timedelta, timezone

import pytest
from conftest import REPO, make_config
from helpers import fake_cron, free_port, gunicorn

import health
import history
import schedule
from health import Fact
from settings import load_config

NOW = datetime(2026, 11, 18, 16, 16, 40, tzinfo=timezone.utc)
USER = pwd.getpwuid(os.getuid()).pw_name
HOST = os.uname().nodename
CLOSED = "http://127.0.0.1:9"  # nothing listens on port 9
CRON_OK = Fact("ok", "schedule", f"cron runs the cycle on */10 * * * * (the crontab of {USER}; the cron daemon is "
                                 "running); next run 2026-11-18 16:20 UTC (in 3 min)")


@pytest.fixture(autouse=True)
def no_cached_crontab():
    schedule.forget_crontab()
    yield
    schedule.forget_crontab()


@pytest.fixture(scope="module")
def api(shared):
    with gunicorn(shared, workers=1) as url:
        yield url


def cron_line(cfg):
    return f"*/10 * * * * {REPO}/.venv/bin/python {REPO}/fullprocess.py --config {cfg.path} >> /dev/null 2>&1\n"


def install(monkeypatch, tmp_path, cfg, running=True):
    """The crontab holds the cycle of `cfg`; a cron daemon runs (or not); returns the environment."""
    env = fake_cron(tmp_path, table=cron_line(cfg), running=running)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def beside(shared, tmp_path, **overrides):
    """A config of its own (own logs, history and quarantine under tmp_path) serving the shared world's model."""
    return load_config(make_config(tmp_path, prod_deployment_path=str(shared.prod_deployment_path), **overrides))


def log_cycle(cfg, minutes_ago, decision="no new data", errors=(), now=NOW):
    """The cycle log's line of a cycle that ran `minutes_ago` before `now`, as fullprocess writes it."""
    at = (now - timedelta(minutes=minutes_ago)).isoformat(timespec="milliseconds")
    cfg.log_folder_path.mkdir(parents=True, exist_ok=True)
    with open(cfg.log_folder_path / "cycles.jsonl", "a") as f:
        f.write(json.dumps({"started_at": at, "finished_at": at, "decision": decision, "errors": list(errors),
                            "seconds": 0.002}) + "\n")


def serving(shared):
    m = json.loads((shared.prod_deployment_path / "manifest.json").read_text())
    return Fact("ok", "serving model", f"version {m['version']}: trainedmodel.pkl matches its manifest (sha256 "
                                       f"{m['files']['trainedmodel.pkl']['sha256'][:12]}) and the model allow-list")


def run_check(*args, env=None):
    return subprocess.run([sys.executable, str(REPO / "status.py"), "--check", *map(str, args)],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_healthy(shared, api, monkeypatch, tmp_path):
    cfg = beside(shared, tmp_path, api_url=api)
    env = install(monkeypatch, tmp_path, cfg)
    cfg.log_folder_path.mkdir()
    (cfg.log_folder_path / "daemon.json").write_text(json.dumps({
        "pid": os.getpid(), "host": HOST, "schedule": "*/5 * * * *", "config": str(cfg.path),
        "started_at": "2026-11-18T09:00:00+00:00", "heartbeat_at": "2026-11-18T16:16:00+00:00"}))
    log_cycle(cfg, 5)
    facts = health.check(cfg, now=NOW)
    assert facts == [
        CRON_OK,
        Fact("ok", "schedule", f"the daemon (fullprocess.py --daemon, pid {os.getpid()} on {HOST}) runs the cycle "
                               "on */5 * * * *; last heartbeat 2026-11-18 16:16 UTC (40 s ago); next run 2026-11-18 "
                               "16:20 UTC (in 3 min)"),
        Fact("ok", "last cycle", "2026-11-18 16:11 UTC (5 min ago): no new data"),
        Fact("ok", "API", f"{api} answers ok, serving version 1"),
        serving(shared),
        Fact("ok", "quarantine", "no file quarantined since the last cycle began"),
    ]
    assert health.render(facts).splitlines()[-1] == "all is well"


def test_the_command_says_all_is_well_and_exits_0(shared, api, monkeypatch, tmp_path):
    cfg = beside(shared, tmp_path, api_url=api)
    env = install(monkeypatch, tmp_path, cfg)
    log_cycle(cfg, 5, now=datetime.now(timezone.utc))
    before = health.render(health.check(cfg))
    result = run_check("--config", cfg.path, env=env)
    after = health.render(health.check(cfg))
    assert (result.returncode, result.stderr) == (0, ""), result.stdout
    assert result.stdout in (before, after)  # the same facts, whichever second it ran in
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [
        "ok    schedule", "ok    last cycle", "ok    API", "ok    serving model", "ok    quarantine", "all is well"]


def test_a_fresh_install(world, tmp_path):
    cfg = load_config(make_config(world.base, api_url=CLOSED))
    result = run_check("--config", cfg.path, env=fake_cron(tmp_path))
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout == (
        f"FAIL  schedule: no schedule installed: the crontab of {USER} has no monitoring cycle for {cfg.path}; "
        "no daemon runs (fullprocess.py --daemon)\n"
        "warn  last cycle: none has run yet\n"
        f"FAIL  API: {CLOSED} does not answer (connection refused)\n"
        f"FAIL  serving model: no model is deployed yet (nothing in {cfg.prod_deployment_path})\n"
        "ok    quarantine: no file quarantined yet\n"
        "not well: look at the schedule, the last cycle, the API, the serving model\n")


def test_a_crontab_line_without_a_cron_daemon(shared, api, monkeypatch, tmp_path):
    cfg = beside(shared, tmp_path, api_url=api)
    install(monkeypatch, tmp_path, cfg, running=False)
    log_cycle(cfg, 5)
    facts = health.check(cfg, now=NOW)
    assert facts[0] == Fact("FAIL", "schedule", (
        f"no schedule installed: the line is in the crontab of {USER}, but the cron daemon is not running, so "
        "nothing runs it; start it (as root) with: service cron start; no daemon runs (fullprocess.py --daemon)"))
    assert facts[1:] == [Fact("ok", "last cycle", "2026-11-18 16:11 UTC (5 min ago): no new data"),
                         Fact("ok", "API", f"{api} answers ok, serving version 1"), serving(shared),
                         Fact("ok", "quarantine", "no file quarantined since the last cycle began")]
    assert health.render(facts).splitlines()[-1] == "not well: look at the schedule"


def test_a_dead_daemon_beside_cron_is_a_note(shared, api, monkeypatch, tmp_path):
    cfg = beside(shared, tmp_path, api_url=api)
    install(monkeypatch, tmp_path, cfg)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    cfg.log_folder_path.mkdir()
    (cfg.log_folder_path / "daemon.json").write_text(json.dumps({
        "pid": child.pid, "host": HOST, "schedule": "*/10 * * * *", "heartbeat_at": "2026-11-18T14:00:00+00:00"}))
    log_cycle(cfg, 5)
    facts = health.check(cfg, now=NOW)
    assert facts[:2] == [CRON_OK, Fact("note", "schedule", (
        f"the daemon (pid {child.pid} on {HOST}) is gone (last heartbeat 2026-11-18 14:00 UTC, 2.3 h ago); "
        f"its record {cfg.log_folder_path}/daemon.json is left behind (the next daemon replaces it)"))]
    assert health.healthy(facts)


@pytest.mark.parametrize(("minutes", "decision", "errors", "fact"), [
    (180, "no new data", (), Fact("warn", "last cycle", "2026-11-18 13:16 UTC (3.0 h ago): no new data; late: older "
                                                        "than two schedule periods (20 min)")),
    (21, "no drift", (), Fact("warn", "last cycle", "2026-11-18 15:55 UTC (21 min ago): no drift; late: older than "
                                                     "two schedule periods (20 min)")),
    (19, "no drift", (), Fact("ok", "last cycle", "2026-11-18 15:57 UTC (19 min ago): no drift")),
    (3, "failed", ("scoring: the test data have no rows",),
     Fact("FAIL", "last cycle", "2026-11-18 16:13 UTC (3 min ago): failed (scoring: the test data have no rows)")),
    (3, "interrupted", (), Fact("warn", "last cycle", "2026-11-18 16:13 UTC (3 min ago): interrupted")),
])
def test_the_last_cycle(shared, monkeypatch, tmp_path, minutes, decision, errors, fact):
    cfg = beside(shared, tmp_path, api_url=CLOSED)
    install(monkeypatch, tmp_path, cfg)
    log_cycle(cfg, minutes, decision, errors)
    facts = health.check(cfg, now=NOW)
    assert facts[1] == fact
    assert facts[2] == Fact("FAIL", "API", f"{CLOSED} does not answer (connection refused)")


def test_the_last_cycle_from_the_history_when_newer_than_the_log(shared, monkeypatch, tmp_path):
    cfg = beside(shared, tmp_path, api_url=CLOSED)
    install(monkeypatch, tmp_path, cfg)
    log_cycle(cfg, 30)
    with closing(history.connect(cfg.history)) as conn:
        conn.execute("INSERT INTO cycles (started_at, finished_at, decision, record) VALUES (?, ?, ?, ?)",
                     (NOW.timestamp() - 120, NOW.timestamp() - 119, "drift: redeployed", "{}"))
    assert health.check(cfg, now=NOW)[1] == Fact("ok", "last cycle", "2026-11-18 16:14 UTC (2 min ago): drift: redeployed")


def test_quarantined_files_since_the_last_cycle(shared, monkeypatch, tmp_path):
    cfg = beside(shared, tmp_path, api_url=CLOSED)
    install(monkeypatch, tmp_path, cfg)
    start = NOW.timestamp() - 60
    with closing(history.connect(cfg.history)) as conn:
        conn.execute("INSERT INTO cycles (started_at, finished_at, decision, record) VALUES (?, ?, ?, ?)",
                     (start, start + 1, "no usable new rows", "{}"))
        for name, reason, at in [("old.csv", "empty file", start - 3600), ("bad.csv", "header only, no rows", start + 0.5),
                                 ("worse.csv", "not UTF-8 text", start + 0.6)]:
            conn.execute("INSERT INTO quarantined_files (name, sha256, reason, moved_to, at) VALUES (?, ?, ?, ?, ?)",
                         (name, "0" * 64, reason, "q", at))
    facts = health.check(cfg, now=NOW)
    assert facts[-1] == Fact("warn", "quarantine", f"2 files quarantined since the last cycle began, in "
                                                   f"{cfg.quarantine_folder_path}: bad.csv (header only, no rows); "
                                                   "worse.csv (not UTF-8 text)")


def test_a_serving_model_that_does_not_match_its_manifest(shared, api, monkeypatch, tmp_path):
    prod = tmp_path / "prod"
    shutil.copytree(shared.prod_deployment_path, prod, symlinks=True)
    model = prod / "versions" / "v0001" / "trainedmodel.pkl"
    expected = json.loads((prod / "manifest.json").read_text())["files"]["trainedmodel.pkl"]["sha256"]
    model.write_bytes(model.read_bytes() + b"\0")
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    cfg = load_config(make_config(tmp_path, prod_deployment_path=str(prod), api_url=api))
    install(monkeypatch, tmp_path, cfg)
    log_cycle(cfg, 5)
    facts = health.check(cfg, now=NOW)
    assert facts[3] == Fact("FAIL", "serving model", f"{model} does not match its manifest (sha256 {digest[:12]}, "
                                                     f"expected {expected[:12]})")
    assert not health.healthy(facts)


def test_a_user_mistake_is_one_line_and_exit_2(tmp_path):
    result = run_check("--config", tmp_path / "missing.json")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"error: config file not found: {tmp_path / 'missing.json'}\n"
    result = subprocess.run([sys.executable, str(REPO / "status.py")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "status.py: error: the following arguments are required: --check"


def test_an_api_that_is_not_this_one(tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while "does not answer" in (fact := health.api_fact(url, 1)).text and time.monotonic() < deadline:
            time.sleep(0.05)  # until the server listens
        assert fact == Fact("FAIL", "API", f"{url}/health answers HTTP 404, not with the API's health")
    finally:
        server.terminate()
        server.wait(timeout=10)
