"""The writer lock: one process at a time changes the ingested data, the history or the deployment.

Taken for its whole work by every entry point that writes: ingestion, training, scoring,
deployment and rollback, the cycle (cron or the daemon). Where it lives is the config's
`writer_lock`: with the SQLite history, an exclusive flock on output_folder_path/.writer.lock,
which the kernel drops when its holder dies, however it dies (SIGKILL included); with PostgreSQL,
a session advisory lock (pg_advisory_lock) on a connection of its own, which every host sharing
the database sees and the server drops with the connection when its holder dies. Either way no
stale lock is ever left. It is re-entrant within one thread: the cycle holds it and calls ingest,
train, score and deploy in-process. Its holder names itself (pid and entry point: in the file, or
as the session's application_name), so a process that finds it taken can say whom it waits for.
"""
import fcntl
import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import history

logger = logging.getLogger(__name__)

LOCK_NAME = ".writer.lock"
# sysexits.h's EX_TEMPFAIL: nothing was changed and the same command will work later. Not 2 (a bad
# config or option: fix something) and not 1 (the step ran and failed).
EXIT_BUSY = 75
POLL_SECONDS = 0.05
_WIDTH = 80  # the holder line is padded to a fixed width: rewritten in place, never truncated
_held = threading.local()  # per thread: lock path (or URL) -> nesting depth
_KEY = (history.LOCK_CLASS, history.WRITER_LOCK)  # pg_advisory_lock(int, int): pg_locks' classid, objid


class Busy(Exception):
    """Another writer holds the lock, and the wait for it (if any) ran out."""

    def __init__(self, message, holder=None):
        super().__init__(message)
        self.holder = holder


class Unreachable(Busy):
    """The PostgreSQL server that keeps the lock cannot be reached: nothing was changed either."""


def lock_path(folder) -> Path:
    return Path(folder) / LOCK_NAME


def describe(where) -> str:
    """The lock at `where` (an output folder or a postgresql URL), as the messages name it."""
    if history.is_postgres(where):
        return f"the writer lock of {where}"
    return str(lock_path(where))


def holder(where, session=None) -> str:
    """Who holds the lock: "pid N (WHAT)" as its file says, "pid N (WHAT) on HOST" as the holding
    PostgreSQL session names itself (asked on `session`, or a connection of its own), or "an unknown
    process"."""
    if history.is_postgres(where):
        return _advisory_holder(where, session)
    try:
        pid, _, what = lock_path(where).read_text(encoding="utf-8").strip().partition(" ")
    except (OSError, UnicodeDecodeError):
        return "an unknown process"
    return f"pid {pid} ({what})" if pid.isdigit() else "an unknown process"


def _depths() -> dict:
    if not hasattr(_held, "depths"):
        _held.depths = {}
    return _held.depths


def acquire(where, what, wait=0.0, reentrant=True):
    """Take the writer lock at `where` (the config's writer_lock: an output folder, or the postgresql
    URL of the history) for entry point `what`; return its release.

    Held already by this thread: taken again at once (unless not `reentrant`: the cycle never
    runs inside another writer). Held by another process or thread: wait up to `wait` seconds,
    logging once whom for; raise Busy, with a one-line reason, when the wait runs out (at once
    when `wait` is 0); Unreachable when the PostgreSQL server does not answer.
    """
    postgres = history.is_postgres(where)
    if postgres:
        key = where
    else:
        folder = Path(where)
        folder.mkdir(parents=True, exist_ok=True)
        key = str(lock_path(folder).resolve())
    depths = _depths()
    if key in depths:
        if not reentrant:
            who = holder(where)
            raise Busy(f"{describe(where)} is held by this process ({who})", who)
        depths[key] += 1

        def release_nested():
            depths[key] -= 1
        return release_nested
    drop = _advisory(where, what, wait) if postgres else _file_lock(folder, what, wait)
    depths[key] = 1

    def release():
        del depths[key]
        drop()
    return release


def _file_lock(folder, what, wait):
    fd = os.open(lock_path(folder), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _wait(folder, wait, lambda: _try_flock(fd))
        os.pwrite(fd, f"{os.getpid()} {what}"[:_WIDTH - 1].ljust(_WIDTH - 1).encode() + b"\n", 0)
    except BaseException:
        os.close(fd)
        raise
    return lambda: os.close(fd)  # drops the flock


def _try_flock(fd):
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _advisory(url, what, wait):
    """The session advisory lock, on a connection of its own held until the release."""
    try:
        session = history.PgConnection(history.pg_session(url, what, keepalive=True))
        try:
            _wait(url, wait, lambda: session.execute("SELECT pg_try_advisory_lock(?, ?)", _KEY).fetchone()[0],
                  session)
        except BaseException:
            session.close()
            raise
    except history.Error as exc:
        raise Unreachable(f"cannot take {describe(url)}: {exc}; nothing was changed, run it again once the "
                          "database answers") from None
    # The holder's history connections use this session too: one connection, and no write to the
    # history that outlives the lock (a dropped session fails them, never reconnects).
    history.lend(url, session)

    def release():
        history.take_back(url)
        try:
            # Released before the close returns: a closed session's locks are dropped by the server
            # once it notices, so a writer asking right after could still find it held.
            session.execute("SELECT pg_advisory_unlock(?, ?)", _KEY).fetchone()
        except history.Error:
            pass  # the session is gone already, and the lock with it
        finally:
            session.close()
    return release


def _advisory_holder(url, session=None):
    own = session is None
    try:
        session = session or history.PgConnection(history.pg_session(url, "locks.holder"))
        try:
            row = session.execute(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = ? AND l.objid = ?"
                " AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                _KEY).fetchone()
        finally:
            if own:
                session.close()
    except history.Error:  # only a message: the holder is unknown
        return "an unknown process"
    return row[0] if row and row[0] else "an unknown process"


@contextmanager
def writer(where, what, wait=0.0, reentrant=True):
    """The writer lock held for the block (see `acquire`)."""
    release = acquire(where, what, wait, reentrant)
    try:
        yield
    finally:
        release()


def _wait(where, wait, take, session=None):
    """Call `take` (True: got it) every POLL_SECONDS until it succeeds or `wait` seconds have passed;
    the holder is asked only to be named (when giving up, and once in the log)."""
    deadline = time.monotonic() + wait
    said = False
    while not take():
        if wait <= 0:
            who = _named_holder(where, session)
            raise Busy(f"another writer holds {describe(where)}: {who}", who)
        if time.monotonic() >= deadline:
            who = _named_holder(where, session)
            raise Busy(f"gave up after waiting {wait:g}s: {describe(where)} is still held by {who}; "
                       "nothing was changed, run it again once that one has finished", who)
        if not said:
            logger.warning("waiting up to %gs for %s, held by %s", wait, describe(where),
                           _named_holder(where, session))
            said = True
        time.sleep(POLL_SECONDS)


def _named_holder(where, session, tries=10):
    """holder(), asked again for a moment while it is unknown: a writer that has just taken the lock
    names itself a moment later (a new lock file is empty until then)."""
    who = holder(where, session)
    for _ in range(tries):
        if who != "an unknown process":
            break
        time.sleep(POLL_SECONDS / 2)
        who = holder(where, session)
    return who
