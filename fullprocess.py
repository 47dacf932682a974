"""The monitoring cycle: new data? then ingest, check drift, retrain, redeploy, report.

    python fullprocess.py [--config PATH]            one cycle (what cron runs every ten minutes)
    python fullprocess.py --daemon [--schedule EXPR] the same cycle on cronjob.txt's schedule

One cycle (README, "The monitoring cycle"):
1. take an exclusive lock (flock on output_folder_path/.cycle.lock); if another cycle holds it,
   log that and exit 0;
2. look for delivery files whose content has not been ingested (history database); none, and no
   unfinished work: log "no new data" and exit 0. This path imports no pandas, scikit-learn or
   scipy: it runs every ten minutes and must take milliseconds;
3. nothing deployed yet: ingest everything, train, score, deploy, publish;
4. otherwise ingest the new files, decide score drift (config `drift_test`) and feature drift on
   their rows, and on drift retrain, score, deploy (behind the optional promotion gate) and
   publish the report and the API returns;
5. record the cycle in the history database (`cycles`) and as one JSON line in
   log_folder_path/cycles.jsonl.

Crash safety: every step leaves the files consistent on its own (ingestion writes finaldata.csv
before recording it, and deduplication makes a repeat harmless; a deployment builds its version
folder under a temporary name and swaps a symlink). What a cycle still owes is derived from the
history at the start of the next one: ingested files no finished cycle has decided on
("pending"), and a deployed version no cycle has published. A cycle killed at any point is
finished by the next.
"""
import fcntl
import json
import logging
import os
import sqlite3
import sys
import time
from contextlib import closing, contextmanager
from pathlib import Path
from types import SimpleNamespace

import atomicfiles
import cycle
import delivery
import deployment
import history
import ingestion
import schedule
from cycle import (COLD_START, FAILED, NO_DATA_YET, NO_NEW_DATA, NO_USABLE_ROWS, PUBLISHED, CycleRecord, Gate,
                   Retrained, known)
from settings import FEATURES, TARGET, ConfigError, load_config, rotate_logs, setup_logging

logger = logging.getLogger(__name__)

LOCK_NAME = ".cycle.lock"
LOG_NAME = "cycles.jsonl"


def _iso(t):
    """UTC ISO 8601 with milliseconds, as datetime would write it (without importing it)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}+00:00"


@contextmanager
def cycle_lock(folder):
    """Hold an exclusive, non-blocking flock on folder/.cycle.lock; yield whether we got it.

    The kernel drops the lock when the process dies, however it dies, so a killed cycle never
    leaves a stale lock behind.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.pwrite(fd, f"{os.getpid():>10}\n".encode(), 0)  # fixed width: no truncate needed
        yield True
    finally:
        os.close(fd)


def publish(cfg, record) -> dict:
    """Write the PDF report for this cycle and apireturns.txt (through the running API if it answers).

    The one place the cycle reaches the reporting and API modules.
    """
    # lazy: the idle cycle imports no pandas, matplotlib or reportlab
    import apicalls
    import reporting

    paths = reporting.generate_report(cfg, cycle=record, audit=None)
    out = {"report": str(paths["latest"]), "report_copy": str(paths["pdf"]),
           "confusion_matrix": str(paths["confusion_matrix"])}
    out["apireturns"] = str(apicalls.produce_returns(cfg))
    return out


def _pending_frames(pending, frames):
    """The rows of the pending files: from this cycle's ingestion when it parsed them, else re-read."""
    import hashlib

    import pandas as pd  # lazy: the idle cycle imports no pandas

    out = []
    for f in pending:
        df = frames.get(f["sha256"])
        if df is None:
            path = Path(f["folder"]) / f["name"]
            try:
                data = path.read_bytes()
            except OSError as exc:
                logger.warning("pending file %s cannot be read again (%s): left out of the drift check", path, exc)
                continue
            if hashlib.sha256(data).hexdigest() != f["sha256"]:
                logger.warning("pending file %s has changed since it was ingested: left out of the drift check", path)
                continue
            df = delivery.parse_delivery(data)
        out.append(df)
    return pd.concat(out, ignore_index=True) if out else None


