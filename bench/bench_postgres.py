"""Benchmark of the history on PostgreSQL: the no-new-data cycle against the same cycle on SQLite, in one run.

    .venv/bin/python bench/bench_postgres.py [--runs 21]

Starts a PostgreSQL server of its own on a loopback port (tests/pgserver.py: Debian's binaries, a
temporary data folder), connects as a user with a password (scram-sha-256, given in PGPASSWORD, as
in production), and times whole `python fullprocess.py` processes, as cron runs them, alternately
on the two worlds so both meet the same machine load. Writes bench/results/postgres.md. Works in
bench/work/postgres/ (ignored by git).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from bench_cycle import last_record, wall, world  # noqa: E402
from pgserver import PASSWORD_USER, PostgresServer  # noqa: E402

WORK = REPO / "bench" / "work" / "postgres"
RESULTS = REPO / "bench" / "results" / "postgres.md"
PY = sys.executable


def timed(cmd):
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - started


def in_process(configs, runs):
    """Median seconds of one no-new-data cycle run in a process that has imported everything (as the
    daemon's cycles are), per world; each cycle opens its own session, as the daemon's do."""
    import logging

    import fullprocess
    from settings import load_config

    cfgs = {name: load_config(path) for name, path in configs.items()}
    times = {name: [] for name in cfgs}
    logging.disable(logging.CRITICAL)
    try:
        for _ in range(runs):
            for name, cfg in cfgs.items():
                started = time.perf_counter()
                assert fullprocess.run_cycle(cfg).decision == "no new data"
                times[name].append(time.perf_counter() - started)
    finally:
        logging.disable(logging.NOTSET)
    return {name: statistics.median(t) for name, t in times.items()}


def session_seconds(url, runs):
    """Median seconds to open and close a history session on `url` as a new process does (its schema's
    digest checked), psycopg already imported."""
    import history

    times = []
    for _ in range(runs):
        history._made.clear()
        started = time.perf_counter()
        history.connect(url).close()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args(argv)
    command = f"{Path(PY).relative_to(REPO) if Path(PY).is_relative_to(REPO) else PY} bench/bench_postgres.py"
    subprocess.run([PY, "-m", "compileall", "-q", "-l", str(REPO)], check=True, capture_output=True)
    server = PostgresServer.start()
    try:
        os.environ["PGPASSWORD"] = server.password  # as in production: never in the URL
        url = server.new_database(owner=PASSWORD_USER)
        configs = {"sqlite": world(WORK / "sqlite", 2000), "postgresql": world(WORK / "postgresql", 2000, history_url=url)}
        times = {name: [] for name in configs}
        for name, config in configs.items():
            subprocess.run([PY, str(REPO / "fullprocess.py"), "--config", str(config)], check=True, capture_output=True)
            assert last_record(config.parent)["decision"] == "no new data", name
        for _ in range(args.runs):  # alternately: both meet the same load
            for name, config in configs.items():
                times[name].append(timed([PY, str(REPO / "fullprocess.py"), "--config", str(config)]))
        for name, config in configs.items():
            assert last_record(config.parent)["decision"] == "no new data", name
        med = {name: statistics.median(t) for name, t in times.items()}
        low = {name: min(t) for name, t in times.items()}
        ratio = med["postgresql"] / med["sqlite"]
        plain, _ = wall([PY, "-c", "import fullprocess"], args.runs)
        with_driver, _ = wall([PY, "-c", "import fullprocess, psycopg"], args.runs)
        connect = session_seconds(url, args.runs * 3)
        daemon = in_process(configs, args.runs * 3)
    finally:
        server.stop()
    rows = [
        (f"no-new-data cycle, SQLite (median of {args.runs} processes)", f"{med['sqlite'] * 1000:.0f} ms "
         f"(min {low['sqlite'] * 1000:.0f})", "(the reference)", ""),
        (f"no-new-data cycle, PostgreSQL on loopback (median of {args.runs} processes)",
         f"{med['postgresql'] * 1000:.0f} ms (min {low['postgresql'] * 1000:.0f})", "",
         f"importing psycopg adds {(with_driver - plain) * 1000:.0f} ms to the cycle's imports "
         f"(`import fullprocess` {plain * 1000:.0f} ms, with psycopg {with_driver * 1000:.0f} ms); a connection with "
         f"its password (scram-sha-256) and schema check {connect * 1000:.1f} ms"),
        ("PostgreSQL / SQLite, whole processes (cron)", f"{ratio:.2f}x", "<= 2x", ""),
        (f"the same cycle in a process that has imported everything (the daemon's; median of {args.runs * 3})",
         f"SQLite {daemon['sqlite'] * 1000:.1f} ms, PostgreSQL {daemon['postgresql'] * 1000:.1f} ms", "",
         "PostgreSQL: the session (connection, password, the schema's digest checked) and 12 statements on "
         "loopback; SQLite: a file opened and the same statements"),
    ]
    for row in rows:
        print(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# The history on PostgreSQL", "",
             f"Produced by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
             "(a 2-core machine shared with other work: figures vary with its load; the two worlds are timed "
             "alternately, so both meet the same load).", "",
             "| figure | measured | goal | anchor (same run) |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines += ["", "Notes:", "",
              "- Both worlds hold the same 2,000-row delivery, deployed by a first cycle; each timed process is "
              "`python fullprocess.py --config ...` finding nothing new, as cron runs it every ten minutes, "
              "with the modules' bytecode cached.",
              "- With PostgreSQL the cycle opens one session: the writer lock's (a session advisory lock, held "
              "for the whole cycle), which its history connection uses too (the schema's digest checked in one "
              "query), on a server started by the benchmark with its own data folder (tests/pgserver.py), the "
              "password given in PGPASSWORD. psycopg is imported only for a postgresql history_url: the SQLite "
              "cycle's imports are unchanged.",
              "- Most of the whole-process difference is psycopg's import (it imports asyncio, ctypes and "
              "importlib.metadata, which the SQLite cycle never needs); a daemon (`fullprocess.py --daemon`) "
              "pays it once, at its start."]
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")
    shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
