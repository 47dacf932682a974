"""The history database: what the system ingested, scored and deployed, and what the API served.

Every step appends here; the report, the status page and the cycle draw on it. Where it lives is
config.json's `history_url`: absent (or `sqlite:///PATH`), one SQLite file in WAL mode, so readers
(the API, the report) never block a writer; `postgresql://USER@HOST:PORT/DBNAME`, a PostgreSQL
database that several hosts share. One code path for both: the modules write SQL that SQLite and
PostgreSQL both understand, with `?` placeholders, and a PostgreSQL connection here (psycopg2,
imported only for a postgresql URL) turns `?` into `%s`, returns each insert's `id` as `lastrowid`
and raises this module's `Error`s, as sqlite3 does. The schema is made and upgraded by `connect`.
The password never appears in history_url: libpq reads it from PGPASSWORD or ~/.pgpass.
"""
import json
import os
import re
import sqlite3
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from settings import POSTGRES_SCHEMES

SCHEMA = """
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL,
    inode INTEGER, ctime_ns INTEGER
);
CREATE TABLE IF NOT EXISTS ingested_files (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE,
    rows INTEGER NOT NULL, folder TEXT NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantined_files (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, sha256 TEXT NOT NULL, reason TEXT NOT NULL,
    moved_to TEXT NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS summaries (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, rows INTEGER NOT NULL,
    stats TEXT NOT NULL, missing TEXT NOT NULL, bytes INTEGER
);
CREATE TABLE IF NOT EXISTS training_runs (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, rows INTEGER NOT NULL, data_sha256 TEXT NOT NULL,
    params TEXT NOT NULL, metrics TEXT NOT NULL, model_path TEXT NOT NULL, model_sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS scores (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, dataset TEXT NOT NULL, rows INTEGER NOT NULL,
    model_sha256 TEXT NOT NULL, f1 REAL NOT NULL, precision REAL NOT NULL, recall REAL NOT NULL,
    roc_auc REAL
);
CREATE TABLE IF NOT EXISTS deployments (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, version INTEGER NOT NULL, action TEXT NOT NULL,
    model_sha256 TEXT NOT NULL, f1 REAL
);
CREATE TABLE IF NOT EXISTS step_timings (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, step TEXT NOT NULL, seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS diagnostics (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cycles (
    id INTEGER PRIMARY KEY, started_at REAL NOT NULL, finished_at REAL, decision TEXT,
    record TEXT NOT NULL
);
-- the summary counts the decisions of a period (summary.period) without reading the records
CREATE INDEX IF NOT EXISTS cycles_by_start ON cycles (started_at, decision);
CREATE TABLE IF NOT EXISTS alerts (
    condition TEXT PRIMARY KEY, state TEXT NOT NULL, event TEXT NOT NULL, payload TEXT NOT NULL,
    changed_at REAL NOT NULL, memo TEXT NOT NULL, delivered INTEGER, tries INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, last_attempt_at REAL
);
CREATE TABLE IF NOT EXISTS drift_evidence (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, cycle_id INTEGER, deployment_id INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS traffic_windows (
    window_start REAL NOT NULL, window_seconds REAL NOT NULL, model_version INTEGER NOT NULL,
    worker TEXT NOT NULL, updated_at REAL NOT NULL, requests INTEGER NOT NULL, rows INTEGER NOT NULL,
    aggregates TEXT NOT NULL, host TEXT,
    PRIMARY KEY (window_start, model_version, worker)
);
CREATE INDEX IF NOT EXISTS traffic_windows_start ON traffic_windows (window_start);
"""
# Columns added to a table after it was first made: a database made by an older version gains them
# at its next `connect`. The hash cache gained inode and ctime (which no `utime` call can set); its
# old rows, NULL there, are never trusted and so hashed again. A summary gained finaldata.csv's
# length after its ingestion (finaldata.py), NULL in the rows of before, which the next ingestion fills.
# Traffic windows gained the host whose worker wrote them (several API hosts share one history);
# older rows, NULL there, are an unknown host's.
UPGRADES = (("file_hashes", "inode", "INTEGER"), ("file_hashes", "ctime_ns", "INTEGER"),
            ("summaries", "bytes", "INTEGER"), ("traffic_windows", "host", "TEXT"))

# The errors of either backend: a PostgreSQL connection raises these too (the driver's own error
# chained as the cause), so a caller names one set of exceptions.
Error = sqlite3.Error
OperationalError = sqlite3.OperationalError
IntegrityError = sqlite3.IntegrityError


def is_postgres(where) -> bool:
    """Whether `where` (a Config's `history`: a SQLite path or a postgresql URL) names PostgreSQL."""
    return isinstance(where, str) and where.startswith(POSTGRES_SCHEMES)