def _reference_rows(cfg, conn, pending):
    """The rows ingested before the pending files: the prefix of finaldata.csv they extended.

    Ingestion appends new rows after the old ones and keeps first occurrences, so the finaldata of
    before is exactly the first `rows` rows of today's.
    """
    row = conn.execute("SELECT rows FROM summaries WHERE at < ? ORDER BY id DESC LIMIT 1",
                       (pending[0]["at"],)).fetchone()
    before = row["rows"] if row else 0
    if before == 0 or not cfg.finaldata.exists():
        return None
    return ingestion.read_finaldata(cfg.finaldata, nrows=before)


def _held_out_range(cfg, conn, pending):
    """finaldata.csv's rows [start, end) from deliveries decided on since the deployed model was
    trained (they caused no redeploy): recent labelled rows it has never seen, the held-out
    reference of the `significance` test (README, "Which reference"). None when there are none."""
    manifest = deployment.current_manifest(cfg.prod_deployment_path, missing_ok=True)
    training_files = ((manifest or {}).get("training") or {}).get("training_files")
    files = conn.execute("SELECT id, name, sha256, at FROM ingested_files WHERE id < ? ORDER BY id",
                         (pending[0]["id"],)).fetchall()
    if training_files is not None:  # by content: a changed file under an old name is not the trained one
        trained = {f["sha256"] for f in training_files}
        trained_through = max((f["id"] for f in files if f["sha256"] in trained), default=0)
    else:  # a model deployed before its training files were recorded: by the deployed list of names
        try:
            deployed_names = set((cfg.prod_deployment_path / "ingestedfiles.txt").read_text().splitlines())
        except FileNotFoundError:
            return None
        trained_through = max((f["id"] for f in files if f["name"] in deployed_names), default=0)
    held = [f for f in files if f["id"] > trained_through]
    if not held:
        return None

    def rows_before(at):
        row = conn.execute("SELECT rows FROM summaries WHERE at < ? ORDER BY id DESC LIMIT 1", (at,)).fetchone()
        return row["rows"] if row else 0

    start, end = rows_before(held[0]["at"]), rows_before(pending[0]["at"])
    return (start, end) if end > start else None


def _deployed_history(conn) -> list:
    """The F1 of each deployment made, oldest first: the score history of the statistical drift tests."""
    return [r[0] for r in conn.execute("SELECT f1 FROM deployments WHERE action = 'deploy' AND f1 IS NOT NULL ORDER BY id")]


