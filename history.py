"""The history database: one SQLite file recording what the system ingested, scored and deployed.

Every step appends here; the report draws its trends from it. WAL mode, so readers
(the API, the report) never block a writer.
"""
import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

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
"""


def connect(path) -> sqlite3.Connection:
    """Open (creating if needed) the history database at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    _upgrade(conn)
    return conn


# Columns added to a table after it was first made: a database made by an older version gains them
# at its next `connect`. The hash cache gained inode and ctime (which no `utime` call can set); its
# old rows, NULL there, are never trusted and so hashed again. A summary gained finaldata.csv's
# length after its ingestion (finaldata.py), NULL in the rows of before, which the next ingestion fills.
UPGRADES = (("file_hashes", "inode", "INTEGER"), ("file_hashes", "ctime_ns", "INTEGER"),
            ("summaries", "bytes", "INTEGER"))


def _upgrade(conn):
    """Add UPGRADES' columns to a database made before them."""
    for table, column, kind in UPGRADES:
        if column in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            continue
        try:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        except sqlite3.OperationalError as exc:  # another process upgraded it first
            if "duplicate column" not in str(exc):
                raise


def connect_ro(path):
    """The history database at `path` opened read-only, or None when there is none: a reader (a GET,
    the report's read-back) never creates or migrates it. Raises sqlite3.Error when it cannot be opened."""
    path = Path(path)
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    return conn


@contextmanager
def transaction(conn):
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


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
