"""The writer lock (locks.py): re-entrant in a thread, exclusive across threads and processes, a
bounded wait that says whom it waits for, a one-line refusal, and no stale lock after a SIGKILL.

The tests marked `backends` run on both locks: the flock of an output folder (the SQLite history)
and the advisory lock of a PostgreSQL database (tests/pgserver.py's server)."""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
from conftest import REPO, write_delivery

import cycle
import fullprocess
import history
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


@pytest.fixture
def lock_at(backend, tmp_path, request):
    """Where a writer lock is: an output folder (a flock), or a fresh PostgreSQL database's URL."""
    if backend == "sqlite":
        return tmp_path
    return request.getfixturevalue("postgres").new_database()


def named(where, pid, what):
    """How the lock names its holder: the lock file's "pid N (WHAT)", the session's "... on HOST"."""
    return f"pid {pid} ({what})" + (f" on {socket.gethostname()}" if history.is_postgres(where) else "")


@pytest.mark.backends
def test_nested_in_one_thread_it_is_taken_again_and_names_the_outer_holder(lock_at, backend, request):
    with locks.writer(lock_at, "outer.py"):
        with locks.writer(lock_at, "inner.py", wait=0):
            if backend == "sqlite":
                assert (lock_at / ".writer.lock").read_text() == f"{os.getpid()} outer.py".ljust(79) + "\n"
            assert locks.holder(lock_at) == named(lock_at, os.getpid(), "outer.py")
        with pytest.raises(locks.Busy):  # ... but the cycle never runs inside another writer
            locks.acquire(lock_at, "fullprocess.py", reentrant=False)
        if backend == "postgresql":  # another database's lock is another lock
            locks.acquire(request.getfixturevalue("postgres").new_database(), "elsewhere")()
    thread, done = hold_in_thread(lock_at, 0)  # released: another thread takes it at once
    thread.join(10)
    assert locks.holder(lock_at) == ("an unknown process" if backend == "postgresql"
                                     else named(lock_at, os.getpid(), "a thread"))  # the file keeps the last name


@pytest.mark.backends
def test_another_thread_waits_saying_once_for_whom_then_runs(lock_at, caplog):
    thread, done = hold_in_thread(lock_at, 0.4)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="locks"):
        with locks.writer(lock_at, "waiter", wait=5):
            waited = time.monotonic() - started
    thread.join(10)
    assert 0.2 < waited < 5
    assert caplog.messages == [f"waiting up to 5s for {locks.describe(lock_at)}, held by "
                               f"{named(lock_at, os.getpid(), 'a thread')}"]


@pytest.mark.backends
def test_the_wait_runs_out_with_one_line_and_zero_refuses_at_once(lock_at):
    thread, done = hold_in_thread(lock_at, 30)
    who = named(lock_at, os.getpid(), "a thread")
    try:
        with pytest.raises(locks.Busy) as err:
            locks.acquire(lock_at, "waiter", wait=0.2)
        assert str(err.value) == (f"gave up after waiting 0.2s: {locks.describe(lock_at)} is still held by {who}; "
                                  "nothing was changed, run it again once that one has finished")
        with pytest.raises(locks.Busy) as err:
            locks.acquire(lock_at, "waiter")
        assert str(err.value) == f"another writer holds {locks.describe(lock_at)}: {who}"
    finally:
        done.set()
        thread.join(10)


RACER = """
import sys, time
import locks
with locks.writer(sys.argv[1], "racer", wait=60):
    with open(sys.argv[2], "a") as f:
        f.write(f"in {sys.argv[3]}\\n")
        f.flush()
        time.sleep(0.2)
        f.write(f"out {sys.argv[3]}\\n")
"""


@pytest.mark.backends
def test_processes_racing_for_it_take_it_one_at_a_time(lock_at, tmp_path):
    trace = tmp_path / "trace.txt"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(lock_at), str(trace), str(i)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}) for i in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    lines = trace.read_text().splitlines()
    assert sorted(lines[0::2]) == ["in 0", "in 1", "in 2"]
    assert lines[1::2] == [line.replace("in", "out") for line in lines[0::2]]  # never two inside at once