class Cycle:
    """One run of the cycle: the record it builds, its timings, and the steps."""

    def __init__(self, cfg, conn, publisher):
        self.cfg = cfg
        self.conn = conn
        self.publisher = publisher
        self.t0 = time.perf_counter()
        self.record = CycleRecord.start(_iso(time.time()), str(cfg.path))

    @contextmanager
    def step(self, name):
        started = time.perf_counter()
        logger.info("step: %s", name)
        try:
            yield
        finally:
            self.record.timings[name] = round(time.perf_counter() - started, 6)

    def save(self, cycle_id, finished=False):
        rec = self.record
        if finished:
            self.conn.execute("UPDATE cycles SET finished_at = ?, decision = ?, record = ? WHERE id = ?",
                              (time.time(), rec.decision, rec.to_json(), cycle_id))
        else:
            self.conn.execute("UPDATE cycles SET record = ? WHERE id = ?", (rec.to_json(), cycle_id))

    # The steps of a cycle with work to do.

    def retrain(self):
        # lazy: the idle cycle imports no pandas or scikit-learn
        import scoring
        import training

        with self.step("training"):
            meta = training.run(self.cfg, self.conn)
        with self.step("scoring"):
            metrics = scoring.run(self.cfg, self.conn)
        self.record.retrained = Retrained(meta["training_rows"], meta["model_sha256"], metrics)
        serving = deployment.current_manifest(self.cfg.prod_deployment_path, missing_ok=True)
        before = (serving or {}).get("metrics", {}).get("f1")
        if before is not None and metrics["f1"] < before:
            note = (f"the retrained model's test F1 {metrics['f1']:.4f} is below the serving model's {before:.4f} "
                    f"(version {serving['version']}); config promotion_gate keeps a worse model out")
            logger.warning("%s", note)
            self.record.retrained.warning = note
        return metrics

    def deploy(self, cycle_id, decision):
        """Deploy the retrained model; its manifest (and model card) carries this cycle's drift decision."""
        rec = self.record
        extra = {"cycle": {"id": cycle_id, "decision": decision, "started_at": rec.started_at,
                           "new_files": ", ".join(rec.pending_files or rec.new_files),
                           "score_drift": known(rec.score_drift), "feature_drift": known(rec.feature_drift)}}
        with self.step("deployment"):
            manifest = deployment.deploy_from_config(self.cfg, self.conn, extra=json.loads(json.dumps(extra, default=str)))
        self.record.deployed_version = manifest["version"]
        return manifest

    def decide(self, model, manifest, new_df, reference_df, held_out_df=None):
        """Score and feature drift of the new rows against the deployed model; sets the record."""
        # lazy: the idle cycle imports no numpy, pandas or scikit-learn
        import audit
        import drift
        import scoring

        cfg = self.cfg
        complete = new_df.dropna(subset=list(FEATURES) + [TARGET])
        self.record.new_rows = {"rows": int(len(new_df)), "complete": int(len(complete))}
        with self.step("feature_drift"):
            if reference_df is not None and len(reference_df):
                self.record.feature_drift = drift.feature_drift(
                    reference_df, new_df, psi_threshold=cfg.feature_drift_psi_threshold,
                    level=cfg.drift_significance_level)
            else:
                self.record.feature_drift = None
        if len(complete) == 0:
            self.record.score_drift = None
            return None, complete
        with self.step("score_drift"):
            X, y = scoring.read_test_data(cfg.test_data_file)
            reference_rows = X.assign(**{TARGET: y})
            # The score recorded with this very model: the `latestscore.txt` link may have moved meanwhile.
            deployed_f1 = float(manifest["metrics"]["f1"])
            decision = drift.score_drift(
                cfg.drift_test, model, complete, reference_rows, deployed_f1=deployed_f1,
                history=_deployed_history(self.conn), level=cfg.drift_significance_level,
                rounds=cfg.drift_bootstrap_rounds, min_history=cfg.drift_min_history, seed=0,
                extra_reference_rows=held_out_df)
        self.record.score_drift = decision
        with self.step("slices"):
            # The new rows cut on the deployed model's recorded slices: the report can then show a slice worsening.
            self.record.slices_new = audit.slices_for_config(cfg, model, complete, manifest)
        if decision.get("fallback"):
            logger.info("drift test: %s", decision["fallback"])
        logger.info("score drift (%s): %s", decision["used"], decision["reason"])
        return decision, complete

    def gate(self, complete, deployed_new_f1):
        """The promotion gate: the retrained model must score at least as well on the newest rows."""
        import scoring  # lazy: the idle cycle imports no scikit-learn

        model = scoring.load_pickle(self.cfg.model_file)
        X = complete[list(FEATURES)].astype("float64")
        y = complete[TARGET].astype("int64")
        new_f1 = scoring.score_model(model, X, y)["f1"]
        passed = new_f1 >= deployed_new_f1
        reason = (f"retrained model's F1 {new_f1:.4f} on the {len(complete)} new rows is "
                  f"{'at least' if passed else 'lower than'} the deployed model's {deployed_new_f1:.4f}")
        self.record.gate = Gate(passed, new_f1, deployed_new_f1, int(len(complete)), reason)
        logger.info("promotion gate: %s", reason)
        return passed


