"""Alerts: what the cycle and the API tell a person, as a JSON POST to `alert_webhook_url`, once per change.

An alert follows a condition. When it starts to hold one event is sent, when it stops another
(its recovery), and nothing while it holds; a person reads `text` (Slack and most chat tools show
a JSON POST's `text` field):

    condition     event               recovery                  checked by
    cycle         cycle_failed        cycle_recovered           every cycle (idle ones included)
    quarantine    file_quarantined    quarantine_recovered      a cycle that found new files
    model         model_kept          model_kept_recovered      a cycle (kept: retrained but not promoted)
    live_drift    live_drift_act      live_drift_recovered      the API's monitoring flush thread
    estimated_f1  estimated_f1_low    estimated_f1_recovered    the API's monitoring flush thread
    deployment    redeployed          (news, not a condition)   the cycle that redeployed

Each condition's state is a row of the history database's `alerts` table, so "already said" holds
across cron runs, processes and API workers; a state changes inside one write transaction, so of
two processes seeing the same change one sends. In the API one process checks at a time (a lease
row, `api_sender`). A new quarantined file is news while the quarantine condition holds; the same
file delivered again (same name and hash) is not.

Delivery: at most `alert_budget_seconds` (3 s) in all per cycle or per API check, whatever the
receiver does: each POST has connect and read timeouts inside what is left, up to ATTEMPTS tries
with backoff, and the whole runs in a thread given up at the budget. A failed delivery is logged,
written to the alerts row (and the cycle record's `alerts`), and tried again at a later check
(after RETRY_SECONDS, at most MAX_TRIES times) while the state it announced still stands. Never
fatal, never on a request's path. The webhook URL is never logged (Slack's holds its secret).
"""
import json
import logging
import os
import threading
import time

import history
import words
from cycle import LOCKED, LOG_NAME, REDEPLOYED, known, last_logged

logger = logging.getLogger(__name__)

OK = "ok"
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 2.0
ATTEMPTS = 3
BACKOFF = (0.2, 0.5)  # seconds before the second and the third try
RETRY_SECONDS = 300.0
MAX_TRIES = 5
LEASE_SECONDS = 60.0
SEVERITY = {"cycle_failed": "critical", "file_quarantined": "warning", "model_kept": "warning",
            "live_drift_act": "warning", "estimated_f1_low": "warning", "redeployed": "info"}
ORDER = ("cycle", "quarantine", "model", "deployment", "live_drift", "estimated_f1")
CYCLE_CONDITIONS = ORDER[:4]  # the API's are live_drift and estimated_f1


def event(name, text, **details):
    """One webhook body: {"event", "severity", "text", "details"}."""
    return {"event": name, "severity": SEVERITY.get(name, "info"), "text": text, "details": details}


# ---------------------------------------------------------------------------------------------
# The state of each condition (history database, table `alerts`)
# ---------------------------------------------------------------------------------------------

# A condition's row replaced whole: its delivery columns start again.
_REPLACE = history.upsert_sql("alerts", ("condition",), ("condition", "state", "event", "payload", "changed_at", "memo",
                                                         "delivered", "tries", "attempts", "last_error",
                                                         "last_attempt_at"))


def _row(conn, condition):
    row = conn.execute("SELECT * FROM alerts WHERE condition = ?", (condition,)).fetchone()
    return dict(zip(row.keys(), row)) if row is not None else None


def _news(row, state, keys):
    if row is None:
        return state != OK  # nothing ever fired: "ok" is not news
    if row["state"] != state:
        return True
    return bool(set(keys) - set(json.loads(row["memo"])))


