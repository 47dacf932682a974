"""Alerts: a webhook receiver on loopback gets each event once, from real cycle processes and from the API's check."""
import json
import threading
import time
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import make_config, write_delivery
from helpers import free_port, query, run

import alerts
import history
from cycle import CycleRecord, Gate, Retrained
from settings import ConfigError, load_config


@contextmanager
def receiver(delay=0.0, status=200):
    """An HTTP server on 127.0.0.1 that keeps the JSON bodies POSTed to it (after `delay` seconds)."""
    got = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(delay)
            got.append((self.path, self.headers["Content-Type"], json.loads(body)))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", got
    finally:
        server.shutdown()
        server.server_close()


def bodies(got):
    assert all(path == "/hook" and ctype == "application/json" for path, ctype, _ in got)
    return [body for _, _, body in got]


def last_record(cfg):
    return json.loads((cfg.log_folder_path / "cycles.jsonl").read_text().splitlines()[-1])


def alert_rows(cfg):
    return {r[0]: r[1:] for r in query(
        cfg, "SELECT condition, state, event, delivered, tries, last_error FROM alerts ORDER BY condition")}


def with_webhook(cfg, url, **changes):
    """cfg's world with its config rewritten to send alerts to `url` (its history kept where it is)."""
    return load_config(make_config(cfg.base, alert_webhook_url=url, history_url=cfg.history_url, **changes))


@pytest.fixture
def conn(world):
    """A writer's connection to the world's history (either backend)."""
    with closing(history.connect(world.history)) as c:
        yield c


# --- the config ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "error"), [
    ("http://127.0.0.1:9000/hook", None),
    ("https://hooks.slack.com/services/T0/B0/XXXX", None),
    ("ftp://example.org/hook", "config key 'alert_webhook_url' must be an http:// or https:// URL with a host, "
                               "or absent (no webhook)"),
    ("hooks.slack.com/services", "config key 'alert_webhook_url' must be an http:// or https:// URL with a host, "
                                 "or absent (no webhook)"),
    ("http:///nohost", "config key 'alert_webhook_url' must be an http:// or https:// URL with a host, "
                       "or absent (no webhook)"),
    ("http://a b/hook", "config key 'alert_webhook_url' must be an http:// or https:// URL with a host, "
                        "or absent (no webhook)"),
    (12, "config key 'alert_webhook_url' must be a string or null, not 12"),
])
def test_the_webhook_url_is_checked(tmp_path, value, error):
    path = make_config(tmp_path, alert_webhook_url=value)
    if error is None:
        assert load_config(path).alert_webhook_url == value
    else:
        with pytest.raises(ConfigError) as exc:
            load_config(path)
        assert str(exc.value) == error


@pytest.mark.parametrize(("key", "value", "error"), [
    ("alert_f1_margin", 1.5, "config key 'alert_f1_margin' must be between 0 and 1"),
    ("alert_budget_seconds", 0, "config key 'alert_budget_seconds' must be more than 0 and at most 30"),
    ("alert_budget_seconds", 60, "config key 'alert_budget_seconds' must be more than 0 and at most 30"),
])
def test_the_alert_bounds_are_checked(tmp_path, key, value, error):
    with pytest.raises(ConfigError) as exc:
        load_config(make_config(tmp_path, **{key: value}))
    assert str(exc.value) == error


def test_no_webhook_by_default(world):
    assert (world.alert_webhook_url, world.alert_f1_margin, world.alert_budget_seconds) == (None, 0.1, 3.0)


# --- real cycles, a real receiver ---------------------------------------------------------------