def run_cycle(cfg, publisher=None) -> CycleRecord:
    """Run one cycle under the lock; return its record (decision "locked" when another cycle runs)."""
    with cycle_lock(cfg.output_folder_path) as held:
        if not held:
            logger.info("another cycle holds %s: exiting", cfg.output_folder_path / LOCK_NAME)
            return CycleRecord.locked()
        rotate_logs(cfg.log_folder_path, cfg.log_max_bytes, cfg.log_backups)
        try:
            conn = history.connect(cfg.history_db)
        except (sqlite3.Error, OSError) as exc:  # a read-only or full output folder: say so, record it
            started = time.time()
            rec = CycleRecord.start(_iso(started), str(cfg.path))
            rec.decision = FAILED
            rec.errors.append(f"cannot open the history database {cfg.history_db}: {exc}")
            manifest = deployment.current_manifest(cfg.prod_deployment_path, missing_ok=True)
            rec.previous_version = rec.deployed_version = manifest["version"] if manifest else None
            logger.error("cycle failed: %s", rec.errors[0])
            rec.finished_at = _iso(time.time())
            rec.seconds = round(time.time() - started, 6)
            _log_line(cfg, rec.to_json())
            return rec
        with closing(conn):
            return _run_locked(cfg, conn, publisher or publish)


def _run_locked(cfg, conn, publisher):
    cyc = Cycle(cfg, conn, publisher)
    rec = cyc.record
    with cyc.step("look"):
        interrupted = cycle.mark_interrupted(conn)
        state = cycle.last_state(conn)
        candidates = ingestion.new_files(conn, cfg.input_folder_path, cfg.ingest_settle_seconds)
        manifest = deployment.current_manifest(cfg.prod_deployment_path, missing_ok=True)
        if cycle.reconcile_deployment(conn, manifest):
            rec.recorded_missing_deployment = manifest["version"]
        covered = cycle.covered_id(conn, state)
        max_id = cycle.max_ingested_id(conn)
        current_version = manifest["version"] if manifest else None
        if state is not None:
            published = state[1]
        else:  # no finished cycle: what was deployed by hand counts as published, unless a cycle died
            published = None if interrupted else current_version
    rec.new_files = [c.path.name for c in candidates]
    if interrupted:
        rec.recovered = interrupted
    if not cfg.input_folder_path.is_dir():  # a typo in the config must not look like "no new data" forever
        _fail(rec, f"input folder {cfg.input_folder_path} does not exist (input_folder_path in {cfg.path})")
        rec.deployed_version = rec.previous_version = current_version
        _finish(cfg, conn, rec, None, cyc)
        return rec
    nothing_owed = max_id <= covered and published == current_version
    if not candidates and (nothing_owed if manifest else not cfg.finaldata.exists()):
        rec.decision = NO_NEW_DATA if manifest else NO_DATA_YET
        rec.ingested_through = max_id
        rec.published_version = published
        rec.deployed_version = rec.previous_version = current_version
        logger.info("%s in %s", rec.decision, cfg.input_folder_path)
        _finish(cfg, conn, rec, None, cyc)
        return rec

    cycle_id = conn.execute("INSERT INTO cycles (started_at, record) VALUES (?, ?)",
                            (time.time(), rec.to_json(sort_keys=False))).lastrowid
    rec.cycle_id = cycle_id
    rec.previous_version = current_version
    rec.deployed_version = current_version
    rec.published_version = published
    rec.ingested_through = covered
    try:
        _work(cyc, cycle_id, candidates, manifest, covered, published)
    except Exception as exc:  # noqa: BLE001 - the unattended job's last line: record why, never die silently
        logger.exception("cycle %s failed unexpectedly", cycle_id)
        _fail(rec, f"unexpected {type(exc).__name__}: {exc}")
    _finish(cfg, conn, rec, cycle_id, cyc)
    return rec