def change(conn, condition, state, build, keys=(), now=None):
    """Set `condition` to `state`; return (condition, event) to send when that is news, else None.

    News: a state other than the stored one, or with the same state a key (a quarantined file) not
    seen since it began. `build(previous_state, fresh_keys)` makes the event, or None to change
    the state silently."""
    keys = list(keys)
    if not _news(_row(conn, condition), state, keys):  # the common case: a read, no write
        return None
    with history.transaction(conn):
        row = _row(conn, condition)  # another process may have got there first
        if not _news(row, state, keys):
            return None
        seen = json.loads(row["memo"]) if row is not None and row["state"] == state else []
        fresh = [k for k in keys if k not in seen]
        ev = build(row["state"] if row is not None else None, fresh)
        conn.execute(_REPLACE, (condition, state, ev["event"] if ev else "", json.dumps(ev) if ev else "",
                                now or time.time(), json.dumps(seen + fresh), None, 0, 0, None, None))
    return (condition, ev) if ev is not None else None


def state_of(conn, condition):
    row = _row(conn, condition)
    return row["state"] if row is not None else None


def retries(conn, now=None):
    """(condition, event) of the announcements whose delivery failed, due to be tried again."""
    now = now or time.time()
    rows = conn.execute(
        "SELECT condition, payload FROM alerts WHERE payload != '' AND delivered = 0 AND tries < ?"
        " AND (last_attempt_at IS NULL OR last_attempt_at < ?)", (MAX_TRIES, now - RETRY_SECONDS)).fetchall()
    return [(r[0], json.loads(r[1])) for r in rows]


def record_delivery(conn, condition, ev, outcome, now=None):
    """Write a delivery's outcome on the condition's row (when it still announces that event)."""
    conn.execute("UPDATE alerts SET delivered = ?, tries = tries + 1, attempts = attempts + ?, last_error = ?,"
                 " last_attempt_at = ? WHERE condition = ? AND event = ?",
                 (int(outcome["delivered"]), outcome["attempts"], outcome["error"], now or time.time(),
                  condition, ev["event"]))


def conditions(conn):
    """{condition: state} of every condition recorded (the lease left out)."""
    return {r[0]: r[1] for r in conn.execute("SELECT condition, state FROM alerts WHERE condition != 'api_sender'")}


# ---------------------------------------------------------------------------------------------
# Delivery
# ---------------------------------------------------------------------------------------------

def _reason(exc):
    """A delivery error in a few words, without the URL (it may hold a secret)."""
    import re  # lazy: the idle cycle does without it

    import requests

    if isinstance(exc, requests.ConnectTimeout):
        return "connect timed out"
    if isinstance(exc, requests.ReadTimeout):
        return "read timed out"
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    if found:
        return found.group(1).strip().lower()
    for kind, text in ((requests.TooManyRedirects, "too many redirects"),
                       (requests.exceptions.SSLError, "its TLS certificate was refused"),
                       (requests.ConnectionError, "cannot connect"),
                       (requests.exceptions.InvalidURL, "the URL is not valid")):
        if isinstance(exc, kind):
            return text
    return "the request failed"  # its own text may hold the URL


def deliver(url, events, budget):
    """POST each event to `url`, all within `budget` seconds; one outcome per event:
    {"event", "delivered", "attempts", "error", "seconds"}."""
    outcomes = [{"event": ev["event"], "delivered": False, "attempts": 0,
                 "error": "not tried: the time budget was spent", "seconds": 0.0} for ev in events]
    started = time.monotonic()
    deadline = started + budget

    def work():
        import requests  # lazy: the idle cycle sends nothing and imports no HTTP client

        with requests.Session() as session:
            for ev, out in zip(events, outcomes):
                t0 = time.monotonic()
                for attempt in range(ATTEMPTS):
                    left = deadline - time.monotonic()
                    if left < 0.05:
                        break
                    out["attempts"] += 1
                    try:
                        answer = session.post(url, json=ev, allow_redirects=False,
                                              timeout=(min(CONNECT_TIMEOUT, left), min(READ_TIMEOUT, left)))
                    except requests.RequestException as exc:
                        out["error"] = _reason(exc)
                    else:
                        answer.close()
                        if 200 <= answer.status_code < 300:
                            out["delivered"], out["error"] = True, None
                            break
                        out["error"] = f"HTTP {answer.status_code}"
                        if answer.status_code < 500 and answer.status_code != 429:
                            break  # the receiver refuses this body: trying again changes nothing
                    if attempt < len(BACKOFF):
                        time.sleep(max(0.0, min(BACKOFF[attempt], deadline - time.monotonic())))
                out["seconds"] = round(time.monotonic() - t0, 3)

    worker = threading.Thread(target=work, name="alert-delivery", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()) + 0.25)
    result = [dict(out) for out in outcomes]  # a copy: a given-up thread may still write its own
    if worker.is_alive():
        for out in result:
            if not out["delivered"]:
                out["error"] = f"gave up after the {budget:g} s budget ({out['error']})"
    for out in result:
        if not out["delivered"]:
            logger.warning("alert %s not delivered to the webhook: %s", out["event"], out["error"])
    return result


