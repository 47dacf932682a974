"""The cycle as real processes: two at once, one SIGKILLed mid-work and rerun, the daemon under SIGTERM.

The processes run the real fullprocess.main with `publish` replaced by a stand-in that appends
what it was asked to publish to output_folder_path/published.jsonl (the report and the API
returns are tested by their own modules and by the end-to-end test).
"""
import json
import os
import signal
import subprocess
import time
from datetime import datetime

import pytest

import cycle
import deployment
import fullprocess
import ingestion
import schedule
from conftest import write_delivery
from helpers import assert_consistent, cycle_cmd, decisions, env, published, run, stand_in



def test_two_cycles_at_once_one_works_one_exits(world):
    write_delivery(world, "first.csv", rows=20000, seed=1)
    procs = [subprocess.Popen(cycle_cmd(world), cwd=world.base, env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    locked = [err for _, err in outs if "another cycle holds" in err]
    worked = [err for _, err in outs if "cycle finished: cold start: deployed" in err]
    assert len(locked) == 1 and len(worked) == 1
    assert "step:" not in locked[0]
    assert decisions(world) == [(cycle.COLD_START, 1)]
    assert published(world) == [{"version": 1, "decision": cycle.COLD_START}]
    assert len(ingestion.read_finaldata(world.finaldata)) == 20000


# Killed right after the step starts: mid-ingestion (finaldata written or not, history not yet),
# mid-training (the drift decision made but not recorded), mid-deployment (a version folder half
# built, or built but not serving, or serving but not in the history).
@pytest.mark.parametrize("stage", ["ingestion", "training", "deployment"])
def test_a_cycle_killed_mid_work_is_finished_by_the_next(make_world, stage):
    world = make_world(drift_test="raw", promotion_gate=False)  # the course's setting: retrain on everything
    write_delivery(world, "first.csv", rows=2000, seed=1)
    assert fullprocess.run_cycle(world, publisher=stand_in).to_dict()["decision"] == cycle.COLD_START
    write_delivery(world, "shifted.csv", rows=8000, seed=2, drift="concept", strength=1.0)
    seen = []
    with subprocess.Popen(cycle_cmd(world), cwd=world.base, env=env(), stderr=subprocess.PIPE, text=True) as proc:
        for line in proc.stderr:
            seen.append(line)
            if f"step: {stage}" in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    again = run(world)
    assert again.returncode == 0, again.stderr
    manifest = assert_consistent(world, ["first.csv", "shifted.csv"])
    # the drifted delivery was decided on and the model retrained on everything
    assert manifest["version"] >= 2
    assert manifest["training"]["training_rows"] == 10000
    assert (world.prod_deployment_path / "ingestedfiles.txt").read_text() == "first.csv\nshifted.csv\n"
    assert published(world)[-1]["version"] == manifest["version"]
    rows = decisions(world)
    assert rows[0] == (cycle.COLD_START, 1)
    assert all(done for _, done in rows)
    assert rows[-1][0] in (cycle.REDEPLOYED, cycle.PUBLISHED, cycle.NO_DRIFT)
    assert fullprocess.run_cycle(world, publisher=stand_in).to_dict()["decision"] == cycle.NO_NEW_DATA
    assert decisions(world) == rows
    assert_consistent(world, ["first.csv", "shifted.csv"])


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_the_daemon_runs_cycles_and_stops_on_sigterm(world):
    write_delivery(world, "first.csv", rows=200, seed=1)
    log = world.log_folder_path / "cycles.jsonl"
    proc = subprocess.Popen(cycle_cmd(world, "--daemon", "--schedule", "*/1 * * * * *"), cwd=world.base,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the first scheduled cycle does the cold start; a later one finds nothing to do
        assert wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 2)
        # its record while it runs: what the status page and status.py --check read
        beat = schedule.read_heartbeat(world.log_folder_path / "daemon.json")
        assert {k: beat[k] for k in ("pid", "host", "schedule", "config")} == {
            "pid": proc.pid, "host": os.uname().nodename, "schedule": "*/1 * * * * *", "config": str(world.path)}
        heard = datetime.fromisoformat(beat["heartbeat_at"])
        assert schedule.daemon_stopped(beat, heard) is None  # its pid exists
        assert wait_for(lambda: schedule.read_heartbeat(world.log_folder_path / "daemon.json")["heartbeat_at"]
                        != beat["heartbeat_at"])  # and it beats on
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert sorted(p.name for p in world.log_folder_path.iterdir()) == ["cycles.jsonl"]  # its record removed
    assert schedule.daemon_stopped(beat, heard) == (
        f"the daemon (pid {proc.pid} on {os.uname().nodename}) is gone (last heartbeat "
        f"{heard:%Y-%m-%d %H:%M} UTC, 0 s ago)")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines[0]["decision"] == cycle.COLD_START
    assert {line["decision"] for line in lines[1:]} == {cycle.NO_NEW_DATA}
    assert "daemon started: schedule '*/1 * * * * *'" in err
    assert "received SIGTERM: stopping after any running cycle" in err
    assert err.rstrip().endswith("daemon stopped")
    assert published(world) == [{"version": 1, "decision": cycle.COLD_START}]


def test_the_daemon_logs_a_failing_cycle_and_keeps_going(world):
    world.test_data_file.write_text("corporation,exited\n")  # every cycle fails at scoring
    write_delivery(world, "first.csv", rows=200, seed=1)
    log = world.log_folder_path / "cycles.jsonl"
    proc = subprocess.Popen(cycle_cmd(world, "--daemon", "--schedule", "*/1 * * * * *"), cwd=world.base,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert {line["decision"] for line in lines} == {cycle.FAILED}
    assert ("scheduled cycle failed: the scoring step failed: test data "
            f"{world.test_data_file} is not usable: missing column 'lastmonth_activity' (the daemon keeps going)") in err
    assert "Traceback" not in err and "Error:" not in err
    assert "received SIGINT" in err
    assert deployment.current_manifest(world.prod_deployment_path) is None


def test_the_daemon_refuses_a_bad_schedule(world):
    result = run(world, "--daemon", "--schedule", "every minute")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: a schedule has 5 crontab fields (or 6, seconds first), not 2: 'every minute'")
