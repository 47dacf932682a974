"""The history database on both backends (history.py): one code path for SQLite and a real PostgreSQL.

Each test marked `backends` runs twice: on a SQLite file and on a fresh database of the session's
PostgreSQL server (tests/pgserver.py). The values, ids, rows, errors and transactions must be the same.
"""
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import closing

import pytest
from conftest import CLOSED_INDEX, REPO, new_world, write_delivery
from helpers import raw_sql

import history

pytestmark = pytest.mark.backends

TABLES = {"file_hashes", "ingested_files", "quarantined_files", "summaries", "training_runs", "scores",
          "deployments", "step_timings", "diagnostics", "cycles", "alerts", "drift_evidence", "traffic_windows"}
HASHES = history.upsert_sql("file_hashes", ("path",), ("path", "size", "mtime_ns", "inode", "ctime_ns", "sha256"))


@pytest.fixture
def where(backend, tmp_path, request):
    """Where a fresh history is: a SQLite file's path, or a new PostgreSQL database's URL."""
    if backend == "sqlite":
        return tmp_path / "history.sqlite"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def conn(where):
    with closing(history.connect(where)) as c:
        yield c


def test_nothing_is_there_until_the_first_connect_makes_every_table(where):
    assert history.connect_ro(where) is None and history.exists(where) is False
    with closing(history.connect(where)) as c:
        assert history.tables(c) == TABLES
    assert history.exists(where) is True
    with closing(history.connect_ro(where)) as ro:
        assert history.tables(ro) == TABLES


def test_values_round_trip_exactly(conn):
    """A timestamp keeps its microseconds (PostgreSQL's REAL would round it to 4 bytes), a nanosecond
    mtime and a large inode their digits (its INTEGER would overflow), text its `%` and `?`."""
    at, mtime_ns, inode = 1796185281.3762608, 1_796_185_281_376_260_812, 2**40 + 3
    conn.execute(HASHES, ("/data/50% done? yes.csv", 12, mtime_ns, inode, mtime_ns + 1, "ab" * 32))
    history.record_json(conn, "diagnostics", at=at, kind="all", value={"é": [1, None], "q": "what?"})
    assert [tuple(r) for r in conn.execute("SELECT * FROM file_hashes")] == [
        ("/data/50% done? yes.csv", 12, mtime_ns, "ab" * 32, inode, mtime_ns + 1)]
    assert [tuple(r) for r in conn.execute("SELECT id, at, kind, value FROM diagnostics WHERE kind = ?", ("all",))] == [
        (1, at, "all", '{"q": "what?", "\\u00e9": [1, null]}')]
    assert conn.execute("SELECT count(*), max(at), min(id) FROM diagnostics").fetchone()[:] == (1, at, 1)


def test_aggregates_are_ints_and_floats_as_sqlite_gives_them(conn):
    """PostgreSQL's sum() of integers and avg() are NUMERIC: read as an int and a float, never a Decimal."""
    for rows in (3, 4):
        history.record_json(conn, "ingested_files", name=f"{rows}.csv", sha256=str(rows), rows=rows, folder="in",
                            at=float(rows))
    got = conn.execute("SELECT sum(rows), avg(rows), coalesce(sum(rows), 0), count(*), sum(at) FROM ingested_files"
                       " WHERE at > ?", (0,)).fetchone()
    assert [(v, type(v)) for v in got] == [(7, int), (3.5, float), (7, int), (2, int), (7.0, float)]
    assert f"{got[0]:,d} rows" == "7 rows"


def test_each_insert_returns_its_id_and_rows_read_by_name_or_index(conn):
    ids = [history.record_json(conn, "deployments", at=float(i), version=i, action="deploy", model_sha256=f"m{i}",
                               f1=None if i == 2 else 0.5) for i in (1, 2, 3)]
    assert ids == [1, 2, 3]
    assert conn.execute("INSERT INTO cycles (started_at, record) VALUES (?, ?)", (1.0, "{}")).lastrowid == 1
    row = conn.execute("SELECT version, f1, model_sha256 FROM deployments WHERE id = ?", (2,)).fetchone()
    assert (row[0], row["f1"], row["model_sha256"], row.keys(), dict(row)) == (
        2, None, "m2", ["version", "f1", "model_sha256"], {"version": 2, "f1": None, "model_sha256": "m2"})
    assert conn.execute("SELECT id FROM deployments WHERE id > ?", (5,)).fetchone() is None


