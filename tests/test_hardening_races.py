"""Writers racing: every pairing of the entry points that write, as real processes, seeded start offsets.

The writers are ingestion.py, the cycle (fullprocess.py, `publish` replaced by a stand-in),
training.py, scoring.py, deployment.py and deployment.py --rollback. The issue's repro and the
daemon run as `python script.py` subprocesses; the pairing matrix runs each script's own `main`
in a child forked from a warm fork server (pandas and scikit-learn imported once: a child costs
a fraction of a second instead of the seconds of an interpreter's imports on a busy machine),
each a real process with its own lock, really racing the other. After each race the invariants
of README's "Reliability" must hold exactly: every file recorded as ingested has all its rows in
finaldata.csv exactly once, in the order of the history; ingestedfiles.txt says the same; the
history's last deployment is what `current` serves, its files match its manifest and its
recorded F1 is the model's; and nothing is lost (a file not yet ingested is ingested by the next
run).
"""
import hashlib
import itertools
import multiprocessing
import os
import random
import shutil
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import HEADER, REPO, build_world, retrain_and_deploy
from helpers import cycle_cmd, env, query, stand_in

import datagen
import delivery
import deployment
import fullprocess
import ingestion
import locks
import scoring
import training
from settings import load_config

SEED = 20261201
WAITING = "waiting up to 60s for "

FORKSERVER = multiprocessing.get_context("forkserver")
PRELOAD = ["pandas", "numpy", "scipy.stats", "sklearn.linear_model", "sklearn.pipeline", "sklearn.preprocessing",
           "sklearn.metrics", "fullprocess", "ingestion", "training", "scoring", "deployment", "drift", "audit"]


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ingested(cfg):
    return query(cfg, "SELECT name, sha256, folder FROM ingested_files ORDER BY id")


def check_invariants(cfg, delivered):
    """finaldata, ingestedfiles.txt, the history and production agree; `delivered` (path -> bytes)
    are each ingested once or still new; returns the names still new."""
    files = ingested(cfg)
    shas = [s for _, s, _ in files]
    assert len(shas) == len(set(shas)), "a content recorded twice"
    frames = [delivery.parse_delivery((Path(folder) / name).read_bytes()) for name, _, folder in files]
    for (name, digest, folder), df in zip(files, frames):
        assert sha(Path(folder) / name) == digest, name
    expected = pd.concat(frames, ignore_index=True).drop_duplicates(ignore_index=True)
    final = ingestion.read_finaldata(cfg.finaldata)
    assert final.to_csv(index=False) == expected.to_csv(index=False)
    assert cfg.ingested_list.read_text() == "".join(dict.fromkeys(n + "\n" for n, _, _ in files))
    assert query(cfg, "SELECT rows FROM summaries ORDER BY id DESC LIMIT 1") == [(len(final),)]
    last, = query(cfg, "SELECT version, model_sha256 FROM deployments ORDER BY id DESC LIMIT 1")
    assert query(cfg, "SELECT count(*) FROM cycles WHERE finished_at IS NULL") == [(0,)]
    model, manifest = deployment.load_deployed(cfg.prod_deployment_path)
    current = deployment.current_dir(cfg.prod_deployment_path)
    for name, meta in manifest["files"].items():
        assert sha(current / name) == meta["sha256"], name
    assert last == (manifest["version"], manifest["files"]["trainedmodel.pkl"]["sha256"])
    X, y = scoring.read_test_data(cfg.test_data_file)
    assert manifest["metrics"]["f1"] == scoring.score_model(model, X, y)["f1"]  # its score is its own
    for folder in (cfg.output_folder_path, cfg.output_model_path):
        assert sorted(p.name for p in folder.glob(".*.tmp")) == [], folder
    new = sorted(str(p) for p, data in delivered.items() if hashlib.sha256(data).hexdigest() not in shas)
    return new


def nothing_lost(cfg, delivered, folders):
    """The next ingestion of each folder takes what the race left: then every delivered file is in."""
    for folder in folders:
        ingestion.ingest(cfg, folder)
    assert check_invariants(cfg, delivered) == []


def rows_file(path, n, seed, shift=0):
    """`n` seeded rows, their activity moved by `shift` (feature drift: the cycle then retrains)."""
    df = datagen.generate(n, seed=seed)
    df["lastmonth_activity"] += shift
    df["lastyear_activity"] += 12 * shift
    df.to_csv(path, index=False)
    return path


