"""The writer lock (locks.py): re-entrant in a thread, exclusive across threads and processes, a
bounded wait that says whom it waits for, a one-line refusal, and no stale lock after a SIGKILL."""
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, write_delivery

import cycle
import fullprocess
import locks

HOLDER = """
import sys, time
import locks
with locks.writer(sys.argv[1], "a test holder"):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_in_thread(folder, seconds, what="a thread"):
    held, done = threading.Event(), threading.Event()

    def run():
        with locks.writer(folder, what):
            held.set()
            done.wait(seconds)

    thread = threading.Thread(target=run)
    thread.start()
    held.wait(10)
    return thread, done


def test_nested_in_one_thread_it_is_taken_again_and_the_file_names_the_outer_holder(tmp_path):
    with locks.writer(tmp_path, "outer.py"):
        with locks.writer(tmp_path, "inner.py", wait=0):
            assert (tmp_path / ".writer.lock").read_text() == f"{os.getpid()} outer.py".ljust(79) + "\n"
            assert locks.holder(tmp_path) == f"pid {os.getpid()} (outer.py)"
        with pytest.raises(locks.Busy):  # ... but the cycle never runs inside another writer
            locks.acquire(tmp_path, "fullprocess.py", reentrant=False)
    thread, done = hold_in_thread(tmp_path, 0)  # released: another thread takes it at once
    thread.join(10)


def test_another_thread_waits_saying_once_for_whom_then_runs(tmp_path, caplog):
    thread, done = hold_in_thread(tmp_path, 0.4)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="locks"):
        with locks.writer(tmp_path, "waiter", wait=5):
            waited = time.monotonic() - started
    thread.join(10)
    assert 0.2 < waited < 5
    assert caplog.messages == [f"waiting up to 5s for {tmp_path}/.writer.lock, held by pid {os.getpid()} (a thread)"]


def test_the_wait_runs_out_with_one_line_and_zero_refuses_at_once(tmp_path):
    thread, done = hold_in_thread(tmp_path, 30)
    try:
        with pytest.raises(locks.Busy) as err:
            locks.acquire(tmp_path, "waiter", wait=0.2)
        assert str(err.value) == (f"gave up after waiting 0.2s: {tmp_path}/.writer.lock is still held by pid "
                                  f"{os.getpid()} (a thread); nothing was changed, run it again once that one has finished")
        with pytest.raises(locks.Busy) as err:
            locks.acquire(tmp_path, "waiter")
        assert str(err.value) == f"another writer holds {tmp_path}/.writer.lock: pid {os.getpid()} (a thread)"
    finally:
        done.set()
        thread.join(10)


@pytest.mark.parametrize("script", ["ingestion.py", "training.py", "scoring.py", "deployment.py"])
def test_a_script_gives_up_with_exit_75_and_a_killed_holder_leaves_no_lock(make_world, script):
    cfg = make_world(writer_wait_seconds=0.3)
    write_delivery(cfg, "a.csv", rows=30, seed=1)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(cfg.output_folder_path)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        run = subprocess.run([sys.executable, str(REPO / script), "--config", str(cfg.path)], capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == locks.EXIT_BUSY == 75
        lines = run.stderr.splitlines()
        path = cfg.output_folder_path / ".writer.lock"
        assert lines[-2].endswith(f"WARNING locks: waiting up to 0.3s for {path}, held by pid {holder.pid} (a test holder)")
        assert lines[-1] == (f"error: gave up after waiting 0.3s: {path} is still held by pid {holder.pid} (a test "
                             "holder); nothing was changed, run it again once that one has finished")
        assert run.stdout == ""
        assert sorted(p.name for p in cfg.output_folder_path.iterdir()) == [".writer.lock"]  # nothing changed
        rec = fullprocess.run_cycle(cfg)  # the cycle never waits: it leaves the work to the next one
        assert rec.to_dict() == {"decision": cycle.LOCKED, "errors": []}
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    if script == "ingestion.py":  # the kernel dropped the dead holder's lock: the script runs at once
        run = subprocess.run([sys.executable, str(REPO / script), "--config", str(cfg.path)], capture_output=True,
                             text=True, timeout=120)
        assert (run.returncode, run.stdout.splitlines()[0]) == (0, "ingested    a.csv (30 rows)")
        assert "waiting" not in run.stderr