def test_each_event_once_from_real_cycles(make_deployed):
    with receiver() as (url, got):
        # the course's setting: the shifted delivery below is redeployed whatever the challenger scores
        cfg = make_deployed(alert_webhook_url=url, drift_test="raw", promotion_gate=False)
        root = cfg.base

        write_delivery(cfg, "bad.csv", text="hello\n")
        assert run(cfg).returncode == 0
        moved = last_record(cfg)["ingestion"]["quarantined"][0]["moved_to"]
        assert bodies(got) == [{
            "event": "file_quarantined", "severity": "warning",
            "text": "1 delivery file was quarantined and not ingested (bad.csv: missing column 'corporation'). "
                    f"Moved to {moved}; correct the file and deliver it again.",
            "details": {"files": [{"name": "bad.csv", "reason": "missing column 'corporation'", "moved_to": moved}],
                        "cycle_id": 1}}]
        assert last_record(cfg)["alerts"] == [{"event": "file_quarantined", "delivered": True, "attempts": 1,
                                               "error": None, "seconds": last_record(cfg)["alerts"][0]["seconds"]}]
        got.clear()

        # The same bytes delivered again: quarantined again, but not news while the condition holds.
        write_delivery(cfg, "bad.csv", text="hello\n")
        assert run(cfg).returncode == 0
        assert last_record(cfg)["ingestion"]["quarantined"][0]["name"] == "bad.csv"
        assert got == []

        cfg.input_folder_path.rename(root / "away")
        assert run(cfg).returncode == 2
        rec = last_record(cfg)
        error = f"input folder {cfg.input_folder_path} does not exist (config key input_folder_path in {cfg.path})"
        assert bodies(got) == [{
            "event": "cycle_failed", "severity": "critical",
            "text": f"The monitoring cycle failed: {error}. The next cycle tries again on schedule; "
                    "the model serving is version 1.",
            "details": {"errors": [error], "decision": "failed", "started_at": rec["started_at"], "cycle_id": None,
                        "deployed_version": 1, "config": str(cfg.path)}}]
        got.clear()
        assert run(cfg).returncode == 2  # still failing: not sent again
        assert got == [] and "alerts" not in last_record(cfg)

        (root / "away").rename(cfg.input_folder_path)
        assert run(cfg).returncode == 0
        rec = last_record(cfg)
        assert bodies(got) == [{
            "event": "cycle_recovered", "severity": "info",
            "text": f"The monitoring cycle works again: the cycle started at {rec['started_at']} finished without "
                    "errors (no new data); the model serving is version 1.",
            "details": {"decision": "no new data", "started_at": rec["started_at"], "cycle_id": None,
                        "deployed_version": 1}}]
        got.clear()

        write_delivery(cfg, "more.csv", rows=150, seed=5, drift="concept", strength=0.8)
        assert run(cfg).returncode == 0
        rec = last_record(cfg)
        assert rec["decision"] == "drift: redeployed"
        f1, reason = rec["retrained"]["test_metrics"]["f1"], rec["score_drift"]["reason"]
        assert bodies(got) == [
            {"event": "quarantine_recovered", "severity": "info",
             "text": "Deliveries are ingested again: more.csv ingested with nothing quarantined.",
             "details": {"ingested": "more.csv", "cycle_id": 3}},
            {"event": "redeployed", "severity": "info",
             "text": f"Model version 2 is now serving, replacing version 1: the cycle found drift ({reason}) and "
                     f"retrained; test F1 {f1:.4f}.",
             "details": {"deployed_version": 2, "previous_version": 1, "test_f1": f1, "score_drift_reason": reason,
                         "cycle_id": 3}}]
        got.clear()
        assert run(cfg).returncode == 0
        assert got == []
    assert alert_rows(cfg) == {"cycle": ("ok", "cycle_recovered", 1, 1, None),
                               "deployment": ("version 2", "redeployed", 1, 1, None),
                               "quarantine": ("ok", "quarantine_recovered", 1, 1, None)}


@pytest.mark.parametrize(("delay", "closed", "error"), [
    (0.0, True, "connection refused"),
    (10.0, False, "read timed out"),
])
def test_an_unreachable_or_slow_receiver_costs_the_cycle_at_most_its_budget(make_deployed, delay, closed, error):
    budget = 1.5
    with receiver(delay=delay) as (url, got):
        if closed:
            url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
        cfg = make_deployed(alert_webhook_url=url, alert_budget_seconds=budget)
        cfg.input_folder_path.rename(cfg.base / "away")
        result = run(cfg)
        assert result.returncode == 2
        rec = last_record(cfg)
        assert rec["decision"] == "failed"
        assert rec["seconds"] < budget + 2  # loose: the bound, not the timing
        [outcome] = rec["alerts"]
        assert (outcome["event"], outcome["delivered"]) == ("cycle_failed", False)
        assert error in outcome["error"]
        assert 1 <= outcome["attempts"] <= alerts.ATTEMPTS
        assert "alert cycle_failed not delivered to the webhook" in result.stderr
        assert url not in result.stderr  # the webhook URL may hold a secret
        # Recorded, and not tried again before RETRY_SECONDS: the next failing cycle sends nothing.
        assert alert_rows(cfg)["cycle"][:4] == ("failed", "cycle_failed", 0, 1)
        assert run(cfg).returncode == 2
        assert "alerts" not in last_record(cfg)