def send(cfg, conn, pending):
    """Deliver the (condition, event) pairs within the budget and record each outcome; the outcomes."""
    if not pending or not cfg.alert_webhook_url:
        return []
    pending = sorted(pending, key=lambda p: ORDER.index(p[0]) if p[0] in ORDER else len(ORDER))
    outcomes = deliver(cfg.alert_webhook_url, [ev for _, ev in pending], cfg.alert_budget_seconds)
    if conn is not None:
        for (condition, ev), out in zip(pending, outcomes):
            try:
                record_delivery(conn, condition, ev, out)
            except history.Error as exc:
                logger.warning("cannot record the delivery of alert %s: %s", ev["event"], words.error_text(exc))
    return outcomes


# ---------------------------------------------------------------------------------------------
# The cycle's conditions
# ---------------------------------------------------------------------------------------------

KEPT = "drift: retrained"  # the decisions of a retrained model not promoted start so (cycle.GATE_KEPT, ...)


def _quarantine_key(q):
    """The same file delivered again is the same news: its name and the hash in its quarantine name
    (ingestion.quarantine_target: TIMESTAMP-HASH-NAME)."""
    parts = str(q["moved_to"]).rsplit("/", 1)[-1].split("-", 2)
    return f"{parts[1]}-{q['name']}" if len(parts) == 3 else str(q["moved_to"])