def test_an_upsert_replaces_the_row_and_insert_or_ignore_keeps_it(conn):
    conn.execute(HASHES, ("a.csv", 1, 10, 100, 1000, "old"))
    conn.execute(HASHES, ("a.csv", 2, 20, None, 2000, "new"))
    assert [tuple(r) for r in conn.execute("SELECT * FROM file_hashes")] == [("a.csv", 2, 20, "new", None, 2000)]
    history.record_json(conn, "ingested_files", name="a.csv", sha256="s1", rows=3, folder="in", at=1.0)
    again = conn.execute("INSERT OR IGNORE INTO ingested_files (name, sha256, rows, folder, at) VALUES (?, ?, ?, ?, ?)",
                         ("b.csv", "s1", 9, "in", 2.0))
    assert again.lastrowid in (None, 1)  # SQLite keeps its last id; PostgreSQL returns no row
    assert [tuple(r) for r in conn.execute("SELECT id, name, rows FROM ingested_files")] == [(1, "a.csv", 3)]


def test_a_failed_transaction_leaves_nothing_and_raises_the_same_error(conn):
    history.record_json(conn, "ingested_files", name="a.csv", sha256="s1", rows=3, folder="in", at=1.0)
    with pytest.raises(history.IntegrityError):
        with history.transaction(conn):
            history.record_timing(conn, "ingestion", 1.5)
            history.record_json(conn, "ingested_files", name="again.csv", sha256="s1", rows=3, folder="in", at=2.0)
    assert conn.execute("SELECT count(*) FROM step_timings").fetchone()[0] == 0
    with history.transaction(conn):  # the connection goes on
        history.record_timing(conn, "ingestion", 2.5, at=3.0)
    assert [tuple(r) for r in conn.execute("SELECT at, step, seconds FROM step_timings")] == [(3.0, "ingestion", 2.5)]


def test_a_reader_cannot_write_and_a_missing_table_is_an_operational_error(where, conn, backend):
    with closing(history.connect_ro(where)) as ro:
        with pytest.raises(history.OperationalError) as err:
            ro.execute("INSERT INTO step_timings (at, step, seconds) VALUES (?, ?, ?)", (1.0, "x", 1.0))
        assert str(err.value) == {"sqlite": "attempt to write a readonly database",
                                  "postgresql": "cannot execute INSERT in a read-only transaction"}[backend]
        with pytest.raises(history.OperationalError) as err:
            ro.execute("SELECT * FROM nothing_here")
        assert str(err.value) == {"sqlite": "no such table: nothing_here",
                                  "postgresql": 'relation "nothing_here" does not exist LINE 1: SELECT * FROM '
                                                'nothing_here ^'}[backend]
        assert ro.execute("SELECT count(*) FROM cycles").fetchone()[0] == 0  # and reads on


def test_a_database_made_before_the_new_columns_gains_them(where):
    raw_sql(where, ["CREATE TABLE file_hashes (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
                " sha256 TEXT NOT NULL)", "INSERT INTO file_hashes VALUES ('a.csv', 1, 2, 'h')"])
    with closing(history.connect(where)) as c:
        assert [tuple(r) for r in c.execute("SELECT * FROM file_hashes")] == [("a.csv", 1, 2, "h", None, None)]
        assert history.tables(c) == TABLES
    with closing(history.connect(where)) as c:  # a second connect changes nothing
        assert [r.keys() for r in c.execute("SELECT * FROM file_hashes")] == [
            ["path", "size", "mtime_ns", "sha256", "inode", "ctime_ns"]]


def test_writing_transactions_wait_for_each_other(where, conn):
    """BEGIN IMMEDIATE on SQLite, a transaction lock on PostgreSQL: a second writer waits at its BEGIN
    until the first commits, so a read-then-write (alerts.change) never acts on a stale read."""
    order = []

    def second():
        with closing(history.connect(where)) as other, history.transaction(other):
            order.append("second in")
            history.record_timing(other, "second", 1.0, at=2.0)

    with history.transaction(conn):
        order.append("first in")
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)  # time for the second to reach its BEGIN (and, were it not held there, get past it)
        history.record_timing(conn, "first", 1.0, at=1.0)
        order.append("first out")
    thread.join(30)
    assert order == ["first in", "first out", "second in"]
    assert [r[0] for r in conn.execute("SELECT step FROM step_timings ORDER BY id")] == ["first", "second"]


FIRST_CONNECT = """
import sys, time
import history
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
history.connect(sys.argv[1]).close()
print("made")
"""


def test_first_connections_at_once_all_make_the_same_schema(where):
    start_at = str(time.time() + 1.0)
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_CONNECT, str(where), start_at], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [(p.returncode, out) for p, (out, _) in zip(procs, outs)] == [(0, "made\n")] * 4, outs
    with closing(history.connect_ro(where)) as ro:
        assert history.tables(ro) == TABLES