# --- the repro, through the real scripts -------------------------------------------------

def script(cfg, name, *args):
    return [sys.executable, str(REPO / name), "--config", str(cfg.path), *args]


def popen(cmd):
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.backends
def test_a_large_ingestion_and_a_small_one_a_third_of_a_second_later_lose_nothing(make_world):
    """The issue's repro: 300,000 rows by hand, and 0.33 s later one row by hand, both through ingestion.py."""
    cfg = make_world(cv_folds=0)
    big, small = cfg.base / "big", cfg.base / "small"
    big.mkdir()
    small.mkdir()
    rows_file(big / "big.csv", 300_000, seed=5)
    (small / "small.csv").write_text(HEADER + "late arrival,1,2,3,1\n")
    first = popen(script(cfg, "ingestion.py", "--input-folder", big))
    time.sleep(0.33)
    second = popen(script(cfg, "ingestion.py", "--input-folder", small))
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    assert sorted(n for n, _, _ in ingested(cfg)) == ["big.csv", "small.csv"]
    final = ingestion.read_finaldata(cfg.finaldata)
    assert final[final["corporation"] == "late arrival"].to_dict("records") == [
        {"corporation": "late arrival", "lastmonth_activity": 1, "lastyear_activity": 2,
         "number_of_employees": 3, "exited": 1}]
    # whichever started its work second waited for the first, and said so once
    waited = [err for _, err in outs if "WARNING locks: " + WAITING in err]
    assert len(waited) == 1 and waited[0].count(WAITING) == 1
    holder = (first if waited[0] == outs[1][1] else second).pid
    assert f"{locks.describe(cfg.writer_lock)}, held by pid {holder} (ingestion.py)" in waited[0]
    expected = pd.concat([delivery.parse_delivery((Path(folder) / name).read_bytes())
                          for name, _, folder in ingested(cfg)], ignore_index=True).drop_duplicates(ignore_index=True)
    assert final.to_csv(index=False) == expected.to_csv(index=False)


# ingestion.py, paused after looking its rows up and before appending them to finaldata.csv, until
# the file `go` appears
PAUSED_INGESTION = """
import os, sys, time
import finaldata, ingestion

real = finaldata._append

def append(path, at, data):
    open("paused", "w").close()
    while not os.path.exists("go"):
        time.sleep(0.02)
    real(path, at, data)

finaldata._append = append
sys.exit(ingestion.main(sys.argv[1:]))
"""


def held_by(cfg, pid, what):
    """How the lock's waiter names its holder: the lock file's line, or the PostgreSQL session's name."""
    return f"pid {pid} ({what})" + (f" on {socket.gethostname()}" if cfg.postgres else "")


@pytest.mark.backends
def test_an_ingestion_started_while_another_merges_waits_for_it(make_world):
    """The lost update made certain: the second ingestion.py starts while the first has found which of
    its rows are new and where finaldata.csv ends, and has not appended them yet."""
    cfg = make_world(cv_folds=0)
    first_dir, second_dir = cfg.base / "first", cfg.base / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    rows_file(first_dir / "first.csv", 500, seed=5)
    (second_dir / "second.csv").write_text(HEADER + "late arrival,1,2,3,1\n")
    logs = {name: open(cfg.base / f"{name}.err", "w") for name in ("first", "second")}
    first = subprocess.Popen([sys.executable, "-c", PAUSED_INGESTION, "--config", str(cfg.path), "--input-folder",
                              str(first_dir)], cwd=cfg.base, env=env(), stdout=subprocess.DEVNULL, stderr=logs["first"])
    deadline = time.monotonic() + 60
    while not (cfg.base / "paused").exists():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    second = subprocess.Popen(script(cfg, "ingestion.py", "--input-folder", second_dir), env=env(),
                              stdout=subprocess.PIPE, stderr=logs["second"], text=True)
    while second.poll() is None and WAITING not in (cfg.base / "second.err").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    (cfg.base / "go").touch()
    assert first.wait(60) == 0
    out, _ = second.communicate(timeout=60)
    err = (cfg.base / "second.err").read_text()
    assert second.returncode == 0, err
    assert out.splitlines()[0] == "ingested    second.csv (1 rows)"
    for f in logs.values():
        f.close()
    final = ingestion.read_finaldata(cfg.finaldata)
    assert final.iloc[-1].to_dict() == {"corporation": "late arrival", "lastmonth_activity": 1,
                                        "lastyear_activity": 2, "number_of_employees": 3, "exited": 1}
    assert len(final) == 501
    assert [n for n, _, _ in ingested(cfg)] == ["first.csv", "second.csv"]  # the order they held the lock
    waiting = [line for line in err.splitlines() if WAITING in line]
    assert len(waiting) == 1
    assert waiting[0].endswith(f"WARNING locks: waiting up to 60s for {locks.describe(cfg.writer_lock)}, "
                               f"held by {held_by(cfg, first.pid, 'ingestion.py')}")


