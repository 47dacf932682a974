"""A changed file under an old name is a new delivery, even when whatever rewrote it kept its size and
restored its mtime (`cp -p`, `tar x`, `rsync -t`): the hash cache is keyed on what no `utime` call can
set, the inode and the ctime (issue 14)."""
import os
import time

import pytest
from helpers import columns, query, raw_sql, writing

import ingestion
from conftest import run_script, write_delivery


def rewrite_keeping_size_and_mtime(path):
    """Change one digit of the last row, in place; restore atime and mtime; return the new bytes."""
    st = path.stat()
    data = path.read_bytes()
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
    i = data.rindex(last) + last.index(b",") + 1  # the first digit of lastmonth_activity
    new = data[:i] + (b"1" if data[i:i + 1] != b"1" else b"2") + data[i + 1:]
    path.write_bytes(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    return new


@pytest.mark.backends
def test_a_same_size_rewrite_with_its_mtime_restored_is_a_new_delivery(world):
    path = write_delivery(world, "a.csv", rows=20, seed=1)
    time.sleep(1.1)  # older than the cache's one-second doubt: the first hash is cached
    first = run_script("ingestion.py", "--config", world.path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == "ingested    a.csv (20 rows)"
    assert query(world, "SELECT path, inode FROM file_hashes") == [(str(path), path.stat().st_ino)]
    new = rewrite_keeping_size_and_mtime(path)
    second = run_script("ingestion.py", "--config", world.path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == ["ingested    a.csv (20 rows)", f"{world.finaldata}: 21 distinct rows"]
    changed = new.rstrip(b"\n").rsplit(b"\n", 1)[1].decode()
    assert world.finaldata.read_text().splitlines().count(changed) == 1
    third = run_script("ingestion.py", "--config", world.path)
    assert third.stdout.splitlines() == ["already in  a.csv", f"{world.finaldata}: 21 distinct rows"]


@pytest.mark.backends
def test_an_old_history_database_is_upgraded_and_its_cache_not_trusted(world):
    """A database written before the cache knew inodes: its rows (path, size, mtime only) are
    hashed again once, and the table gains the new columns."""
    path = write_delivery(world, "a.csv", rows=20, seed=1)
    st = path.stat()
    world.history_db.parent.mkdir(parents=True)
    raw_sql(world.history, ["CREATE TABLE file_hashes (path TEXT PRIMARY KEY, size BIGINT NOT NULL,"
                            " mtime_ns BIGINT NOT NULL, sha256 TEXT NOT NULL)",
                            f"INSERT INTO file_hashes VALUES ('{path}', {st.st_size}, {st.st_mtime_ns}, '{'0' * 64}')"])
    with writing(world) as conn:
        assert columns(world, "file_hashes") == ["path", "size", "mtime_ns", "sha256", "inode", "ctime_ns"]
        assert ingestion.file_sha256(conn, path) == ingestion.atomicfiles.sha256_file(path)


def test_a_file_changed_within_a_second_of_hashing_is_not_cached(world):
    """The ctime ticks coarsely: a file hashed right after a change could change again under the same
    ctime, so its hash is computed again next time, not cached."""
    path = write_delivery(world, "a.csv", rows=5, seed=1)
    with writing(world) as conn:
        assert ingestion.file_sha256(conn, path) == ingestion.atomicfiles.sha256_file(path)
        assert conn.execute("SELECT COUNT(*) FROM file_hashes").fetchone()[0] == 0