def connect(where, threads=False):
    """Open the history at `where` (a SQLite file's path, created if needed, or a postgresql URL),
    with its schema made or upgraded. `threads`: the connection may be used from another thread
    than its maker's (one at a time)."""
    if is_postgres(where):
        return _pg_connect(where)
    path = Path(where)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=not threads)
    conn.row_factory = sqlite3.Row
    _wal(conn)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    _upgrade(conn)
    return conn


def _wal(conn, seconds=30):
    """WAL mode. Its switch takes the file alone and SQLite's busy timeout does not wait for that:
    processes opening a new database at once (the API's workers, a cycle) try again for a while."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _upgrade(conn):
    """Add UPGRADES' columns to a SQLite database made before them."""
    columns = {}  # table -> its columns, asked once per table
    for table, column, kind in UPGRADES:
        if table not in columns:
            columns[table] = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column in columns[table]:
            continue
        try:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        except sqlite3.OperationalError as exc:  # another process upgraded it first
            if "duplicate column" not in str(exc):
                raise


def connect_ro(where):
    """The history at `where` opened read-only, or None when there is none yet: a reader (a GET,
    the report's read-back) never creates or migrates it. Raises Error when it cannot be opened."""
    if is_postgres(where):
        return _pg_connect(where, read_only=True)
    path = Path(where)
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    return conn


def exists(where) -> bool:
    """Whether the history at `where` has been made (by a first `connect`)."""
    if not is_postgres(where):
        return Path(where).exists()
    conn = connect_ro(where)
    if conn is None:
        return False
    conn.close()
    return True


def tables(conn) -> set:
    """The names of the tables in the history `conn` is open on."""
    if isinstance(conn, sqlite3.Connection):
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    return {r[0] for r in conn.execute(sql)}