def _cycle_events(conn, rec, previous_failed, now):
    found = []
    serving = known(rec.deployed_version)
    where = f"the model serving is version {serving}" if serving is not None else "no model is deployed"

    def failed(prev, _):
        if prev == "failed" or previous_failed:
            return None  # already said (a failure the database could not hold is in the log)
        return event("cycle_failed", f"The monitoring cycle failed: {'; '.join(rec.errors)}. "
                     f"The next cycle tries again on schedule; {where}.", errors=list(rec.errors), decision=rec.decision,
                     started_at=known(rec.started_at), cycle_id=known(rec.cycle_id), deployed_version=serving,
                     config=known(rec.config))

    def recovered(prev, _):
        return event("cycle_recovered", f"The monitoring cycle works again: the cycle started at "
                     f"{known(rec.started_at)} finished without errors ({rec.decision}); {where}.",
                     decision=rec.decision, started_at=known(rec.started_at), cycle_id=known(rec.cycle_id),
                     deployed_version=serving)

    if rec.errors:
        found.append(change(conn, "cycle", "failed", failed, now=now))
    elif previous_failed and state_of(conn, "cycle") != "failed":
        # the failure was only in the log (the database could not be opened): recover from there
        change(conn, "cycle", "failed", lambda p, k: None, now=now)
        found.append(change(conn, "cycle", OK, recovered, now=now))
    else:
        found.append(change(conn, "cycle", OK, recovered, now=now))

    ingestion = known(rec.ingestion) or {}
    bad = ingestion.get("quarantined") or []
    if bad:
        by_path = {_quarantine_key(q): q for q in bad}

        def quarantined(prev, fresh):
            files = [by_path[k] for k in fresh]
            words = "; ".join(f"{q['name']}: {q['reason']}" for q in files)
            where_to = ", ".join(q["moved_to"] for q in files)
            return event("file_quarantined", f"{len(files)} delivery file{'s were' if len(files) > 1 else ' was'} "
                         f"quarantined and not ingested ({words}). Moved to {where_to}; correct the file and "
                         f"deliver it again.", files=files, cycle_id=known(rec.cycle_id))

        found.append(change(conn, "quarantine", "quarantined", quarantined, keys=list(by_path), now=now))
    elif ingestion.get("ingested"):
        names = ", ".join(f["name"] if isinstance(f, dict) else str(f) for f in ingestion["ingested"])
        found.append(change(conn, "quarantine", OK, lambda p, k: event(
            "quarantine_recovered", f"Deliveries are ingested again: {names} ingested with nothing quarantined.",
            ingested=names, cycle_id=known(rec.cycle_id)), now=now))

    decision = rec.decision or ""
    if decision.startswith(KEPT):
        gate = known(rec.gate)
        why = f" {gate.reason}." if gate else ""
        retrained = known(rec.retrained)
        f1 = retrained.test_metrics.get("f1") if retrained else None
        found.append(change(conn, "model", f"kept:{serving}", lambda p, k: event(
            "model_kept", f"A retrained model was not deployed: {decision}.{why} Version {serving} keeps serving; "
            "review the cycle's report and promote by hand if the new model is right.", decision=decision,
            serving_version=serving, retrained_test_f1=f1, gate=gate.to_dict() if gate else None,
            cycle_id=known(rec.cycle_id)), now=now))
    else:
        kept = state_of(conn, "model")
        if kept and kept.startswith("kept:") and kept != f"kept:{serving}":
            found.append(change(conn, "model", OK, lambda p, k: event(
                "model_kept_recovered", f"Version {serving} is now serving: the retrained model kept out while "
                f"version {p[5:]} served is no longer waiting for review.", serving_version=serving), now=now))

    if decision == REDEPLOYED and serving is not None:
        sd = known(rec.score_drift) or {}
        retrained = known(rec.retrained)
        f1 = retrained.test_metrics.get("f1") if retrained else None
        reason = f" ({sd['reason']})" if sd.get("reason") else ""
        found.append(change(conn, "deployment", f"version {serving}", lambda p, k: event(
            "redeployed", f"Model version {serving} is now serving, replacing version {known(rec.previous_version)}: "
            f"the cycle found drift{reason} and retrained" + (f"; test F1 {f1:.4f}." if f1 is not None else "."),
            deployed_version=serving, previous_version=known(rec.previous_version), test_f1=f1,
            score_drift_reason=sd.get("reason"), cycle_id=known(rec.cycle_id)), now=now))
    return [f for f in found if f is not None]


def after_cycle(cfg, conn, rec, previous):
    """The cycle's alerts: record its conditions, send what is news (and what is due again) within
    the budget; the delivery outcomes, for the cycle record. `conn` is None when the history
    database cannot be opened: then only a failure is sent, unless the `previous` logged cycle
    (cycle.last_logged) had failed too. Never raises."""
    if rec.decision == LOCKED:
        return []
    previous_failed = bool(previous and previous.get("errors"))
    try:
        if conn is None:
            if not rec.errors or previous_failed:
                return []
            ev = event("cycle_failed", f"The monitoring cycle failed: {'; '.join(rec.errors)}. The next "
                       "cycle tries again on schedule.", errors=list(rec.errors), decision=rec.decision,
                       started_at=rec.started_at, cycle_id=None, deployed_version=rec.deployed_version,
                       config=rec.config)
            return send(cfg, None, [("cycle", ev)])
        now = time.time()
        found = _cycle_events(conn, rec, previous_failed, now)
        due = [r for r in retries(conn, now) if r[0] in CYCLE_CONDITIONS and r[0] not in {c for c, _ in found}]
        return send(cfg, conn, found + due)
    except (history.Error, OSError, ValueError) as exc:
        logger.warning("alerts not checked: %s", words.error_text(exc))
        return []


