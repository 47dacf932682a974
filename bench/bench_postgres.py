"""Benchmark of the history on PostgreSQL: the no-new-data cycle against the same cycle on SQLite, in one run.

    .venv/bin/python bench/bench_postgres.py [--runs 21]
        [--before DIR --before-python PY [--before-name NAME]]

Starts a PostgreSQL server of its own on a loopback port (tests/pgserver.py: Debian's binaries, a
temporary data folder), connects as a user with a password (scram-sha-256, given in PGPASSWORD, as
in production), and times whole `python fullprocess.py` processes, as cron runs them, alternately
on the worlds so all meet the same machine load. Then where the PostgreSQL cycle's milliseconds go
(interpreter, imports, the driver's import, the session, the statements and work), each part
measured on its own in the same run. `--before DIR`: the same cycle on PostgreSQL with the code in
DIR (e.g. an export of an earlier commit) run by PY (a Python with that code's requirements), timed
in turn with the others. Writes bench/results/postgres.md. Works in bench/work/postgres/ (ignored by git).
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

from bench_cycle import _load, last_record, wall, world  # noqa: E402
from pgserver import PASSWORD_USER, PostgresServer  # noqa: E402

WORK = REPO / "bench" / "work" / "postgres"
RESULTS = REPO / "bench" / "results" / "postgres.md"
PY = sys.executable
DRIVER = "psycopg2"  # what history.py imports for a postgresql history_url


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


def session_seconds(where, runs):
    """Median seconds to open and close a history session on `where` as a new process does (on
    PostgreSQL: a connection with its password, the schema's digest checked), the driver imported."""
    import history

    times = []
    for _ in range(runs):
        history._made.clear()
        started = time.perf_counter()
        history.connect(where).close()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cycle_cmd(python, code, config):
    return [python, str(Path(code) / "fullprocess.py"), "--config", str(config)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--before", help="a folder with earlier code, timed on PostgreSQL in the same run")
    parser.add_argument("--before-python", help="the Python that runs it (with that code's requirements)")
    parser.add_argument("--before-name", default="before", help="what to call that code in the table")
    args = parser.parse_args(argv)
    if bool(args.before) != bool(args.before_python):
        parser.error("--before and --before-python go together")
    command = f"{Path(PY).relative_to(REPO) if Path(PY).is_relative_to(REPO) else PY} bench/bench_postgres.py"
    if args.runs != 21:
        command += f" --runs {args.runs}"
    if args.before:
        command += f" --before {args.before} --before-python {args.before_python} --before-name '{args.before_name}'"
    subprocess.run([PY, "-m", "compileall", "-q", "-l", str(REPO)], check=True, capture_output=True)
    if args.before:
        subprocess.run([args.before_python, "-m", "compileall", "-q", "-l", args.before], check=True,
                       capture_output=True)
    loads = [_load()]
    server = PostgresServer.start()
    try:
        os.environ["PGPASSWORD"] = server.password  # as in production: never in the URL
        url = server.new_database(owner=PASSWORD_USER)
        configs = {"sqlite": world(WORK / "sqlite", 2000), "postgresql": world(WORK / "postgresql", 2000, history_url=url)}
        commands = {name: cycle_cmd(PY, REPO, config) for name, config in configs.items()}
        if args.before:  # its own database, made and deployed by this code's cold start (the same schema)
            before_url = server.new_database(owner=PASSWORD_USER)
            configs["before"] = world(WORK / "before", 2000, history_url=before_url)
            commands["before"] = cycle_cmd(args.before_python, args.before, configs["before"])
        for name, cmd in commands.items():
            subprocess.run(cmd, check=True, capture_output=True)
            assert last_record(configs[name].parent)["decision"] == "no new data", name
        times = {name: [] for name in commands}
        for _ in range(args.runs):  # alternately: all meet the same load
            for name, cmd in commands.items():
                times[name].append(timed(cmd))
        for name, config in configs.items():
            assert last_record(config.parent)["decision"] == "no new data", name
        med = {name: statistics.median(t) for name, t in times.items()}
        low = {name: min(t) for name, t in times.items()}
        bare, _ = wall([PY, "-c", "pass"], args.runs)
        plain, _ = wall([PY, "-c", "import fullprocess"], args.runs)
        with_driver, _ = wall([PY, "-c", f"import fullprocess, {DRIVER}"], args.runs)
        before_driver = None
        if args.before:
            first = f"import sys; sys.path[0] = {str(Path(args.before).resolve())!r}; import fullprocess"
            before_plain, _ = wall([args.before_python, "-c", first], args.runs)
            before_with, _ = wall([args.before_python, "-c", first + ", psycopg"], args.runs)
            before_driver = before_with - before_plain
        session = {"postgresql": session_seconds(url, args.runs * 3),
                   "sqlite": session_seconds(WORK / "sqlite" / "ingesteddata" / "history.sqlite", args.runs * 3)}
        daemon = in_process({k: configs[k] for k in ("sqlite", "postgresql")}, args.runs * 3)
    finally:
        server.stop()
    loads.append(_load())
    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    ratio = med["postgresql"] / med["sqlite"]
    rows = [
        (f"no-new-data cycle, SQLite (median of {args.runs} processes)",
         f"{med['sqlite'] * 1000:.0f} ms (min {low['sqlite'] * 1000:.0f})", "(the reference)"),
        (f"no-new-data cycle, PostgreSQL on loopback (median of {args.runs} processes)",
         f"{med['postgresql'] * 1000:.0f} ms (min {low['postgresql'] * 1000:.0f})", ""),
        ("PostgreSQL / SQLite, whole processes (cron)", f"{ratio:.2f}x", "<= 2x"),
    ]
    if args.before:
        rows.insert(2, (f"the same on PostgreSQL with {args.before_name} (median of {args.runs} processes, in turn "
                        "with the two above)", f"{med['before'] * 1000:.0f} ms (min {low['before'] * 1000:.0f}); "
                        f"{med['before'] / med['sqlite']:.2f}x SQLite; importing psycopg 3 adds "
                        f"{before_driver * 1000:.0f} ms to its imports", ""))
    rows.append((f"the same cycle in a process that has imported everything (the daemon's; median of {args.runs * 3})",
                 f"SQLite {ms(daemon['sqlite'])}, PostgreSQL {ms(daemon['postgresql'])}", ""))
    # Where the milliseconds go: each part measured on its own; the rest is what the parts leave
    # of the whole process (the cycle's own imports made at its run, the interpreter's exit).
    parts = {name: [("interpreter start (`python -c pass`)", bare),
                    ("the cycle's modules (`import fullprocess`, less the above)", plain - bare),
                    (f"the driver's import (`import {DRIVER}` after them)", with_driver - plain if name == "postgresql"
                     else 0.0),
                    ("the session: connect, password (scram-sha-256) and schema check on PostgreSQL; the file "
                     "opened, WAL and schema on SQLite", session[name]),
                    ("the cycle's statements and work (in-process cycle, less the session)",
                     daemon[name] - session[name])] for name in ("postgresql", "sqlite")}
    for name in parts:
        parts[name].append(("the rest (imports made during the run, the interpreter's exit; whole less the above)",
                            med[name] - sum(s for _, s in parts[name])))
    for row in rows:
        print(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# The history on PostgreSQL", "",
             f"Produced by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
             f"(a 2-core machine shared with other work, load average {loads[0]} at the start, {loads[1]} at the "
             "end: figures vary with it; the worlds are timed in turn, so all meet the same load).", "",
             "| figure | measured | goal |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "Where the milliseconds of one whole process go (the same run; medians, each part timed on its own):",
              "", "| part | PostgreSQL | SQLite | difference |", "|---|---|---|---|"]
    for (label, pg), (_, lite) in zip(parts["postgresql"], parts["sqlite"]):
        lines.append(f"| {label} | {ms(pg)} | {ms(lite)} | {ms(pg - lite)} |")
    lines.append(f"| whole process | {ms(med['postgresql'])} | {ms(med['sqlite'])} | "
                 f"{ms(med['postgresql'] - med['sqlite'])} |")
    lines += ["", "Notes:", "",
              "- Both worlds hold the same 2,000-row delivery, deployed by a first cycle; each timed process is "
              "`python fullprocess.py --config ...` finding nothing new, as cron runs it every ten minutes, "
              "with the modules' bytecode cached.",
              "- With PostgreSQL the cycle opens one session: the writer lock's (a session advisory lock, held "
              "for the whole cycle), which its history connection uses too (the schema's digest checked in one "
              "query), and runs 14 statements on it (the lock, the schema check, 11 reads, the unlock), on a "
              "server started by the benchmark with its own data folder (tests/pgserver.py), the password given "
              "in PGPASSWORD. The driver (psycopg2, its C module and prebuilt libpq) is imported only for a "
              "postgresql history_url: the SQLite cycle's imports are unchanged.",
              "- psycopg 3, the driver before (`--before`), imports asyncio, importlib.metadata and ctypes with "
              "its ~90 modules: 1.7 times all the cycle's other imports. In instructions (`valgrind "
              "--tool=callgrind .venv/bin/python -c 'import fullprocess, DRIVER'`, load-free): `import fullprocess` "
              "265 M, psycopg 3 458 M more (asyncio 97 M of it, importlib.metadata 76 M, ctypes.util 24 M, its "
              "own modules the rest), psycopg2 87 M more (its C module, libpq's libraries, and ssl, which it "
              "imports to share OpenSSL's set-up). So with psycopg 3 the cron-run cycle could not come under 2x "
              "even without those standard-library modules."]
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")
    shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