def _fail(rec, reason):
    logger.error("cycle failed: %s", reason)
    rec.errors.append(reason)
    if rec.decision is None:
        rec.decision = FAILED


def _live_drift(cfg, conn):
    """traffic.crossings_since the last finished cycle (at most the last day when none finished)."""
    import traffic  # lazy: the idle cycle imports no numpy

    last = conn.execute("SELECT MAX(finished_at) FROM cycles WHERE finished_at IS NOT NULL").fetchone()[0]
    return traffic.crossings_since(cfg, last if last is not None else time.time() - 86400)


def _held_out(cfg, conn, pending, reference_df):
    """The held-out reference rows (complete ones) of the `significance` test, or None."""
    span = _held_out_range(cfg, conn, pending) if reference_df is not None else None
    if span is None:
        return None
    held_out = reference_df.iloc[span[0]:span[1]].dropna(subset=list(FEATURES) + [TARGET])
    return held_out if len(held_out) else None


def _check_and_act(cyc, cycle_id, pending, frames):
    """The pending files' drift check, and on drift retraining and (behind the gate) redeployment."""
    cfg, conn, rec = cyc.cfg, cyc.conn, cyc.record
    new_df = _pending_frames(pending, frames)
    if new_df is None:
        rec.decision = NO_USABLE_ROWS
        return
    with cyc.step("reference_rows"):
        reference_df = _reference_rows(cfg, conn, pending)
        held_out = _held_out(cfg, conn, pending, reference_df)
        rec.held_out_rows = 0 if held_out is None else int(len(held_out))
    model, manifest = deployment.load_deployed(cfg.prod_deployment_path)
    decision, complete = cyc.decide(model, manifest, new_df, reference_df, held_out)
    # Online monitoring: live inputs past psi_act since the last cycle (monitoring.py).
    rec.live_drift = _live_drift(cfg, conn)
    verdict = cycle.drift_verdict(decision, rec.feature_drift, rec.live_drift, cfg.feature_drift_triggers_retrain,
                                  cfg.live_drift_triggers_retrain)
    rec.drift = verdict.drift
    if not verdict.retrain:
        rec.decision = verdict.decision
        return
    if verdict.feature and not verdict.score:
        logger.info("feature drift in %s triggers retraining", ", ".join(rec.feature_drift["drifted"]))
    if verdict.live and not (verdict.score or verdict.feature):
        logger.info("live input drift past psi_act since the last cycle triggers retraining")
    cyc.save(cycle_id)
    cyc.retrain()
    if cycle.gate_applies(cfg.promotion_gate, len(complete)):
        cyc.gate(complete, decision["new_f1"])
    promoted = cycle.promotion_decision(known(rec.gate))
    if promoted == cycle.REDEPLOYED:
        cyc.deploy(cycle_id, cycle.REDEPLOYED)
    rec.decision = promoted