@pytest.mark.backends
def test_a_failed_delivery_is_tried_again_later_while_its_condition_holds(world, conn, monkeypatch):
    rec = CycleRecord.start("2026-01-01T00:00:00.000+00:00", str(world.path))
    rec.decision, rec.deployed_version = "failed", 1
    rec.errors.append("disk full")
    with receiver(status=503) as (url, got):
        cfg = with_webhook(world, url, alert_budget_seconds=2.0)
        [out] = alerts.after_cycle(cfg, conn, rec, None)
        assert (out["delivered"], out["attempts"], out["error"]) == (False, 3, "HTTP 503")
        assert len(got) == 3  # retried with backoff
    with receiver() as (url, got):
        cfg = with_webhook(world, url)
        assert alerts.after_cycle(cfg, conn, rec, None) == []  # not yet due
        monkeypatch.setattr(alerts, "RETRY_SECONDS", 0.0)
        [out] = alerts.after_cycle(cfg, conn, rec, None)
        assert (out["event"], out["delivered"]) == ("cycle_failed", True)
        assert [b["event"] for b in bodies(got)] == ["cycle_failed"]
        assert alerts.after_cycle(cfg, conn, rec, None) == []  # delivered: done


@pytest.mark.backends
def test_a_model_kept_out_is_said_once_and_its_end_when_another_version_serves(world, conn):
    with receiver() as (url, got):
        cfg = with_webhook(world, url)

        def kept(cycle_id):
            rec = CycleRecord.start("2026-01-01T00:00:00.000+00:00", str(world.path))
            rec.cycle_id, rec.previous_version, rec.deployed_version = cycle_id, 3, 3
            rec.decision = "drift: retrained, kept the deployed model (promotion gate)"
            rec.retrained = Retrained(250, "ab" * 32, {"f1": 0.5})
            rec.gate = Gate(False, 0.5, 0.75, 40, "retrained model's F1 0.5000 on the 40 new rows is lower than "
                                                  "the deployed model's 0.7500")
            return rec

        alerts.after_cycle(cfg, conn, kept(7), None)
        alerts.after_cycle(cfg, conn, kept(8), None)
        assert bodies(got) == [{
            "event": "model_kept", "severity": "warning",
            "text": "A retrained model was not deployed: drift: retrained, kept the deployed model (promotion gate). "
                    "retrained model's F1 0.5000 on the 40 new rows is lower than the deployed model's 0.7500. "
                    "Version 3 keeps serving; review the cycle's report and promote by hand if the new model is right.",
            "details": {"decision": "drift: retrained, kept the deployed model (promotion gate)", "serving_version": 3,
                        "retrained_test_f1": 0.5, "gate": {"passed": False, "retrained_f1": 0.5, "deployed_f1": 0.75,
                                                           "rows": 40, "reason": kept(7).gate.reason},
                        "cycle_id": 7}}]
        got.clear()
        idle = CycleRecord.start("2026-01-01T00:10:00.000+00:00", str(world.path))
        idle.decision, idle.previous_version, idle.deployed_version = "no new data", 3, 3
        alerts.after_cycle(cfg, conn, idle, None)
        assert got == []
        idle.previous_version = idle.deployed_version = 4  # promoted by hand
        alerts.after_cycle(cfg, conn, idle, None)
        assert bodies(got) == [{
            "event": "model_kept_recovered", "severity": "info",
            "text": "Version 4 is now serving: the retrained model kept out while version 3 served is no longer "
                    "waiting for review.", "details": {"serving_version": 4}}]


