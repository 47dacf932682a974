"""Helpers the test modules share beyond the world: a real gunicorn, the API's shapes, the cycle as a process.

The worlds themselves (config, data folders, a deployed model) and their fixtures are conftest.py's.
"""
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd
import requests
from conftest import REPO

import delivery
import deployment
import history
import ingestion
from settings import load_config

ROW = {"lastmonth_activity": 3, "lastyear_activity": 70, "number_of_employees": 12}
REFUSED = {"error": "filepath must be a relative path to a .csv file inside the data folders "
                    "(sourcedata, testdata, ingesteddata)"}


# --- a real gunicorn on a loopback port ------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url, proc, failure, seconds=30):
    """Until GET url/health answers; RuntimeError(failure()) when `proc` exits or `seconds` run out first."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            requests.get(url + "/health", timeout=5)
            return
        except requests.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(failure()) from None
            time.sleep(0.1)


@contextmanager
def gunicorn(cfg, workers=2, env=None, port=None, app=None):
    """Run `gunicorn -c gunicorn.conf.py` for cfg on a loopback port (free, unless given); yield its
    base URL; kill it. `app`, a WSGI app spec importable from the repo or tests/, replaces the real one."""
    port = port or free_port()
    log_path = cfg.base / f"gunicorn-{port}.log"
    log = open(log_path, "wb")
    extra = {"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])} if app else {}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py"), "--chdir", str(REPO),
         *([app] if app else [])],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PORT": str(port), "DRAS_CONFIG": str(cfg.path), "WEB_CONCURRENCY": str(workers),
             **extra, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url, proc, lambda: f"gunicorn did not start: {log_path.read_text()}")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def host_config(cfg, name, **changes):
    """A config file beside cfg's for another API host: the same folders and history, host_name `name`."""
    data = json.loads(cfg.path.read_text())
    path = cfg.base / f"config-{name}.json"
    path.write_text(json.dumps({**data, "host_name": name, **changes}))
    return load_config(path)


# --- a stand-in crontab and pgrep, first on PATH ------------------------------------------------------

FAKE_CRONTAB = """#!/bin/sh
# A stand-in for crontab(1): `crontab -l` prints the table, `crontab -` replaces it from stdin.
case "$1" in
  -l) [ -f "$CRONTAB_FILE" ] || { echo "no crontab for $(id -un)" >&2; exit 1; }; cat "$CRONTAB_FILE" ;;
  -) cat > "$CRONTAB_FILE.new" && mv "$CRONTAB_FILE.new" "$CRONTAB_FILE" ;;  # like crontab: read all, then replace
  *) echo "unexpected arguments: $*" >&2; exit 2 ;;
esac
"""
FAKE_PGREP = """#!/bin/sh
# A stand-in for pgrep(1): a cron daemon is running when $CRON_RUNNING is 1.
[ "$CRON_RUNNING" = 1 ]
"""


def fake_cron(root, table=None, running=True):
    """A stand-in crontab whose table is the file root/table (holding `table` when given) and, unless
    `running` is None, a stand-in pgrep saying a cron daemon runs (True) or not (False), in root/bin:
    the environment variables that put them first on PATH."""
    bindir = root / "bin"
    bindir.mkdir(exist_ok=True)
    for name, text in {"crontab": FAKE_CRONTAB, **({"pgrep": FAKE_PGREP} if running is not None else {})}.items():
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    if table is not None:
        (root / "table").write_text(table)
    return {"PATH": f"{bindir}:{os.environ['PATH']}", "CRONTAB_FILE": str(root / "table"),
            "CRON_RUNNING": "1" if running else "0"}


# --- the OpenAPI description ----------------------------------------------------------------------

