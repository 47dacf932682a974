"""The monitoring cycle: new data? then ingest, check drift, retrain, redeploy, report.

    python fullprocess.py [--config PATH]            one cycle (what cron runs every ten minutes)
    python fullprocess.py --daemon [--schedule EXPR] the same cycle on cronjob.txt's schedule

One cycle (README, "The monitoring cycle"):
1. take the writer lock (locks.py: a flock on output_folder_path/.writer.lock, or an advisory
   lock in the PostgreSQL history, which every
   writing entry point takes); if another cycle or writer holds it, log that and exit 0 at once;
2. look for delivery files whose content has not been ingested (history database); none, and no
   unfinished work: log "no new data" and exit 0. This path imports no pandas, scikit-learn or
   scipy: it runs every ten minutes and must take milliseconds;
3. nothing deployed yet: ingest everything, train, score, deploy, publish;
4. otherwise ingest the new files, decide score drift (config `drift_test`) and feature drift on
   their rows, and on drift retrain, score, deploy (behind the optional promotion gate) and
   publish the report and the API returns;
5. record the cycle in the history database (`cycles`) and as one JSON line in
   log_folder_path/cycles.jsonl.

Crash safety: every step leaves the files consistent on its own (ingestion appends to
finaldata.csv before recording its new length, and the next run cuts the file back to the
recorded length before it ingests the same files again; a deployment builds its version
folder under a temporary name and swaps a symlink). What a cycle still owes is derived from the
history at the start of the next one: ingested files no finished cycle has decided on
("pending"), and a deployed version no cycle has published. A cycle killed at any point is
finished by the next.
"""
import json
import logging
import os
import sys
import time
from contextlib import closing, contextmanager
from pathlib import Path
from types import SimpleNamespace

import alerts
import archive
import atomicfiles
import cycle
import cycledata
import delivery
import deployment
import finaldata
import history
import ingestion
import locks
import schedule
import words
from cycle import (COLD_START, FAILED, LOG_NAME, NO_DATA_YET, NO_NEW_DATA, NO_USABLE_ROWS, PUBLISHED, CycleRecord,
                   Gate, Retrained, known)
from settings import FEATURES, TARGET, ConfigError, load_config, rotate_logs, setup_logging

logger = logging.getLogger(__name__)