@pytest.mark.parametrize(("sql", "pg"), [
    ("SELECT a FROM t WHERE b = ? AND c LIKE 'x%'", ("SELECT a FROM t WHERE b = %s AND c LIKE 'x%%'", False)),
    ("INSERT INTO cycles (started_at, record) VALUES (?, ?)",
     ("INSERT INTO cycles (started_at, record) VALUES (%s, %s) RETURNING id", True)),
    ("INSERT INTO traffic_windows (a) VALUES (?)", ("INSERT INTO traffic_windows (a) VALUES (%s)", False)),
    ("INSERT OR IGNORE INTO ingested_files (name) VALUES (?)",
     ("INSERT INTO ingested_files (name) VALUES (%s) ON CONFLICT DO NOTHING RETURNING id", True)),
])
def test_the_statements_in_psycopg_form(sql, pg):
    assert history.pg_sql(sql) == pg


def test_insert_or_replace_is_refused_for_postgresql():
    with pytest.raises(ValueError, match="^INSERT OR REPLACE is SQLite's alone: use history.upsert_sql$"):
        history.pg_sql("INSERT OR REPLACE INTO alerts (condition) VALUES (?)")


def test_the_password_comes_from_the_environment_and_is_never_written(postgres, tmp_path, monkeypatch, capfd):
    """history_url holds no password: libpq takes it from PGPASSWORD or a PGPASSFILE (~/.pgpass), and
    nothing the system writes (logs, cycle records, the history, the outputs) ever holds it."""
    from pgserver import PASSWORD_USER

    import fullprocess
    from helpers import stand_in

    url = postgres.new_database(owner=PASSWORD_USER)
    cfg = new_world(tmp_path, history_url=url, package_index_url=CLOSED_INDEX)
    write_delivery(cfg, "first.csv", rows=200, seed=1)
    monkeypatch.setattr(fullprocess, "publish", stand_in)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-file"))
    assert fullprocess.main(["--config", str(cfg.path)]) == 1
    port = url.split(":")[2].split("/")[0]
    assert json.loads((cfg.log_folder_path / "cycles.jsonl").read_text())["errors"] == [
        f'cannot take the writer lock of {url}: connection failed: connection to server at "127.0.0.1", port {port} '
        "failed: fe_sendauth: no password supplied; nothing was changed, run it again once the database answers"]
    monkeypatch.setenv("PGPASSWORD", "not-" + postgres.password)
    assert fullprocess.main(["--config", str(cfg.path)]) == 1
    assert json.loads((cfg.log_folder_path / "cycles.jsonl").read_text().splitlines()[-1])["errors"][0].endswith(
        f'failed: FATAL: password authentication failed for user "{PASSWORD_USER}"; nothing was changed, run it '
        "again once the database answers")
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    assert fullprocess.main(["--config", str(cfg.path)]) == 0
    monkeypatch.delenv("PGPASSWORD")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{port}:*:{PASSWORD_USER}:{postgres.password}\n")
    pgpass.chmod(0o600)  # libpq ignores a password file others can read
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    assert fullprocess.main(["--config", str(cfg.path)]) == 0
    decisions = [json.loads(line)["decision"] for line in (cfg.log_folder_path / "cycles.jsonl").read_text().splitlines()]
    assert decisions == ["failed", "failed", "cold start: deployed", "no new data"]
    # Nowhere written: every file of the world (the password file aside), every value of every table, stderr.
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != pgpass]
    assert len(written) > 20 and not [p for p in written if postgres.password.encode() in p.read_bytes()]
    with closing(history.connect_ro(url)) as ro:
        for table in history.tables(ro):
            assert postgres.password not in repr(ro.execute(f"SELECT * FROM {table}").fetchall()), table
    out, err = capfd.readouterr()
    assert url in err and postgres.password not in out + err


def test_a_dropped_session_is_reopened_by_the_next_statement(postgres):
    """An API worker's connection outlives a server restart or a network cut: the statement that meets
    the dead session fails (the flush says so and retries), the next one runs on a new session."""
    url = postgres.new_database()
    with closing(history.connect(url)) as conn:
        first = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        postgres.sql(f"SELECT pg_terminate_backend({first})")
        with pytest.raises(history.OperationalError) as err:
            conn.execute("SELECT 1")
        assert str(err.value) == ("server closed the connection unexpectedly This probably means the server "
                                  "terminated abnormally before or while processing the request.")
        assert conn.execute("SELECT count(*) FROM cycles").fetchone()[0] == 0
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] != first


def test_a_forked_child_never_ends_its_parents_session(postgres):
    """gunicorn forks its workers from a master that may hold a connection: a child closing (or
    freeing) the copy it inherited must not end the parent's session on their shared socket."""
    url = postgres.new_database()
    with closing(history.connect(url)) as conn:
        pid = os.fork()
        if pid == 0:  # the child: its copy is disowned, and closing it says nothing to the server
            try:
                conn.execute("SELECT 1")
            except history.OperationalError as exc:
                code = 0 if str(exc) == ("this PostgreSQL connection belongs to the process this one was "
                                         "forked from") else 3
            else:
                code = 4
            conn.close()
            os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
        assert conn.execute("SELECT count(*) FROM cycles").fetchone()[0] == 0