def test_a_killed_holder_of_the_advisory_lock_leaves_it_to_the_next(postgres):
    url = postgres.new_database()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert locks.holder(url) == named(url, holder.pid, "a test holder")
        with pytest.raises(locks.Busy):
            locks.acquire(url, "next")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    release = locks.acquire(url, "next", wait=10)  # the server dropped it with the dead holder's connection
    assert locks.holder(url) == named(url, os.getpid(), "next")
    release()


def test_an_unreachable_lock_server_is_a_failed_cycle_and_a_one_line_refusal(make_world):
    url = "postgresql://dras@127.0.0.1:9/dras"  # nothing listens on port 9
    cfg = make_world(history_url=url)
    reason = (f"cannot take the writer lock of {url}: connection failed: connection to server at \"127.0.0.1\", port "
              "9 failed: Connection refused Is the server running on that host and accepting TCP/IP connections?; "
              "nothing was changed, run it again once the database answers")
    rec = fullprocess.run_cycle(cfg).to_dict()  # not "locked": nobody holds it, nobody can
    assert (rec["decision"], rec["errors"]) == (cycle.FAILED, [reason])
    logged = json.loads((cfg.log_folder_path / "cycles.jsonl").read_text())
    assert (logged["decision"], logged["errors"]) == (cycle.FAILED, [reason])
    run = subprocess.run([sys.executable, str(REPO / "ingestion.py"), "--config", str(cfg.path)], capture_output=True,
                         text=True, timeout=120)
    assert (run.returncode, run.stdout, run.stderr.splitlines()[-1]) == (75, "", f"error: {reason}")


SCRIPTS = [("sqlite", s) for s in ("ingestion.py", "training.py", "scoring.py", "deployment.py")] + [
    ("postgresql", s) for s in ("ingestion.py", "deployment.py")]


@pytest.mark.parametrize(("backend", "script"), SCRIPTS, indirect=["backend"])
def test_a_script_gives_up_with_exit_75_and_a_killed_holder_leaves_no_lock(make_world, script):
    cfg = make_world(writer_wait_seconds=0.3)
    write_delivery(cfg, "a.csv", rows=30, seed=1)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(cfg.writer_lock)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        run = subprocess.run([sys.executable, str(REPO / script), "--config", str(cfg.path)], capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == locks.EXIT_BUSY == 75
        lines = run.stderr.splitlines()
        lock, who = locks.describe(cfg.writer_lock), named(cfg.writer_lock, holder.pid, "a test holder")
        assert lines[-2].endswith(f"WARNING locks: waiting up to 0.3s for {lock}, held by {who}")
        assert lines[-1] == (f"error: gave up after waiting 0.3s: {lock} is still held by {who}; nothing was changed, "
                             "run it again once that one has finished")
        assert run.stdout == ""
        left = sorted(p.name for p in Path(cfg.output_folder_path).glob(".*")) if cfg.output_folder_path.exists() else []
        assert left == ([] if cfg.postgres else [".writer.lock"])  # nothing changed
        assert history.exists(cfg.history) is False
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


def test_a_writers_history_is_its_locks_session_and_never_outlives_the_lock(postgres):
    """With PostgreSQL a writer's history connections use the lock's own session: one connection per
    writer, and no write to the history once the lock is gone (the session dropped: no reconnect)."""
    url = postgres.new_database()
    locked_by = ("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = ? AND objid = ?")
    with locks.writer(url, "writer.py"):
        with closing(history.connect(url)) as conn:
            me = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            assert [r[0] for r in conn.execute(locked_by, (history.LOCK_CLASS, history.WRITER_LOCK))] == [me]
        assert locks.holder(url) == named(url, os.getpid(), "writer.py")  # closing it kept the lock
        with closing(history.connect(url)) as conn:
            postgres.sql(f"SELECT pg_terminate_backend({me})")
            for _ in range(2):
                with pytest.raises(history.OperationalError):
                    conn.execute("INSERT INTO step_timings (at, step, seconds) VALUES (?, ?, ?)", (1.0, "late", 1.0))
    with closing(history.connect(url)) as conn:  # outside the lock: a session of its own
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] != me
        assert conn.execute("SELECT count(*) FROM step_timings").fetchone()[0] == 0