@contextmanager
def transaction(conn):
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error: one writing transaction at a time."""
    if isinstance(conn, sqlite3.Connection):
        conn.execute("BEGIN IMMEDIATE")
    else:  # the transaction lock does what IMMEDIATE does: a second writer waits at BEGIN, never midway
        conn.execute(_PG_BEGIN, raw_sql=True)
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def upsert_sql(table, key, columns) -> str:
    """INSERT of `columns` into `table` that replaces the row with the same `key` (a tuple of
    columns): standard SQL both backends run (SQLite's `INSERT OR REPLACE` is SQLite's alone)."""
    update = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
            f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {update}")


# ---------------------------------------------------------------------------------------------
# PostgreSQL (history_url postgresql://...): psycopg2, imported only here. Not psycopg 3: its import
# (asyncio, importlib.metadata, ctypes, its ~90 modules) cost a cron-run cycle 1.7 times all the
# cycle's other imports (bench/results/postgres.md); psycopg2's C module costs a fifth of that.
# ---------------------------------------------------------------------------------------------

# Advisory lock keys (pg_advisory_lock(int, int)): one class for this system, one number per use.
LOCK_CLASS = 0x44524153  # "DRAS"
WRITER_LOCK = 1  # locks.py: the writer lock, a session lock held for a writer's whole work
TRANSACTION_LOCK = 2  # a transaction lock: one writing transaction (and one schema upgrade) at a time
_PG_BEGIN = f"BEGIN; SELECT pg_advisory_xact_lock({LOCK_CLASS}, {TRANSACTION_LOCK})"
# Tables whose rows have an id: an insert into one returns it (`RETURNING id`) as `lastrowid`.
_ID_TABLES = frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \(\s*id INTEGER PRIMARY KEY", SCHEMA))
_INSERT = re.compile(r"\s*INSERT\s+(OR\s+IGNORE\s+)?INTO\s+(\w+)", re.I)
_made = set()  # the URLs whose schema this process has made or checked


def pg_schema(schema=SCHEMA) -> str:
    """SCHEMA in PostgreSQL's types: REAL is 4 bytes there (a timestamp would lose its seconds),
    INTEGER 4 (a nanosecond mtime would overflow), and an id is an identity column."""
    schema = schema.replace("id INTEGER PRIMARY KEY", "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", re.sub(r"\bINTEGER\b", "BIGINT", schema))


@lru_cache(maxsize=512)
def pg_sql(sql) -> tuple:
    """(the statement in psycopg's form, whether it returns the new row's id)."""
    if "INSERT OR REPLACE" in sql.upper():
        raise ValueError("INSERT OR REPLACE is SQLite's alone: use history.upsert_sql")
    text = sql.replace("%", "%%").replace("?", "%s")
    insert = _INSERT.match(text)
    returning = False
    if insert:
        if insert.group(1):  # INSERT OR IGNORE
            text = f"{text[:insert.start(1)]}{text[insert.end(1):]} ON CONFLICT DO NOTHING"
        returning = insert.group(2) in _ID_TABLES and "RETURNING" not in text.upper()
        text += " RETURNING id" if returning else ""
    return text, returning


def application_name(what=None) -> str:
    """How a session names itself to the server (pg_stat_activity): "pid N (WHAT) on HOST"."""
    import socket  # lazy: SQLite's path never needs it

    what = what or Path(sys.argv[0]).name or "python"
    return f"pid {os.getpid()} ({what}) on {socket.gethostname()}"[:63]


def pg_session(url, what=None, read_only=False, keepalive=False):
    """A psycopg2 connection to `url` in autocommit, raising OperationalError in one line when it
    cannot be made. `keepalive`: the server drops the session (and its locks) within ~25 s of its
    host falling silent (a host that dies outright drops it at once, with its connection)."""
    import psycopg2  # lazy: only a postgresql history_url pays its import
    import psycopg2.extensions

    options = ["-c client_min_messages=warning", "-c lock_timeout=30s"]
    if read_only:
        options.append("-c default_transaction_read_only=on")
    if keepalive:
        options += ["-c tcp_keepalives_idle=10", "-c tcp_keepalives_interval=5", "-c tcp_keepalives_count=3"]
    try:
        raw = psycopg2.connect(url, connect_timeout=10, options=" ".join(options),
                               application_name=application_name(what))
    except psycopg2.Error as exc:  # libpq's words name the server, never the password
        raise OperationalError(f"connection failed: {one_line(exc)}") from exc
    raw.autocommit = True
    psycopg2.extensions.register_type(_numeric_type(), raw)
    return raw


@lru_cache(maxsize=1)
def _numeric_type():
    """NUMERIC read as SQLite gives it: sum() of integers an int, a fraction a float (never a Decimal,
    which neither the JSON records nor a format like `{n:,d}` take)."""
    import psycopg2.extensions

    def load(text, cursor):
        if text is None:
            return None
        return int(text) if text.lstrip("-").isdigit() else float(text)

    return psycopg2.extensions.new_type((1700,), "DRAS_NUMERIC", load)  # 1700: numeric's type oid


def one_line(exc) -> str:
    """A driver's message (libpq's span lines, with tabs) as one line."""
    return " ".join(str(exc).split())


def _pg_connect(url, read_only=False):
    lent = None if read_only else _lent.get((url, threading.get_ident()))
    if lent is not None:  # this thread holds the writer lock: its session serves the history too
        conn = PgConnection(lent._raw, owned=False)
    else:
        conn = PgConnection(pg_session(url, read_only=read_only), lambda: pg_session(url, read_only=read_only))
    try:
        if read_only:
            if conn.execute("SELECT to_regclass('ingested_files')").fetchone()[0] is None:
                conn.close()
                return None
        elif url not in _made:
            _make_schema(conn)
            _made.add(url)
    except BaseException:
        conn.close()
        raise
    return conn


@lru_cache(maxsize=1)
def _pg_schema_script():
    """(the schema and its upgrades in one transaction, its digest: the comment the made schema bears)."""
    import hashlib  # lazy: only a postgresql history pays for it

    upgrades = "".join(f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {c} {k};" for t, c, k in UPGRADES)
    body = f"{pg_schema()} {pg_schema(upgrades)}"
    digest = "dras schema " + hashlib.sha256(body.encode()).hexdigest()[:16]
    return f"{_PG_BEGIN}; {body} COMMENT ON TABLE ingested_files IS '{digest}'; COMMIT", digest


def _make_schema(conn):
    """Make or upgrade the schema, unless ingested_files' comment says it is this version's: one round
    trip either way (the transaction lock keeps two first connections from racing to make it)."""
    script, digest = _pg_schema_script()
    if conn.execute("SELECT obj_description(to_regclass('ingested_files'), 'pg_class')").fetchone()[0] != digest:
        conn.execute(script, raw_sql=True)


def lend(url, session):
    """The writer lock's `session` on `url` serves this thread's history connections while it is held."""
    _lent[(url, threading.get_ident())] = session


def take_back(url):
    _lent.pop((url, threading.get_ident()), None)


_lent = {}  # (url, thread): the writer lock's session, while that thread holds it


class Row(tuple):
    """A row read by index or by column name, like sqlite3.Row (`dict(row)` works too)."""

    __slots__ = ()
    names = ()

    def keys(self):
        return list(self.names)

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self.names.index(key))
        return tuple.__getitem__(self, key)


@lru_cache(maxsize=256)
def _row_class(names):
    return type("Row", (Row,), {"__slots__": (), "names": names})


class PgCursor:
    """What `execute` returns: fetchone, fetchall, iteration (rows by name too), and the inserted row's
    `lastrowid`."""

    def __init__(self, cur, returning):
        self._cur = cur
        self._row = _row_class(tuple(d.name for d in cur.description or ()))
        row = cur.fetchone() if returning else None
        self.lastrowid = row[0] if row else None  # none when ON CONFLICT DO NOTHING kept the old row
        self.rowcount = cur.rowcount

    def fetchone(self):
        row = self._cur.fetchone()
        return None if row is None else self._row(row)

    def fetchall(self):
        return list(map(self._row, self._cur.fetchall()))

    def __iter__(self):
        return map(self._row, self._cur)


class PgConnection:
    """The history on PostgreSQL, used as a sqlite3 connection in autocommit is: `?` placeholders,
    `lastrowid`, rows by name, this module's errors.

    A connection the server dropped (a restart, a network cut) fails its statement, and the next
    one opens a new session (with `reopen`; never for the writer lock's, whose lock went with it).
    A forked child disowns the connections it inherits: libpq would otherwise end the parent's
    session on the shared socket when the child's copy is closed. Not `owned`: the writer lock's
    session, lent to its holder's history connections (`lend`), which their close leaves open."""

    def __init__(self, raw, reopen=None, owned=True):
        self._raw, self._reopen, self._owned = raw, reopen, owned
        if owned:
            _live.add(self)
            _hook_fork()

    def _run(self, call):
        import psycopg2

        if self._raw is None:
            raise OperationalError("this PostgreSQL connection belongs to the process this one was forked from")
        if self._raw.closed and self._reopen is not None:  # dropped (a closed one has no `reopen`)
            self._raw = self._reopen()
        try:
            return call(self._raw.cursor())
        except psycopg2.IntegrityError as exc:
            raise IntegrityError(one_line(exc)) from exc
        except psycopg2.Error as exc:
            raise OperationalError(one_line(exc)) from exc

    def execute(self, sql, params=(), raw_sql=False):
        text, returning = (sql, False) if raw_sql else pg_sql(sql)

        def run(cur):
            cur.execute(text, None if raw_sql else tuple(params))  # None: no `%` taken as a placeholder
            return PgCursor(cur, returning)
        return self._run(run)

    def executemany(self, sql, seq):
        """`sql` once per item of `seq`, in as few round trips as psycopg2 can (execute_batch)."""
        from psycopg2.extras import execute_batch

        text, _ = pg_sql(sql)
        self._run(lambda cur: execute_batch(cur, text, [tuple(p) for p in seq]))

    def close(self):
        """Close the session (a borrowed one, the writer lock's, stays open for its holder)."""
        _live.discard(self)
        self._reopen = None
        if self._raw is not None and self._owned:
            self._raw.close()

    def _disown(self):
        """In a forked child: keep the inherited session from ever being ended from here."""
        raw, self._raw = self._raw, None
        if raw is not None and not raw.closed:
            null = os.open(os.devnull, os.O_RDWR)  # libpq's goodbye, when the copy is freed, goes nowhere
            os.dup2(null, raw.fileno())
            os.close(null)
            _disowned.append(raw)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_live = weakref.WeakSet()  # this process's open PostgreSQL connections
_disowned = []  # the copies a forked child inherited, kept (never freed, never used)
_fork_hooked = False


def _hook_fork():
    global _fork_hooked
    if not _fork_hooked:
        os.register_at_fork(after_in_child=lambda: [conn._disown() for conn in list(_live)])
        _fork_hooked = True


def ingested_hashes(conn) -> set:
    return {row[0] for row in conn.execute("SELECT sha256 FROM ingested_files")}


def ingested_names(conn) -> dict:
    """{sha256: the name the content was ingested under} (each content is ingested once)."""
    return {row[0]: row[1] for row in conn.execute("SELECT sha256, name FROM ingested_files")}


def ingested_files(conn) -> list:
    """Ingested files in the order they arrived, as dicts."""
    return [dict(r) for r in conn.execute("SELECT name, sha256, rows, folder, at FROM ingested_files ORDER BY id")]


def record_timing(conn, step, seconds, at=None):
    conn.execute("INSERT INTO step_timings (at, step, seconds) VALUES (?, ?, ?)",
                 (at or time.time(), step, float(seconds)))


def record_score(conn, dataset, rows, model_sha256, metrics, at=None):
    conn.execute(
        "INSERT INTO scores (at, dataset, rows, model_sha256, f1, precision, recall, roc_auc)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (at or time.time(), dataset, rows, model_sha256, metrics["f1"], metrics["precision"],
         metrics["recall"], metrics.get("roc_auc")),
    )


def record_json(conn, table, **values):
    """Insert a row whose dict/list values are stored as JSON text."""
    cols = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    args = [json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v for v in values.values()]
    cur = conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", args)
    return cur.lastrowid


def latest_summary(conn):
    row = conn.execute("SELECT at, rows, stats, missing FROM summaries ORDER BY id DESC LIMIT 1").fetchone()
    if row is None:
        return None
    return {"at": row["at"], "rows": row["rows"], "stats": json.loads(row["stats"]),
            "missing": json.loads(row["missing"])}