def _work(cyc, cycle_id, candidates, manifest, covered, published):
    # lazy: the idle cycle imports no pandas or scikit-learn (for the exceptions caught below)
    import scoring
    import training

    cfg, conn, rec = cyc.cfg, cyc.conn, cyc.record
    for folder in (cfg.output_folder_path, cfg.output_model_path, cfg.quarantine_folder_path):
        removed = atomicfiles.remove_leftovers(folder)  # a killed writer's half-written copies
        if removed:
            logger.warning("removed %d temporary file(s) left by a killed writer in %s", len(removed), folder)
    frames = {}
    if candidates:
        with cyc.step("ingestion"):
            result = ingestion.ingest(cfg, conn=conn, candidates=candidates)
        frames = result.frames
        rec.ingestion = result.as_dict()
        cyc.save(cycle_id)
    if ingestion.write_ingested_list(conn, cfg.ingested_list):  # a killed ingestion's list, before it is deployed
        logger.warning("%s lagged behind the history (an ingestion was killed): rewrote it", cfg.ingested_list)
    pending = cycle.pending_files(conn, covered)
    rec.pending_files = [f["name"] for f in pending]
    through = cycle.max_ingested_id(conn)
    try:
        if manifest is None:
            logger.info("cold start: nothing deployed yet; training on everything ingested")
            cyc.retrain()
            cyc.deploy(cycle_id, COLD_START)
            rec.decision = COLD_START
        elif pending:
            _check_and_act(cyc, cycle_id, pending, frames)
        elif candidates:  # every new file was quarantined
            rec.decision = NO_USABLE_ROWS
        rec.ingested_through = through
        cyc.save(cycle_id)
    except (deployment.DeploymentError, training.TrainingError, scoring.ScoringError, delivery.BadFile,
            NotImplementedError, OSError) as exc:
        _fail(rec, f"{type(exc).__name__}: {exc}")
        return
    current = deployment.current_manifest(cfg.prod_deployment_path)
    version = current["version"] if current else None
    if version is not None and version != published:
        with cyc.step("publish"):
            rec.published = cyc.publisher(cfg, rec)
        rec.published_version = version
        if rec.decision is None:
            rec.decision = PUBLISHED
    elif rec.decision is None:
        rec.decision = NO_NEW_DATA


def _finish(cfg, conn, rec, cycle_id, cyc):
    now = time.time()
    rec.finished_at = _iso(now)
    rec.seconds = round(time.perf_counter() - cyc.t0, 6)
    text = rec.to_json()
    # A cycle that found nothing to do is only logged: writing the database would cost a WAL
    # checkpoint with fsyncs on close, every ten minutes, for a row that says nothing happened.
    if cycle_id is not None:
        conn.execute("UPDATE cycles SET finished_at = ?, decision = ?, record = ? WHERE id = ?",
                     (now, rec.decision, text, cycle_id))
    _log_line(cfg, text)
    if rec.errors:
        logger.error("cycle finished with errors: %s", "; ".join(rec.errors))
    else:
        logger.info("cycle finished: %s (%.3fs)", rec.decision, rec.seconds)


def _log_line(cfg, text):
    """Append one cycle's JSON line to log_folder_path/cycles.jsonl."""
    cfg.log_folder_path.mkdir(parents=True, exist_ok=True)
    # One line, one write with O_APPEND: concurrent writers never interleave within a line.
    fd = os.open(cfg.log_folder_path / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def parse_args(argv=None):
    """The command line; the cron line's own form (nothing, or `--config PATH`) is read without argparse,
    whose imports (gettext, locale, shutil, bz2, lzma) cost the idle path ~8 ms."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if not argv or (len(argv) == 2 and argv[0] == "--config" and not argv[1].startswith("-")):
        return SimpleNamespace(config=argv[1] if argv else None, daemon=False, schedule=None, verbose=False), None
    import argparse

    parser = argparse.ArgumentParser(description="Run the monitoring cycle once, or on a schedule with --daemon.")
    parser.add_argument("--config", help="path to config.json (default: the one beside this script)")
    parser.add_argument("--daemon", action="store_true", help="run the cycle on cronjob.txt's schedule until stopped")
    parser.add_argument("--schedule", metavar="EXPR",
                        help="with --daemon: a crontab schedule instead of cronjob.txt's (a sixth, leading "
                             "field gives seconds, e.g. '*/2 * * * * *')")
    parser.add_argument("--verbose", "-v", action="store_true", help="print what the cycle found and did")
    args = parser.parse_args(argv)
    if args.schedule and not args.daemon:
        parser.error("--schedule needs --daemon")
    return args, parser


def main(argv=None):
    args, _ = parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.config)
        if args.daemon:
            return schedule.run_daemon(lambda: run_cycle(cfg), args.schedule or schedule.read_cronjob(), cfg.path)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rec = run_cycle(cfg)
    if args.verbose:
        print(cycle.describe(rec))
    return 1 if rec.errors else 0


if __name__ == "__main__":
    sys.exit(main())