@pytest.mark.backends
def test_without_a_webhook_the_states_are_still_kept(world, conn):
    rec = CycleRecord.start("2026-01-01T00:00:00.000+00:00", str(world.path))
    rec.decision = "failed"
    rec.errors.append("boom")
    assert alerts.after_cycle(world, conn, rec, None) == []
    assert alerts.conditions(conn) == {"cycle": "failed"}


# --- the API's check (the monitoring flush thread runs it) -------------------------------------

class FakeMonitor:
    def __init__(self):
        self.status = {"level": "ok", "psi": {}, "window_start": None, "model_version": 1, "rows": 0}

    def references(self):
        return {}


@pytest.fixture
def watch_of():
    """watch_of(cfg, monitor): an alerts.ApiWatch, closed after the test as its monitor would close it."""
    made = []
    yield lambda cfg, monitor: made.append(alerts.ApiWatch(cfg, monitor)) or made[-1]
    for watch in made:
        watch.close()


@pytest.mark.backends
def test_live_drift_is_sent_once_by_one_of_two_workers_and_its_recovery(deployed, watch_of):
    monitor = FakeMonitor()
    with receiver() as (url, got):
        cfg = with_webhook(deployed, url, package_index_url=deployed.package_index_url)
        one, two = watch_of(cfg, monitor), watch_of(cfg, monitor)
        assert one() == [] and two() == []
        monitor.status = {"level": "act", "psi": {"number_of_employees": 1.2345, "lastmonth_activity": 0.01},
                          "window_start": 1767225600.0, "model_version": 1, "rows": 300}
        for _ in range(3):
            one()
            two()
        assert bodies(got) == [{
            "event": "live_drift_act", "severity": "warning",
            "text": "Live input drift at \"act\" on model version 1: number_of_employees has PSI 1.234 over 300 rows "
                    "in the window of 2026-01-01 00:00:00 UTC. /health says degraded; the API keeps answering.",
            "details": {"model_version": 1, "psi": {"number_of_employees": 1.2345, "lastmonth_activity": 0.01},
                        "rows": 300, "window_start": 1767225600.0}}]
        got.clear()
        monitor.status = {"level": "watch", "psi": {}, "window_start": None, "model_version": 1, "rows": 0}
        one()
        two()
        assert bodies(got) == [{
            "event": "live_drift_recovered", "severity": "info",
            "text": "Live input drift on model version 1 is below \"act\" again (level watch).",
            "details": {"model_version": 1, "level": "watch"}}]
    assert query(cfg, "SELECT state FROM alerts WHERE condition = 'api_sender'") == [(one.me,)]  # the first to check holds the lease; the other never sent


@pytest.mark.backends
def test_closing_the_monitor_closes_its_alert_checks_connection(deployed):
    """Found by running this module on PostgreSQL: the API's alert check kept its history session
    open after its monitor closed (a psycopg ResourceWarning at its collection)."""
    import app as app_module

    with receiver() as (url, got):
        app = app_module.create_app(with_webhook(deployed, url, package_index_url=deployed.package_index_url))
        monitor = app.extensions["dras"].monitor
        [watch] = monitor.watchers
        assert watch() == [] and got == []  # its first check: it holds the lease, nothing to say
        conn = watch._conn
        monitor.close()
    assert watch._conn is None
    with pytest.raises(history.Error):
        conn.execute("SELECT 1")