# ---------------------------------------------------------------------------------------------
# The API's conditions: checked by the monitoring flush thread (monitoring.Monitor.watchers)
# ---------------------------------------------------------------------------------------------

def _estimate(win):
    """The window's estimated F1 as a number, or None."""
    value = win.get("estimated_f1")
    if isinstance(value, dict):
        value = value.get("estimated_f1")
    return value if isinstance(value, (int, float)) else None


def _process_name():
    import uuid  # lazy: only the API needs it

    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


class ApiWatch:
    """The API's alerts (live drift at "act", estimated F1 too low), one process at a time."""

    def __init__(self, cfg, monitor):
        self.cfg = cfg
        self.monitor = monitor
        self.me = _process_name()
        self._conn = None
        self._pid = os.getpid()
        self._renewed = -1e18

    def _db(self):
        if self._conn is None or self._pid != os.getpid():  # a forked worker opens its own
            self._conn, self._pid = history.connect(self.cfg.history), os.getpid()
            self.me = _process_name()
        return self._conn

    def close(self):
        """Close this process's history connection (Monitor.close does, after the flush thread's last pass)."""
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():  # one a forked worker inherited is its parent's
            conn.close()

    def _lease(self, conn, now):
        """Whether this process is the API's sender (a lease renewed every LEASE_SECONDS / 3)."""
        if now - self._renewed < LEASE_SECONDS / 3:
            return True
        with history.transaction(conn):
            row = _row(conn, "api_sender")
            if row is not None and row["state"] != self.me and row["changed_at"] > now - LEASE_SECONDS:
                return False
            conn.execute(_REPLACE, ("api_sender", self.me, "", "", now, "[]", None, 0, 0, None, None))
        self._renewed = now
        return True

    def __call__(self):
        """One check (the flush thread calls it after each flush); the delivery outcomes."""
        if not self.cfg.alert_webhook_url:
            return []
        now = time.time()
        conn = self._db()
        if not self._lease(conn, now):
            return []
        status = self.monitor.status
        version = status.get("model_version")
        if not version:
            return []
        found = [self._live_drift(conn, status, version, now), self._estimated_f1(conn, version, now)]
        found = [f for f in found if f is not None]
        due = [r for r in retries(conn, now) if r[0] in ("live_drift", "estimated_f1")
               and r[0] not in {c for c, _ in found}]
        return send(self.cfg, conn, found + due)

    def _live_drift(self, conn, status, version, now):
        if status["level"] == "act":
            psi = status.get("psi") or {}
            worst = max(psi, key=psi.get) if psi else None
            at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(status["window_start"] or now))
            words = f"{worst} has PSI {psi[worst]:.3f}" if worst else "the inputs moved"
            return change(conn, "live_drift", "act", lambda p, k: event(
                "live_drift_act", f"Live input drift at \"act\" on model version {version}: {words} over "
                f"{status['rows']} rows in the window of {at}. /health says degraded; the API keeps answering.",
                model_version=version, psi=psi, rows=status["rows"], window_start=status["window_start"]), now=now)
        return change(conn, "live_drift", OK, lambda p, k: event(
            "live_drift_recovered", f"Live input drift on model version {version} is below \"act\" again "
            f"(level {status['level']}).", model_version=version, level=status["level"]), now=now)

    def _estimated_f1(self, conn, version, now):
        import deployment  # lazy: the idle cycle imports alerts, not the deployment's audit
        import traffic  # lazy: numpy, which the idle cycle never imports

        manifest = deployment.current_manifest(self.cfg.prod_deployment_path, missing_ok=True)
        if manifest is None or manifest["version"] != version or manifest["metrics"].get("f1") is None:
            return None
        test_f1 = float(manifest["metrics"]["f1"])
        window = self.cfg.monitoring_window_seconds
        since = now - now % window - 2 * window
        ro = history.connect_ro(self.cfg.history)
        try:
            wins = traffic.recent_windows(ro, self.cfg, version=version, limit=3, since=since,
                                          refs=self.monitor.references()) if ro is not None else []
        finally:
            if ro is not None:
                ro.close()
        win = next((w for w in wins if w["rows"] >= self.cfg.monitoring_min_rows and _estimate(w) is not None), None)
        margin = self.cfg.alert_f1_margin
        if win is not None and _estimate(win) < test_f1 - margin:
            est = _estimate(win)
            return change(conn, "estimated_f1", "low", lambda p, k: event(
                "estimated_f1_low", f"The estimated live F1 of model version {version} is {est:.3f}, below its "
                f"test F1 {test_f1:.3f} by {test_f1 - est:.3f} (alert_f1_margin {margin:g}), over {win['rows']} "
                "rows. The estimate assumes the relation between activity and leaving has not changed; only "
                "labelled deliveries can show that.", model_version=version, estimated_f1=est, test_f1=test_f1,
                margin=margin, rows=win["rows"], window_start=win["window_start"]), now=now)
        words = (f"{_estimate(win):.3f}, within {margin:g} of" if win is not None
                 else "not judged (no recent window with enough rows), last seen below")
        return change(conn, "estimated_f1", OK, lambda p, k: event(
            "estimated_f1_recovered", f"The estimated live F1 of model version {version} is {words} its test F1 "
            f"{test_f1:.3f}.", model_version=version, estimated_f1=_estimate(win) if win else None,
            test_f1=test_f1), now=now)