def _iso(t):
    """UTC ISO 8601 with milliseconds, as datetime would write it (without importing it)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}+00:00"


@contextmanager
def cycle_lock(where, who="fullprocess.py"):
    """Hold the writer lock at `where` (the config's writer_lock) without waiting; yield whether we
    got it, having logged whom it is held by when not.

    Never re-entrant: a cycle does not run inside another writer, even in the same thread. The
    kernel (or the PostgreSQL server) drops the lock when the process dies, however it dies, so a
    killed cycle never leaves a stale lock behind. Raises locks.Unreachable when the PostgreSQL
    server that keeps it does not answer.
    """
    try:
        release = locks.acquire(where, who, wait=0, reentrant=False)
    except locks.Unreachable:
        raise
    except locks.Busy as exc:
        logger.info("another %s holds %s, %s: exiting", "cycle" if "(fullprocess.py" in exc.holder else "writer",
                    locks.describe(where), exc.holder)
        yield False
        return
    try:
        yield True
    finally:
        release()


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


class Cycle:
    """One run of the cycle: the record it builds, its timings, and the steps."""

    def __init__(self, cfg, conn, publisher):
        self.cfg = cfg
        self.conn = conn
        self.publisher = publisher
        self.t0 = time.perf_counter()
        self.failed_step = None  # the step an exception left (named in the failure)
        self.record = CycleRecord.start(_iso(time.time()), str(cfg.path))

    @contextmanager
    def step(self, name):
        started = time.perf_counter()
        logger.info("step: %s", name)
        try:
            yield
        except BaseException:
            self.failed_step = name
            raise
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

    def retrain(self, rows=None, window=None, span=None):
        # lazy: the idle cycle imports no pandas or scikit-learn
        import scoring
        import training

        with self.step("training"):
            meta = self.trained = training.run(self.cfg, self.conn, rows=rows, window=window, span=span)
        with self.step("scoring"):
            metrics = scoring.run(self.cfg, self.conn)
        self.record.retrained = Retrained(meta["training_rows"], meta["model_sha256"], metrics)
        serving = deployment.current_manifest(self.cfg.prod_deployment_path, missing_ok=True)
        before = (serving or {}).get("metrics", {}).get("f1")
        judged = self.cfg.promotion_gate and self.cfg.drift_test == "sequential"  # the comparisons say it all
        if before is not None and metrics["f1"] < before and not judged:
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

    def decide(self, model, manifest, new_df, reference, held_out_df=None, first_file_id=None):
        """Score and feature drift of the new rows against the deployed model; sets the record."""
        # lazy: the idle cycle imports no numpy, pandas or scikit-learn
        import audit
        import drift
        import scoring

        cfg = self.cfg
        complete = new_df.dropna(subset=list(FEATURES) + [TARGET])
        self.record.new_rows = {"rows": int(len(new_df)), "complete": int(len(complete))}
        with self.step("feature_drift"):
            if reference is not None and len(reference):
                self.record.feature_drift = drift.feature_drift(
                    reference, new_df, psi_threshold=cfg.feature_drift_psi_threshold,
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
            if cfg.drift_test == "sequential":
                decision = self._sequential(model, manifest, complete, X, y, deployed_f1, first_file_id)
            else:
                decision = drift.score_drift(
                    cfg.drift_test, model, complete, reference_rows, deployed_f1=deployed_f1,
                    history=cycledata.deployed_history(self.conn), level=cfg.drift_significance_level,
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

    def _sequential(self, model, manifest, complete, X_test, y_test, deployed_f1, first_file_id):
        """The sequential test on everything delivered since the deployment; sets the record's
        evidence (written with the record by _finish) and test_data."""
        import atomicfiles
        import decisions  # lazy: numpy
        import drift

        state = decisions.load_state(self.conn)
        X = complete[list(FEATURES)].astype("float64")
        y = complete[TARGET].astype("int64").to_numpy()
        pred = model.predict(X)
        sha = atomicfiles.sha256_file(self.cfg.test_data_file)
        oof = decisions.out_of_fold(manifest.get("training"), self.cfg.drift_reference_cross_validation)
        state, look, facts = decisions.look_at_delivery(state, model, X_test, y_test.to_numpy(), sha, y, pred,
                                                        first_file_id, self.cfg.drift_significance_level, oof)
        self.record.evidence = state
        ev = state["evidence"]
        facts["stale"] = cycle.stale_test_data(look["evidence_f1"], facts["serving_f1"], ev["counted"])
        if facts["stale"]:
            facts["reason"] = (f"the test data no longer represent the deliveries: the serving model scores F1 "
                               f"{look['evidence_f1']:.2f} on the {ev['rows']} rows delivered since its deployment "
                               f"but {facts['serving_f1']:.2f} on the {facts['rows']} test rows; refresh the test "
                               f"data ({self.cfg.test_data_file}) with recently labelled rows")
            logger.warning("%s", facts["reason"])
        self.record.test_data = facts
        new_f1 = decisions._f1(y, pred)
        return drift.sequential_decision(look, new_f1, deployed_f1)

    def reset_evidence(self):
        """The sequential test's state of the model just deployed: its reference is its outcomes on
        the test data as they are now (their hash recorded: a later change is evidence)."""
        if self.cfg.drift_test != "sequential":
            return
        import atomicfiles
        import decisions  # lazy: numpy
        import scoring

        model, manifest = deployment.load_deployed(self.cfg.prod_deployment_path)
        X, y = scoring.read_test_data(self.cfg.test_data_file)
        self.record.evidence = decisions.fresh_state(
            y.to_numpy(), model.predict(X), atomicfiles.sha256_file(self.cfg.test_data_file),
            decisions.out_of_fold(manifest.get("training"), self.cfg.drift_reference_cross_validation))

    def challenge(self, cycle_id, serving):
        """Train a challenger on the rows since the deployment minus a held-out slice; judge it on
        that slice and the test data (decisions.challenge); deploy it, or keep it for
        `deployment.py --promote`. Returns the decision."""
        import decisions  # lazy: numpy, pandas, scikit-learn
        import scoring

        cfg, rec = self.cfg, self.record
        first = (known(rec.evidence) or {}).get("since_file_id")
        start, end = cycledata.span_since(self.conn, first)
        recent = cycledata.rows_between(cfg, start, end)
        recent = recent.dropna(subset=list(FEATURES) + [TARGET])
        X_test, y_test = scoring.read_test_data(cfg.test_data_file)
        window = f"{len(recent)} rows delivered since the serving model's deployment, minus the held-out slice"
        # what --reproduce rebuilds the challenger's training rows from (reproduce.training_rows)
        span = {"rows": [start[0], end[0]], "held_out_share": decisions.HELD_OUT_SHARE, "held_out_seed": int(cycle_id)}

        def fit(rows):
            self.retrain(rows=rows, window=window, span=span)
            return scoring.load_pickle(cfg.model_file)

        command = decisions.promote_command(cfg.path)
        with self.step("challenge"):
            out = decisions.challenge(serving, recent, X_test, y_test.to_numpy(), fit,
                                      level=cfg.drift_significance_level, rounds=cfg.drift_bootstrap_rounds,
                                      seed=int(cycle_id), command=command)
        policy = dict(out["policy"], split=out["split"])
        decided = cycle.promotion_decision(None, policy)
        if decided == cycle.REDEPLOYED:
            policy["model"] = (f"deployed the evaluated challenger (trained on {rec.retrained.training_rows} of "
                               f"the {len(recent)} rows since the deployment; the held-out slice never trained on)")
            self.deploy(cycle_id, decided)
            # The new model's reference: its outcomes on the held-out slice and the test data, never
            # trained on, and its cross-validation's out-of-fold outcomes.
            oof = decisions.out_of_fold(self.trained, cfg.drift_reference_cross_validation)
            rec.evidence = decisions.reference_state({**out["reference_parts"], "cross-validation": oof},
                                                     (known(rec.test_data) or {}).get("sha256"))
        else:
            path = decisions.keep_challenger(cfg, {"cycle_id": cycle_id, "decision": decided, "promotion": policy})
            policy["model"] = f"kept the serving model; the challenger is saved as {path}"
            if policy.get("action") is None and (known(rec.test_data) or {}).get("stale"):
                policy["action"] = (f"refresh the test data ({cfg.test_data_file}) with recently labelled rows: they no "
                                    "longer represent the deliveries (the next cycle re-scores the serving model on "
                                    f"them); or promote the challenger by hand with `{command}`")
            elif policy.get("action") is None:
                policy["action"] = ("nothing: the next deliveries gather new evidence; to serve the challenger "
                                    f"anyway, `{command}`")
            rec.evidence = cycle.evidence_after(decided, known(rec.evidence))
        rec.promotion = policy
        logger.info("promotion: %s", policy["reason"])
        return decided

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


def run_cycle(cfg, publisher=None, who="fullprocess.py") -> CycleRecord:
    """Run one cycle under the writer lock; return its record (decision "locked" when another cycle
    or writer holds it). `who` names the entry point in the lock file."""
    try:
        with cycle_lock(cfg.writer_lock, who) as held:
            if not held:
                return CycleRecord.locked()
            rotate_logs(cfg.log_folder_path, cfg.log_max_bytes, cfg.log_backups)
            try:
                conn = history.connect(cfg.history)
            except (history.Error, OSError) as exc:  # a read-only or full output folder, a server down
                return _unopened(cfg, f"cannot open the history database {cfg.history}: {exc}")
            with closing(conn):
                return _run_locked(cfg, conn, publisher or publish)
    except locks.Unreachable as exc:
        return _unopened(cfg, str(exc))


def _unopened(cfg, reason):
    """The record of a cycle that could not reach its history (or its lock): logged and alerted, never recorded."""
    started = time.time()
    rec = CycleRecord.start(_iso(started), str(cfg.path))
    rec.decision = FAILED
    rec.errors.append(reason)
    manifest = deployment.current_manifest(cfg.prod_deployment_path, missing_ok=True)
    rec.previous_version = rec.deployed_version = manifest["version"] if manifest else None
    logger.error("cycle failed: %s", rec.errors[0])
    _alerts(cfg, None, rec)
    rec.finished_at = _iso(time.time())
    rec.seconds = round(time.time() - started, 6)
    _log_line(cfg, rec.to_json())
    return rec


def _run_locked(cfg, conn, publisher):
    cyc = Cycle(cfg, conn, publisher)
    rec = cyc.record
    if missing := cycle.missing_input(cfg):  # a typo in the config must not look like "no new data" forever
        _fail(rec, missing)
        manifest = deployment.current_manifest(cfg.prod_deployment_path, missing_ok=True)
        rec.deployed_version = rec.previous_version = manifest["version"] if manifest else None
        _finish(cfg, conn, rec, None, cyc)
        return rec
    with cyc.step("look"):
        interrupted = cycle.mark_interrupted(conn)
        state = cycle.last_state(conn)
        found = ingestion.look(conn, cfg.input_folder_path, cfg.ingest_settle_seconds)
        candidates = found.candidates
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
    rec.duplicates, rec.waiting = found.duplicates or cycle.UNSET, found.waiting or cycle.UNSET
    if interrupted:
        rec.recovered = interrupted
    nothing_owed = max_id <= covered and published == current_version
    if not candidates and (nothing_owed if manifest else not cfg.finaldata.exists()):
        rec.decision = NO_NEW_DATA if manifest else NO_DATA_YET
        rec.ingested_through = max_id
        rec.published_version = published
        rec.deployed_version = rec.previous_version = current_version
        logger.info("%s in %s%s", rec.decision, cfg.input_folder_path,
                    "".join(f"; {ingestion.duplicate_text(d)}" for d in found.duplicates))
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
        _fail(rec, cycle.failure_text(cyc.failed_step, words.error_text(exc), unexpected=True))
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


def _check_and_act(cyc, cycle_id, pending, frames):
    """The pending files' drift check, and on drift retraining and (behind the gate) redeployment."""
    cfg, conn, rec = cyc.cfg, cyc.conn, cyc.record
    new_df = cycledata.pending_frames(pending, frames)
    if new_df is None:
        rec.decision = NO_USABLE_ROWS
        return
    with cyc.step("reference_rows"):
        reference = cycledata.reference_rows(cfg, conn, pending)
        held_out = None
        if cfg.drift_test == "significance":  # the only test they widen: no other reads them
            held_out = cycledata.held_out(cfg, conn, pending, reference)
            rec.held_out_rows = 0 if held_out is None else int(len(held_out))
    model, manifest = deployment.load_deployed(cfg.prod_deployment_path)
    decision, complete = cyc.decide(model, manifest, new_df, reference, held_out, first_file_id=pending[0]["id"])
    # Online monitoring: a judged look at "act" since the last cycle (alarms.py, traffic.crossings_since).
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
        logger.info("live input drift at act (the alarm's test) since the last cycle triggers retraining")
    cyc.save(cycle_id)
    if cfg.promotion_gate and cfg.drift_test == "sequential":  # the default: promotion on held-out evidence
        rec.decision = cyc.challenge(cycle_id, model)
        return
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
    for folder in (cfg.output_folder_path, archive.folder_of(cfg), finaldata.index_folder(cfg), cfg.output_model_path,
                   cfg.quarantine_folder_path):
        removed = atomicfiles.remove_leftovers(folder)  # a killed writer's half-written copies
        if removed:
            logger.warning("removed %d temporary file(s) left by a killed writer in %s", len(removed), folder)
    finaldata.cut_back(cfg, conn)  # the rows of an ingestion killed before its record (its files may be gone since)
    frames = {}
    if candidates:
        with cyc.step("ingestion"):
            try:
                result = ingestion.ingest(cfg, conn=conn, candidates=candidates)
            except finaldata.Unrecoverable as exc:
                _fail(rec, str(exc))
                return
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
            cyc.reset_evidence()
        elif pending:
            _check_and_act(cyc, cycle_id, pending, frames)
        elif candidates:  # every new file was quarantined
            rec.decision = NO_USABLE_ROWS
        rec.ingested_through = through
        cyc.save(cycle_id)
    except (deployment.DeploymentError, training.TrainingError, scoring.ScoringError, delivery.BadFile,
            NotImplementedError, OSError) as exc:
        _fail(rec, cycle.failure_text(cyc.failed_step, words.error_text(exc)))
        return
    current = deployment.current_manifest(cfg.prod_deployment_path)
    version = current["version"] if current else None
    # A kept challenger is a decision a person should read: the report is published with it too.
    if version is not None and (version != published or rec.decision in (cycle.KEPT, cycle.NEEDS_REVIEW)):
        with cyc.step("publish"):
            rec.published = cyc.publisher(cfg, rec)
        rec.published_version = version
        if rec.decision is None:
            rec.decision = PUBLISHED
    elif rec.decision is None:
        rec.decision = NO_NEW_DATA


def _alerts(cfg, conn, rec):
    """Tell the webhook what is news (alerts.py), within its time budget; the outcomes go in the record."""
    sent = alerts.after_cycle(cfg, conn, rec, cycle.last_logged(cfg.log_folder_path / LOG_NAME))
    if sent:
        rec.alerts = sent


def _finish(cfg, conn, rec, cycle_id, cyc):
    _alerts(cfg, conn, rec)
    now = time.time()
    rec.finished_at = _iso(now)
    rec.seconds = round(time.perf_counter() - cyc.t0, 6)
    text = rec.to_json()
    # A cycle that found nothing to do is only logged: writing the database would cost a WAL
    # checkpoint with fsyncs on close, every ten minutes, for a row that says nothing happened.
    if cycle_id is not None:
        # The drift evidence and the record of the delivery it holds: one transaction, so a crash
        # leaves both (the delivery decided) or neither (the next cycle decides it again).
        with history.transaction(conn):
            conn.execute("UPDATE cycles SET finished_at = ?, decision = ?, record = ? WHERE id = ?",
                         (now, rec.decision, text, cycle_id))
            if rec.evidence and not rec.errors:
                import decisions  # lazy: only a cycle that looked at a delivery gets here

                decisions.write_state(conn, cycle_id, rec.evidence)
    _log_line(cfg, text)
    if not rec.errors:  # an error was logged when it happened (_fail): once is enough
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
            return schedule.run_daemon(lambda: run_cycle(cfg, who="fullprocess.py --daemon"),
                                       args.schedule or schedule.read_cronjob(), cfg.path,
                                       heartbeat=cfg.log_folder_path / schedule.HEARTBEAT)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rec = run_cycle(cfg)
    if args.verbose:
        print(cycle.describe(rec))
    if rec.errors:  # 2: the user's mistake (the only error); 1: the cycle ran and failed
        return 2 if rec.errors == [cycle.missing_input(cfg)] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