def test_estimated_f1_below_the_test_f1_by_the_margin(deployed, monkeypatch, watch_of):
    import deployment
    import traffic

    monitor = FakeMonitor()
    test_f1 = deployment.current_manifest(deployed.prod_deployment_path)["metrics"]["f1"]
    windows = []
    monkeypatch.setattr(traffic, "recent_windows", lambda *a, **k: windows)
    with receiver() as (url, got):
        cfg = with_webhook(deployed, url, alert_f1_margin=0.1, package_index_url=deployed.package_index_url)
        watch = watch_of(cfg, monitor)
        windows[:] = [{"rows": 500, "window_start": 60.0, "estimated_f1": round(test_f1 - 0.05, 4)}]
        watch()
        assert got == []  # within the margin
        low = round(test_f1 - 0.2, 4)
        windows[:] = [{"rows": 50, "window_start": 120.0, "estimated_f1": 0.0},  # too few rows to judge
                      {"rows": 500, "window_start": 60.0, "estimated_f1": {"estimated_f1": low}}]
        watch()
        watch()
        assert bodies(got) == [{
            "event": "estimated_f1_low", "severity": "warning",
            "text": f"The estimated live F1 of model version 1 is {low:.3f}, below its test F1 {test_f1:.3f} by "
                    f"{test_f1 - low:.3f} (alert_f1_margin 0.1), over 500 rows. The estimate assumes the relation "
                    "between activity and leaving has not changed; only labelled deliveries can show that.",
            "details": {"model_version": 1, "estimated_f1": low, "test_f1": test_f1, "margin": 0.1, "rows": 500,
                        "window_start": 60.0}}]
        got.clear()
        windows[:] = [{"rows": 500, "window_start": 180.0, "estimated_f1": test_f1}]
        watch()
        assert [b["event"] for b in bodies(got)] == ["estimated_f1_recovered"]


def test_a_live_gunicorn_sends_live_drift_once_from_its_flush_thread(make_deployed):
    from helpers import gunicorn

    shifted = [{"lastmonth_activity": 10_000 + i, "lastyear_activity": 100_000 + i, "number_of_employees": 10**7}
               for i in range(10)]
    with receiver() as (url, got):
        # Short windows: a window is judged when it closes (or as it grows, by today's fixed thresholds).
        cfg = make_deployed(alert_webhook_url=url, monitoring_flush_seconds=0.5, monitoring_window_seconds=2,
                            monitoring_min_rows=20)
        with gunicorn(cfg, workers=2) as api:
            import requests

            with requests.Session() as s:
                for _ in range(30):  # 300 rows, both workers
                    assert s.post(api + "/prediction", json={"records": shifted}, timeout=10).status_code == 200
            deadline = time.monotonic() + 20
            while not got and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2)  # the other worker's flush thread has checked too by now
        events = [b["event"] for b in bodies(got)]
    assert events[:1] == ["live_drift_act"] and events.count("live_drift_act") == 1
    [first] = [b for b in bodies(got) if b["event"] == "live_drift_act"]
    assert (first["severity"], first["details"]["model_version"]) == ("warning", 1)
    assert first["text"].startswith("Live input drift at \"act\" on model version 1: ")


@pytest.mark.backends
def test_metrics_show_the_last_cycle_and_the_conditions(make_deployed):
    import re

    import app as app_module
    import deployment

    cfg = make_deployed()
    client = app_module.create_app(cfg).test_client()

    def metrics():
        text = client.get("/metrics").get_data(as_text=True)
        return {m[0]: float(m[1]) for m in re.findall(r"^(dras_(?:last_cycle|seconds_since_last_cycle_run|alert_"
                                                      r"condition|model_test_f1)\S*) (\S+)$", text, re.M)}

    before = metrics()
    assert sorted(before) == ["dras_last_cycle_failed", "dras_model_test_f1{model_version=\"1\"}",
                              "dras_seconds_since_last_cycle_run"]
    assert before["dras_last_cycle_failed"] != before["dras_last_cycle_failed"]  # NaN: no cycle yet
    cfg.input_folder_path.rename(cfg.base / "away")
    assert run(cfg).returncode == 2
    test_f1 = deployment.current_manifest(cfg.prod_deployment_path)["metrics"]["f1"]
    failed = metrics()
    assert 0 <= failed.pop("dras_seconds_since_last_cycle_run") < 60
    assert failed == {"dras_last_cycle_failed": 1.0, "dras_alert_condition{condition=\"cycle\"}": 1.0,
                      "dras_model_test_f1{model_version=\"1\"}": pytest.approx(test_f1)}
    (cfg.base / "away").rename(cfg.input_folder_path)
    assert run(cfg).returncode == 0
    ok = metrics()
    ok.pop("dras_seconds_since_last_cycle_run")
    assert ok == {"dras_last_cycle_failed": 0.0, "dras_alert_condition{condition=\"cycle\"}": 0.0,
                  "dras_model_test_f1{model_version=\"1\"}": pytest.approx(test_f1)}