def check_schema(value, schema, spec, where="$"):
    """A small JSON Schema check (the subset openapi.yaml uses); raises AssertionError naming the place."""
    if "$ref" in schema:
        node = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        return check_schema(value, node, spec, where)
    if "oneOf" in schema:
        return
    types = schema.get("type")
    if types is not None:
        types = types if isinstance(types, list) else [types]
        pytypes = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
                   "integer": int, "number": (int, float)}
        ok = any(isinstance(value, pytypes[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                 for t in types)
        assert ok, f"{where}: {value!r} is not {types}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        assert value >= schema.get("minimum", -np.inf), where
        assert value <= schema.get("maximum", np.inf), where
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key!r}"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                check_schema(item, props[key], spec, f"{where}.{key}")
            elif extra is False:
                raise AssertionError(f"{where}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                check_schema(item, extra, spec, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            check_schema(item, schema["items"], spec, f"{where}[{i}]")


def response_schema(spec, path, method, status):
    answer = spec["paths"][path][method]["responses"][str(status)]
    if "$ref" in answer:
        answer = spec["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    return answer["content"]["application/json"]["schema"]


# --- the cycle as real processes, `publish` replaced by a stand-in ---------------------------------

WRAPPER = """
import json, sys
import fullprocess

def publish(cfg, record):
    with open(cfg.output_folder_path / "published.jsonl", "a") as f:
        f.write(json.dumps({"version": record.deployed_version, "decision": record.decision}) + "\\n")
    return {"report": "stand-in", "apireturns": "stand-in"}

fullprocess.publish = publish
sys.exit(fullprocess.main(sys.argv[1:]))
"""


def cycle_cmd(cfg, *args):
    return [sys.executable, "-c", WRAPPER, "--config", str(cfg.path), *args]


def env():
    return {**os.environ, "PYTHONPATH": str(REPO)}


def run(cfg, *args, timeout=120):
    return subprocess.run(cycle_cmd(cfg, *args), cwd=cfg.base, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def published(cfg):
    path = cfg.output_folder_path / "published.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- the history as the tests read it: one way for both backends ------------------------------------

@contextmanager
def reading(cfg):
    """cfg's history opened read-only, SQLite or PostgreSQL alike (the product's own connect_ro), closed after."""
    conn = history.connect_ro(cfg.history)
    assert conn is not None, f"no history at {cfg.history}"
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def writing(cfg):
    """cfg's history opened to write, SQLite or PostgreSQL alike (the product's own connect: schema made,
    autocommit), closed after."""
    conn = history.connect(cfg.history)
    try:
        yield conn
    finally:
        conn.close()


def columns(cfg, table):
    """The names of `table`'s columns in cfg's history, in their order."""
    if cfg.postgres:
        sql = ("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
               " AND table_name = ? ORDER BY ordinal_position")
        return [r[0] for r in query(cfg, sql, (table,))]
    return [r[1] for r in query(cfg, f"PRAGMA table_info({table})")]


def query(cfg, sql, args=()):
    """The rows, as tuples, of one read of cfg's history (SQLite or PostgreSQL alike)."""
    with reading(cfg) as conn:
        return [tuple(r) for r in conn.execute(sql, args)]


def records(cfg, sql, args=()):
    """The rows, as dicts by column name, of one read of cfg's history (SQLite or PostgreSQL alike)."""
    with reading(cfg) as conn:
        return [dict(zip(r.keys(), r)) for r in conn.execute(sql, args)]


def raw_sql(where, statements):
    """Run SQL on the history at `where` (a SQLite path or a postgresql URL) without history.py, as an
    older version of the system would have: no schema made, no upgrade."""
    if history.is_postgres(where):
        import psycopg2

        conn = psycopg2.connect(where)
        try:
            conn.autocommit = True
            for statement in statements:
                conn.cursor().execute(statement)
        finally:
            conn.close()
    else:
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(where, isolation_level=None)) as conn:
            for statement in statements:
                conn.execute(statement)


def decisions(cfg):
    return query(cfg, "SELECT decision, finished_at IS NOT NULL FROM cycles ORDER BY id")


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_finaldata(cfg, names):
    frames = [delivery.parse_delivery((cfg.input_folder_path / n).read_bytes()) for n in names]
    return pd.concat(frames, ignore_index=True).drop_duplicates(ignore_index=True)


def assert_consistent(cfg, names):
    """finaldata, the history and production agree, whatever happened before."""
    final = ingestion.read_finaldata(cfg.finaldata)
    assert final.to_csv(index=False) == expected_finaldata(cfg, names).to_csv(index=False)
    files = query(cfg, "SELECT name, sha256 FROM ingested_files ORDER BY id")
    (summary_rows,), = query(cfg, "SELECT rows FROM summaries ORDER BY id DESC LIMIT 1")
    last, = query(cfg, "SELECT version, model_sha256 FROM deployments ORDER BY id DESC LIMIT 1")
    (unfinished,), = query(cfg, "SELECT count(*) FROM cycles WHERE finished_at IS NULL")
    assert files == [(n, sha(cfg.input_folder_path / n)) for n in names]
    assert summary_rows == len(final)
    assert unfinished == 0
    model, manifest = deployment.load_deployed(cfg.prod_deployment_path)
    current = deployment.current_dir(cfg.prod_deployment_path)
    for name, meta in manifest["files"].items():
        assert sha(current / name) == meta["sha256"], name
    assert last == (manifest["version"], manifest["files"]["trainedmodel.pkl"]["sha256"])
    return manifest


def stand_in(cfg, record):
    """The in-process twin of WRAPPER's publish."""
    with open(cfg.output_folder_path / "published.jsonl", "a") as f:
        f.write(json.dumps({"version": record.deployed_version, "decision": record.decision}) + "\n")
    return {"report": "stand-in", "apireturns": "stand-in"}


# --- the report's PDF, read back ------------------------------------------------------------------

def pdf_text(path):
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True,
                          check=True).stdout


def pdf_images(path):
    """(page, width, height) of each embedded image (not its transparency mask)."""
    out = subprocess.run(["pdfimages", "-list", str(path)], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines()[2:]]
    return [(int(r[0]), int(r[3]), int(r[4])) for r in rows if r[2] == "image"]


def table_row(text, label):
    """The cells after `label` on its line of the layout text."""
    m = re.search(rf"^\s*{re.escape(label)}\s{{2,}}(.*)$", text, re.M)
    assert m, f"no line starting with {label!r}"
    return re.split(r"\s{2,}", m.group(1).strip())
