"""Fault injection: the monitoring cycle SIGKILLed at 33 seeded moments, rerun after each kill.

Each cycle runs in a child forked from a warm fork server (pandas and scikit-learn already
imported, so a cycle takes a fraction of a second instead of a second and a half of imports): a
real process, really SIGKILLed by the kernel. A seeded schedule picks, for each run, one of:
an exact point between a write and what records it (the child SIGKILLs itself there: after
finaldata.csv is written and before the history records it, between the symlink swap and the
deployment's record...); a step to kill in (the child reports the steps it starts through a
pipe) after a random part of that step's measured duration; or a random moment anywhere. After each kill the production deployment must still load; after
each rerun every invariant of README's "Reliability" must hold exactly.
"""
import hashlib
import json
import logging
import multiprocessing
import os
import random
import signal
import time
import types

import numpy as np
import pandas as pd
import pytest
from conftest import HEADER, write_delivery
from helpers import query

import app as app_module
import archive
import columnstats
import cycle
import datagen
import delivery
import deployment
import finaldata
import fullprocess
import ingestion
import rowindex
from settings import load_config

KILLS = 33
SEED = 20261122
STEPS = ["look", "ingestion", "training", "scoring", "deployment", "publish"]


def stand_in(cfg, record):
    """Publishes by appending one line (the report and API returns are tested by their own modules)."""
    fd = os.open(cfg.output_folder_path / "published.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps({"version": record.deployed_version}) + "\n").encode())
    finally:
        os.close(fd)
    return {"report": "stand-in"}


# Exact points where the child SIGKILLs itself: between a write and what records it.
POINTS = ["after quarantine move", "after archive", "before finaldata.csv", "after finaldata.csv", "after row index",
          "after column profile", "after commit", "after index merge", "before ingestedfiles.txt",
          "after ingestedfiles.txt", "after trainedmodel.pkl", "after latestscore.txt", "after manifest.json",
          "before swap", "after swap"]


def arm(point):
    """In the child: SIGKILL this process when it reaches `point` (wrappers around the writers)."""
    import contextlib

    import atomicfiles
    import history

    def hook(name):
        if name == point:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap_write(real):
        def write(path, *args):
            hook(f"before {os.path.basename(path)}")
            real(path, *args)
            hook(f"after {os.path.basename(path)}")
        return write

    atomicfiles.write_with = wrap_write(atomicfiles.write_with)
    atomicfiles.write_bytes = wrap_write(atomicfiles.write_bytes)
    real_tx, real_swap = history.transaction, deployment._swap_current

    @contextlib.contextmanager
    def transaction(conn):
        with real_tx(conn):
            yield conn
        hook("after commit")

    def swap(prod, number):
        hook("before swap")
        real_swap(prod, number)
        hook("after swap")

    history.transaction = transaction
    deployment._swap_current = swap
    real_store = archive.store

    def store(*args):  # between a delivery's archive write and the history's record of it
        path = real_store(*args)
        hook("after archive")
        return path

    archive.store = store

    def after(module, name, point, before=None):  # SIGKILL right after (or before) module.name
        real = getattr(module, name)

        def wrapped(*args, **kwargs):
            if before:
                hook(before)
            out = real(*args, **kwargs)
            hook(point)
            return out

        setattr(module, name, wrapped)

    # ingestion's appended rows, the row-hash index file of them, the column profile (before the
    # history records them); a merge of two index files (after, before the two are removed)
    after(finaldata, "_append", "after finaldata.csv", before="before finaldata.csv")
    after(rowindex, "write", "after row index")
    after(columnstats.Profile, "save", "after column profile")
    after(rowindex, "_write_merged", "after index merge")
    real_replace = ingestion.os.replace

    def replace(src, dst):  # ingestion moves a bad file into quarantine with os.replace
        real_replace(src, dst)
        hook("after quarantine move")

    patched_os = types.ModuleType("os")
    patched_os.__dict__.update(vars(os))
    patched_os.replace = replace
    ingestion.os = patched_os


# Children are forked by a fresh, single-threaded fork server with the heavy modules preloaded:
# forking pytest itself would copy the threads other tests leave behind (thread pools, servers),
# and a child can deadlock on a lock one of them held at the fork.
FORKSERVER = multiprocessing.get_context("forkserver")
PRELOAD = ["pandas", "numpy", "scipy.stats", "sklearn.linear_model", "sklearn.pipeline", "sklearn.preprocessing",
           "sklearn.metrics", "fullprocess", "ingestion", "training", "scoring", "deployment", "drift", "audit"]


class PipeHandler(logging.Handler):
    """Sends each log line of the child through a pipe."""

    def __init__(self, conn):
        super().__init__()
        self.conn = conn

    def emit(self, record):
        self.conn.send_bytes(self.format(record).encode())


def _child(config_path, conn, point):
    """One cycle, in a child of the fork server; with `point`, it SIGKILLs itself there."""
    code = 3
    try:
        if point is not None:
            arm(point)
        handler = PipeHandler(conn)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        rec = fullprocess.run_cycle(load_config(config_path), publisher=stand_in).to_dict()
        code = 1 if rec["errors"] else 0
    finally:
        os._exit(code)


def start_cycle(cfg, point=None):
    """Start a child that runs one cycle and sends its log lines through a pipe; return (process, read end)."""
    r, w = FORKSERVER.Pipe(duplex=False)
    proc = FORKSERVER.Process(target=_child, args=(str(cfg.path), w, point))
    proc.start()
    w.close()
    return proc, r


class Lines:
    """The child's log lines, read as they come."""

    def __init__(self, conn):
        self.conn, self.lines = conn, []

    def read(self, timeout):
        if not self.conn.poll(max(timeout, 0)):
            return False
        try:
            self.lines.append(self.conn.recv_bytes().decode())
        except EOFError:
            return None  # the child is gone
        return True

    def wait_for(self, text, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.read(deadline - time.monotonic()) is None or time.monotonic() > deadline:
                return False
        return True

    def drain(self):
        while self.read(0):
            pass

    def last_step(self):
        steps = [line.split("step: ", 1)[1] for line in self.lines if line.startswith("step: ")]
        return steps[-1] if steps else "start"


def sigkill(proc):
    """SIGKILL the child, unless it has already finished (the fork server reaps its children)."""
    if proc.is_alive():  # (pids are allocated in sequence: a finished child's is not reused within ms)
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_to_end(cfg):
    proc, r = start_cycle(cfg)
    lines = Lines(r)
    while lines.read(60) not in (None, False):
        pass
    r.close()
    proc.join(60)
    return proc.exitcode, lines.lines


def sha(data):
    return hashlib.sha256(data).hexdigest()


def check_production(cfg):
    """The serving version is whole: its files match the manifest and the API loads and serves it."""
    model, manifest = deployment.load_deployed(cfg.prod_deployment_path)
    current = deployment.current_dir(cfg.prod_deployment_path)
    for name, meta in manifest["files"].items():
        assert sha((current / name).read_bytes()) == meta["sha256"], name
        assert (cfg.prod_deployment_path / name).read_bytes() == (current / name).read_bytes(), name
    client = app_module.create_app(cfg).test_client()
    health = client.get("/health")
    assert (health.status_code, health.get_json()) == (200, {"status": "ok", "model_version": manifest["version"]})
    rows = datagen.generate(3, seed=7)
    pred = client.post("/prediction", data=rows.to_csv(index=False), content_type="text/csv")
    assert pred.status_code == 200 and pred.get_json()["model_version"] == manifest["version"]
    assert pred.get_json()["predictions"] == model.predict(rows[["lastmonth_activity", "lastyear_activity",
                                                                 "number_of_employees"]].astype("float64")).tolist()
    return manifest


def check_invariants(cfg, delivered):
    """After a rerun: every delivery ingested once or quarantined, finaldata exact, production whole,
    the history and the publications agree with it, nothing owed."""
    ingested = query(cfg, "SELECT name, sha256 FROM ingested_files ORDER BY id")
    quarantined = query(cfg, "SELECT name, sha256, reason, moved_to FROM quarantined_files")
    (summary_rows, summary_bytes), = query(cfg, "SELECT rows, bytes FROM summaries ORDER BY id DESC LIMIT 1")
    last_deploy, = query(cfg, "SELECT version, model_sha256 FROM deployments ORDER BY id DESC LIMIT 1")
    (unfinished,), = query(cfg, "SELECT count(*) FROM cycles WHERE finished_at IS NULL")
    in_quarantine = {sha(p.read_bytes()): p for p in cfg.quarantine_folder_path.glob("[!.]*")
                     if not p.name.endswith(".reason.txt")} if cfg.quarantine_folder_path.exists() else {}
    ingested_shas = [s for _, s in ingested]
    assert len(ingested_shas) == len(set(ingested_shas)), "a content ingested twice"
    first_name = {}
    for name, data in delivered.items():
        first_name.setdefault(sha(data), name)
    for name, data in delivered.items():
        digest = sha(data)
        states = []
        if digest in ingested_shas:
            states.append("ingested")
            assert (cfg.input_folder_path / name).read_bytes() == data  # ingested files stay where they are
        if digest in in_quarantine:
            states.append("quarantined")
            moved = in_quarantine[digest]
            assert moved.read_bytes() == data
            reason = moved.with_name(moved.name + ".reason.txt").read_text()
            assert reason == f"{name}: column 'number_of_employees', row 1 (line 2): value 'lots' is not a number\n"
            assert [(q[0], q[2], q[3]) for q in quarantined if q[1] == digest] == [
                (name, reason.split(": ", 1)[1].rstrip("\n"), str(moved))], "quarantined but not recorded once"
            assert not (cfg.input_folder_path / name).exists()
        assert len(states) == 1, (name, states)  # nothing pending after a full rerun, nothing in two places
    assert set(ingested_shas) | set(in_quarantine) == {sha(d) for d in delivered.values()}
    assert [n for n, _ in ingested] == [first_name[s] for s in ingested_shas]
    # finaldata.csv: exactly the distinct rows of the ingested files, in the order they arrived, the
    # bytes a full rebuild writes (and pandas' to_csv of them); its length and rows as recorded
    frames = [delivery.parse_delivery((cfg.input_folder_path / n).read_bytes()) for n, _ in ingested]
    expected = pd.concat(frames, ignore_index=True).drop_duplicates(ignore_index=True)
    data = cfg.finaldata.read_bytes()
    assert data == finaldata.rebuild(frames) == expected.to_csv(index=False).encode()
    final = ingestion.read_finaldata(cfg.finaldata)
    assert (summary_rows, summary_bytes) == (len(final), len(data))
    # the row-hash index covers exactly those bytes, every line's hash at its offset; the profile is theirs
    lines = finaldata.csv_lines(final)
    offsets = len(finaldata.HEADER) + np.concatenate(([0], np.cumsum([len(x) for x in lines])[:-1]))
    tiles = rowindex.tiling(finaldata.index_folder(cfg), len(finaldata.HEADER), len(data))
    table = np.concatenate([np.load(p) for _, _, p in tiles], axis=1)
    want = np.stack([rowindex.hash_lines(lines), offsets.astype(np.uint64)])
    assert np.array_equal(table[:, np.lexsort(table[::-1])], want[:, np.lexsort(want[::-1])])
    profile, fresh = finaldata.profile_of(cfg, len(data)), columnstats.Profile.of_frame(final)
    assert (profile.rows, profile.missing) == (fresh.rows, fresh.missing)
    for col in profile.values:
        assert all(np.array_equal(a, b) for a, b in zip(profile.counts(col), fresh.counts(col))), col
    assert cfg.ingested_list.read_text() == "".join(n + "\n" for n, _ in ingested)
    # every ingested delivery is in the archive, whole (a killed archive write may leave one more)
    assert set(ingested_shas) <= set(archive.contents(archive.folder_of(cfg)))
    for n, s in ingested:
        assert archive.load(archive.folder_of(cfg), s) == (cfg.input_folder_path / n).read_bytes()
    manifest = check_production(cfg)
    assert last_deploy == (manifest["version"], manifest["files"]["trainedmodel.pkl"]["sha256"])
    assert unfinished == 0
    # no half-written copies left behind by the killed writers
    for folder in (cfg.output_folder_path, archive.folder_of(cfg), cfg.output_model_path, cfg.quarantine_folder_path):
        assert sorted(p.name for p in folder.glob(".*.tmp")) == [], folder
    published = [json.loads(line) for line in (cfg.output_folder_path / "published.jsonl").read_text().splitlines()]
    assert published[-1] == {"version": manifest["version"]}
    # the deployed model's own file list names only ingested files
    assert set((cfg.prod_deployment_path / "ingestedfiles.txt").read_text().splitlines()) <= {n for n, _ in ingested}
    return manifest


def deliver(cfg, i, rng, delivered, bad=False):
    """Run i's delivery: a fresh file, a bad one beside it every fourth run (and when `bad`), every fifth a copy of an earlier one."""
    name = f"delivery {i:02d}.csv"
    # Activity beyond anything delivered before: feature drift, so every cycle retrains and redeploys.
    # The first is large: its row-hash index file is the large one the later small ones are looked
    # up in and, merged two by two, grow towards.
    df = datagen.generate(30000 if i == 0 else 150, seed=100 + i)
    df["lastmonth_activity"] += 2000 * i
    df["lastyear_activity"] += 24000 * i
    path = cfg.input_folder_path / name
    df.to_csv(path, index=False)
    delivered[name] = path.read_bytes()
    if bad or i % 4 == 3:
        bad = write_delivery(cfg, f"bad {i:02d}.csv", text=HEADER + f"b{i:03d},1,2,lots,0\n")
        delivered[bad.name] = bad.read_bytes()
    if i % 5 == 4:
        old = rng.choice(sorted(n for n in delivered if n.startswith("delivery") and n != name))
        write_delivery(cfg, f"copy {i:02d}.csv", text=delivered[old])
        delivered[f"copy {i:02d}.csv"] = delivered[old]


def killed_cycles(cfg, schedule, kills, rng, needed=frozenset()):
    """Run cycles, one delivery each, killing each as `schedule` says, until `kills` were killed and a
    kill has landed in each step of `needed`; after each kill and rerun every invariant holds. Where
    each kill landed, in order."""
    FORKSERVER.set_forkserver_preload(PRELOAD)
    delivered = {}
    deliver(cfg, 0, rng, delivered)
    # One whole cycle measured: how long each step takes here, now (the machine may be loaded).
    code, _ = run_to_end(cfg)
    assert code == 0
    first = json.loads((cfg.log_folder_path / "cycles.jsonl").read_text().splitlines()[-1])
    durations = first["timings"]
    total = first["seconds"]
    check_invariants(cfg, delivered)
    killed_in, runs = [], 0
    while len(killed_in) < kills or not needed <= set(killed_in):
        runs += 1
        assert runs <= kills + 15, f"only {len(killed_in)} of {runs} runs could be killed: {killed_in}"
        if runs > len(schedule) and not needed <= set(killed_in):
            # a loaded machine made a step's kills land after the step: aim at it again
            kind, target = "step", sorted(needed - set(killed_in))[0]
        else:
            kind, target = schedule[(runs - 1) % len(schedule)]
        deliver(cfg, runs, rng, delivered, bad=target == "after quarantine move")
        proc, r = start_cycle(cfg, target if kind == "point" else None)
        lines = Lines(r)
        if kind == "any":
            time.sleep(rng.uniform(0, total))
            sigkill(proc)
        elif kind == "step" and lines.wait_for(f"step: {target}"):
            time.sleep(rng.uniform(0, 0.9 * durations.get(target, 0.05)))
            sigkill(proc)
        proc.join(60)
        lines.drain()
        r.close()
        if proc.exitcode == -signal.SIGKILL:
            killed_in.append(target if kind == "point" else lines.last_step())
        else:
            assert proc.exitcode == 0, lines.lines
        # Right after the kill: whatever was serving still serves, whole.
        if deployment.current_dir(cfg.prod_deployment_path) is not None:
            check_production(cfg)
        code, out = run_to_end(cfg)
        assert code == 0, out
        # a killed ingestion is undone by cutting finaldata.csv back, never by rebuilding or re-indexing it
        assert not [line for line in out if "rebuilding it from the delivery archive" in line
                    or line.startswith("indexing ")], out
        manifest = check_invariants(cfg, delivered)
        # nothing is owed: the next cycle finds nothing to do
        assert fullprocess.run_cycle(cfg, publisher=stand_in).to_dict()["decision"] == cycle.NO_NEW_DATA
    assert manifest["version"] > len(killed_in) // 3  # the cycles really redeployed, again and again
    assert query(cfg, "SELECT count(*) FROM cycles WHERE decision = 'interrupted'")[0][0] >= 1
    return killed_in


# monitoring off: the cycle's own API calls send the (shifted) test data, which the live alarm
# rightly calls drift; here /health must speak of the serving version only
KILLED_WORLD = dict(cv_folds=0, keep_versions=3, feature_drift_triggers_retrain=True, monitoring=False,
                    drift_test="raw", promotion_gate=False)  # the course's setting: every delivery redeploys


def test_the_cycle_survives_sigkill_at_33_seeded_moments(make_world):
    cfg = make_world(**KILLED_WORLD)
    # 15 exact points, 12 random moments inside a named step, 6 random moments anywhere (33 kills)
    schedule = [("point", p) for p in POINTS] + [("step", s) for s in STEPS * 2] + [("any", None)] * 6
    rng = random.Random(SEED)
    rng.shuffle(schedule)
    needed = {"ingestion", "training", "deployment"}  # steps a kill must have landed in
    killed_in = killed_cycles(cfg, schedule, KILLS, rng, needed)
    assert len(killed_in) >= KILLS and needed <= set(killed_in), killed_in
    assert set(POINTS) <= set(killed_in), killed_in  # every exact point was reached and killed at


# With PostgreSQL: the exact points on either side of the history's records (the other kills test the files).
PG_POINTS = ["after archive", "after finaldata.csv", "after commit", "after ingestedfiles.txt", "after manifest.json",
             "after swap"]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_kill_9_invariants_hold_with_postgresql(make_world):
    cfg = make_world(**KILLED_WORLD)
    assert cfg.postgres
    assert killed_cycles(cfg, [("point", p) for p in PG_POINTS], len(PG_POINTS), random.Random(SEED)) == PG_POINTS