# --- every pairing of the writers, each a real process forked from a warm server -----------------

WRITERS = ["ingestion", "cycle", "training", "scoring", "deploy", "rollback"]
PAIRS = list(itertools.combinations_with_replacement(WRITERS, 2))
# What a writer may answer besides 0: a refusal that says why in one line, never a half-done change.
REFUSALS = {
    "deploy": "error: no test score is recorded for ",  # training ran just before it: score first
    "rollback": "error: version 1 is the oldest kept: nothing to roll back to",
}


def _writer(kind, config_path, folder, start_at, out_path, err_path):
    """In a child of the fork server: the script's own `main` for `kind`, started at `start_at`."""
    code = 3
    try:
        for fd, path in ((1, out_path), (2, err_path)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        time.sleep(max(0.0, start_at - time.time()))
        argv = ["--config", config_path]
        if kind == "ingestion":
            code = ingestion.main(argv + (["--input-folder", folder] if folder else []))
        elif kind == "cycle":
            fullprocess.publish = stand_in
            code = fullprocess.main(argv)
        elif kind == "training":
            code = training.main(argv)
        elif kind == "scoring":
            code = scoring.main(argv)
        elif kind == "deploy":
            code = deployment.main(argv)
        elif kind == "rollback":
            code = deployment.main(argv + ["--rollback"])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# With PostgreSQL the pairings where the history itself is raced for: the advisory lock between two
# cycles, a cycle and an ingestion by hand, a cycle and a rollback by hand.
PG_PAIRS = [("cycle", "cycle"), ("ingestion", "cycle"), ("cycle", "rollback")]
RACES = [("sqlite", a, b) for a, b in PAIRS] + [("postgresql", a, b) for a, b in PG_PAIRS]


def make_template(root, **history):
    FORKSERVER.set_forkserver_preload(PRELOAD)
    # the course's setting: a drifted delivery is redeployed, so every race meets a deployment
    cfg = build_world(root, rows=200, cv_folds=0, feature_drift_triggers_retrain=True, drift_test="raw",
                      promotion_gate=False, **history)
    retrain_and_deploy(cfg, seed=7)
    return root


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A deployed world with two versions (so a rollback has somewhere to go), copied for each race."""
    return make_template(tmp_path_factory.mktemp("template") / "world")


@pytest.fixture(scope="module")
def pg_template(tmp_path_factory, postgres):
    """The same world with its history in a PostgreSQL database (copied with CREATE DATABASE ... TEMPLATE)."""
    return make_template(tmp_path_factory.mktemp("pg_template") / "world", history_url=postgres.new_database())


def copy_world(request, backend, tmp_path):
    """A copy of the module's template world of `backend` under tmp_path: its Config."""
    template = request.getfixturevalue("pg_template" if backend == "postgresql" else "template")
    root = tmp_path / "world"
    shutil.copytree(template, root, symlinks=True)
    if backend == "postgresql":
        config = json.loads((root / "config.json").read_text())
        config["history_url"] = request.getfixturevalue("postgres").copy_database(config["history_url"])
        (root / "config.json").write_text(json.dumps(config))
    return load_config(root / "config.json")


@pytest.mark.parametrize(("backend", "a", "b"), RACES, ids=[f"{a}-x-{b}-{k}" if k != "sqlite" else f"{a}-x-{b}"
                                                             for k, a, b in RACES])
def test_two_writers_racing_never_interleave(request, tmp_path, backend, a, b):
    cfg = copy_world(request, backend, tmp_path)
    root = cfg.base
    rng = random.Random(f"{SEED} {a} {b}")
    delivered = {p: p.read_bytes() for p in cfg.input_folder_path.glob("*.csv")}
    new = rows_file(cfg.input_folder_path / "race.csv", 100, seed=rng.randrange(1000), shift=3000)
    delivered[new] = new.read_bytes()
    extra = root / "extra"
    extra.mkdir()
    other = rows_file(extra / "extra.csv", 100, seed=rng.randrange(1000))
    delivered[other] = other.read_bytes()
    offsets = [0.0, rng.uniform(0.0, 0.6)]
    rng.shuffle(offsets)
    start_at = time.time() + 0.3
    procs = []
    for i, kind in enumerate((a, b)):
        folder = str(extra) if (kind, i) == ("ingestion", 1) else None  # two ingestions: two folders
        proc = FORKSERVER.Process(target=_writer, args=(kind, str(cfg.path), folder, start_at + offsets[i],
                                                        str(root / f"{i}.out"), str(root / f"{i}.err")))
        proc.start()
        procs.append(proc)
    for proc in procs:
        proc.join(120)
    for i, (kind, proc) in enumerate(zip((a, b), procs)):
        err = (root / f"{i}.err").read_text()
        assert "Traceback" not in err, err
        assert err.count(WAITING) <= 1, err
        if proc.exitcode != 0:
            assert (proc.exitcode, err.splitlines()[-1][:len(REFUSALS.get(kind, "-"))]) == (2, REFUSALS.get(kind)), err
        if kind == "cycle":
            assert "INFO fullprocess: cycle finished: " in err or " holds " + locks.describe(cfg.writer_lock) in err, err
    check_invariants(cfg, delivered)
    nothing_lost(cfg, delivered, [cfg.input_folder_path, extra])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_daemon_and_hand_runs_share_the_lock(request, tmp_path, backend):
    """The daemon (`python fullprocess.py --daemon`, a cycle every 2 s) with ingestion.py and deployment.py
    --rollback run by hand meanwhile: each hand run waits for a cycle or goes first, none interleaves."""
    cfg = copy_world(request, backend, tmp_path)
    root = cfg.base
    rng = random.Random(f"{SEED} daemon")
    delivered = {p: p.read_bytes() for p in cfg.input_folder_path.glob("*.csv")}
    new = rows_file(cfg.input_folder_path / "race.csv", 100, seed=11, shift=3000)
    delivered[new] = new.read_bytes()
    extra = root / "extra"
    extra.mkdir()
    other = rows_file(extra / "extra.csv", 100, seed=12)
    delivered[other] = other.read_bytes()
    log = open(root / "daemon.err", "w")
    daemon = subprocess.Popen(cycle_cmd(cfg, "--daemon", "--schedule", "*/2 * * * * *"), cwd=root, env=env(),
                              stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 90
        while "daemon started" not in (root / "daemon.err").read_text():
            assert daemon.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        hands = []
        start_at = time.time()
        for i, (kind, folder) in enumerate((("ingestion", str(extra)), ("rollback", None))):
            proc = FORKSERVER.Process(target=_writer, args=(kind, str(cfg.path), folder, start_at + rng.uniform(0, 1.5),
                                                            str(root / f"{i}.out"), str(root / f"{i}.err")))
            proc.start()
            hands.append(proc)
        for proc in hands:
            proc.join(120)
        outs = [((root / f"{i}.out").read_text(), (root / f"{i}.err").read_text()) for i in range(2)]
        assert [p.exitcode for p in hands] == [0, 0], outs
        assert outs[0][0].splitlines()[0] == "ingested    extra.csv (100 rows)"
        assert outs[1][0].startswith("rolled back: now serving v")
        logged = cfg.log_folder_path / "cycles.jsonl"  # absent until the daemon's first cycle ends
        lines = logged.read_text().count("\n") if logged.exists() else 0
        while (logged.read_text().count("\n") if logged.exists() else 0) < lines + 1:  # one cycle more
            assert daemon.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(60)
        log.close()
    err = (root / "daemon.err").read_text()
    assert code == 0 and "Traceback" not in err, err
    assert "cycle finished: drift: redeployed" in err
    check_invariants(cfg, delivered)
    nothing_lost(cfg, delivered, [cfg.input_folder_path, extra])
