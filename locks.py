"""The writer lock: one process at a time changes the ingested data, the history or the deployment.

An exclusive flock on output_folder_path/.writer.lock, taken for its whole work by every entry
point that writes: ingestion, training, scoring, deployment and rollback, the cycle (cron or the
daemon). The kernel drops it when its holder dies, however it dies (SIGKILL included), so no
stale lock is ever left. It is re-entrant within one thread: the cycle holds it and calls ingest,
train, score and deploy in-process. Its holder writes its pid and entry point into the file, so a
process that finds it taken can say whom it waits for.
"""
import fcntl
import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = ".writer.lock"
# sysexits.h's EX_TEMPFAIL: nothing was changed and the same command will work later. Not 2 (a bad
# config or option: fix something) and not 1 (the step ran and failed).
EXIT_BUSY = 75
POLL_SECONDS = 0.05
_WIDTH = 80  # the holder line is padded to a fixed width: rewritten in place, never truncated
_held = threading.local()  # per thread: lock path -> nesting depth


class Busy(Exception):
    """Another writer holds the lock, and the wait for it (if any) ran out."""


def lock_path(folder) -> Path:
    return Path(folder) / LOCK_NAME


def holder(folder) -> str:
    """Who holds the lock, as its file says: "pid N (WHAT)", or "an unknown process"."""
    try:
        pid, _, what = lock_path(folder).read_text(encoding="utf-8").strip().partition(" ")
    except (OSError, UnicodeDecodeError):
        return "an unknown process"
    return f"pid {pid} ({what})" if pid.isdigit() else "an unknown process"


def _depths() -> dict:
    if not hasattr(_held, "depths"):
        _held.depths = {}
    return _held.depths


def acquire(folder, what, wait=0.0, reentrant=True):
    """Take the writer lock of output folder `folder` for entry point `what`; return its release.

    Held already by this thread: taken again at once (unless not `reentrant`: the cycle never
    runs inside another writer). Held by another process or thread: wait up to `wait` seconds,
    logging once whom for; raise Busy, with a one-line reason, when the wait runs out (at once
    when `wait` is 0).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = lock_path(folder)
    key = str(path.resolve())
    depths = _depths()
    if key in depths:
        if not reentrant:
            raise Busy(f"{path} is held by this process ({holder(folder)})")
        depths[key] += 1

        def release_nested():
            depths[key] -= 1
        return release_nested
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _flock(fd, folder, wait)
        os.pwrite(fd, f"{os.getpid()} {what}"[:_WIDTH - 1].ljust(_WIDTH - 1).encode() + b"\n", 0)
    except BaseException:
        os.close(fd)
        raise
    depths[key] = 1

    def release():
        del depths[key]
        os.close(fd)  # drops the flock
    return release


@contextmanager
def writer(folder, what, wait=0.0, reentrant=True):
    """The writer lock held for the block (see `acquire`)."""
    release = acquire(folder, what, wait, reentrant)
    try:
        yield
    finally:
        release()


def _flock(fd, folder, wait):
    path = lock_path(folder)
    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if wait <= 0:
            raise Busy(f"another writer holds {path}: {holder(folder)}")
        if time.monotonic() >= deadline:
            raise Busy(f"gave up after waiting {wait:g}s: {path} is still held by {holder(folder)}; "
                       "nothing was changed, run it again once that one has finished")
        if not said:
            logger.warning("waiting up to %gs for %s, held by %s", wait, path, holder(folder))
            said = True
        time.sleep(POLL_SECONDS)