# ---------------------------------------------------------------------------------------------
# For /metrics (monitoring.metrics_text registers it)
# ---------------------------------------------------------------------------------------------

class Gauges:
    """Gauges read when scraped: the last cycle's outcome and age (from cycles.jsonl, idle cycles
    included), the conditions' states, the serving model's test F1."""

    def __init__(self, cfg, version):
        self.cfg = cfg
        self.version = version

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        log = self.cfg.log_folder_path / LOG_NAME
        last = last_logged(log)
        try:
            age = time.time() - log.stat().st_mtime
        except OSError:
            age = float("nan")
        yield GaugeMetricFamily("dras_last_cycle_failed", "1 when the last monitoring cycle (idle ones included) "
                                "finished with errors, 0 when not, NaN before any",
                                value=float(bool(last.get("errors"))) if last else float("nan"))
        yield GaugeMetricFamily("dras_seconds_since_last_cycle_run", "Seconds since a monitoring cycle last ran "
                                "(any outcome, idle ones included; NaN: none yet)", value=age)
        states = GaugeMetricFamily("dras_alert_condition", "1 while the alert condition holds (alerts.py), 0 when "
                                   "not", labels=["condition"])
        conn = history.connect_ro(self.cfg.history)
        if conn is not None:
            try:
                for name, state in sorted(conditions(conn).items()):
                    if name != "deployment":
                        states.add_metric([name], 0.0 if state == OK else 1.0)
            except history.OperationalError:  # a database older than the alerts table
                pass
            finally:
                conn.close()
        yield states
        f1 = GaugeMetricFamily("dras_model_test_f1", "The test F1 recorded with the serving model",
                               labels=["model_version"])
        if self.version is not None:
            import deployment  # lazy, as above

            manifest = deployment.current_manifest(self.cfg.prod_deployment_path, missing_ok=True)
            if manifest is not None and manifest["version"] == self.version and manifest["metrics"].get("f1") is not None:
                f1.add_metric([str(self.version)], float(manifest["metrics"]["f1"]))
        yield f1
