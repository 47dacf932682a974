"""The summary at the top of the report and of the status page: its exact sentences for known worlds."""
import html
import re
import shutil
from contextlib import closing

import pytest
from conftest import CLOSED_INDEX, REPO, make_config, run_script
from helpers import pdf_text

import app as app_module
import deployment
import fullprocess
import history
import ingestion
import reporting
import scoring
import status
import summary
import traffic
import training
from cycle import CycleRecord
from ingestion import read_finaldata
from settings import FEATURES, load_config

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
KEPT = "drift: retrained, kept the deployed model (not better on held-out rows)"


def words(text):
    """The text with its line breaks and runs of spaces as single spaces."""
    return " ".join(text.split())


# --- the rules, on a history written by hand ------------------------------------------------------

def cycle_row(conn, at, decision, **record):
    rec = CycleRecord(started_at=at, decision=decision, **record)
    return conn.execute("INSERT INTO cycles (started_at, finished_at, decision, record) VALUES (?, ?, ?, ?)",
                        (at, at + 1, decision, rec.to_json())).lastrowid


@pytest.fixture
def conn(tmp_path):
    with closing(history.connect(tmp_path / "history.sqlite")) as c:
        yield c


def test_nothing_recorded(conn):
    said = summary.summarize(summary.period(conn), None, None, summary.report_live(None))
    assert said == {
        "happened": "Since the history began: no delivery ingested or quarantined; no cycle with new data; no deployment.",
        "scores": "No model is deployed yet: the first monitoring cycle with data trains and deploys one.",
        "drift": "Drift: no check has run yet; the monitoring cycle checks every new delivery.",
        "live": "Live traffic: none recorded yet.",
        "todo": "What to do: nothing.",
    }


def test_a_busy_period(conn):
    """Before the report of T0 and after it: only what came after counts; the last check's action is
    open while no deployment has come after it; a failed last cycle and quarantined files come first."""
    for at, name, rows in ((T0 - 50, "old.csv", 999), (T0 + 10, "a.csv", 120), (T0 + 20, "b.csv", 30)):
        conn.execute("INSERT INTO ingested_files (name, sha256, rows, folder, at) VALUES (?, ?, ?, 'in', ?)",
                     (name, name * 8, rows, at))
    conn.execute("INSERT INTO quarantined_files (name, sha256, reason, moved_to, at) VALUES "
                 "('bad.csv', 'x', 'column ''exited'' is missing', 'q/bad.csv', ?)", (T0 + 30,))
    for at, version, action, f1 in ((T0 - 100, 1, "deploy", 0.8), (T0 + 40, 2, "deploy", 0.7),
                                    (T0 + 50, 1, "rollback", 0.8)):
        conn.execute("INSERT INTO deployments (at, version, action, model_sha256, f1) VALUES (?, ?, ?, ?, ?)",
                     (at, version, action, f"{version:064x}", f1))
    cycle_row(conn, T0 - 60, "no drift")
    cycle_row(conn, T0 + 5, "no drift")
    cycle_row(conn, T0 + 35, "drift: redeployed")
    cycle_row(conn, T0 + 60, KEPT,
              score_drift={"drift": True, "new_f1": 0.4, "deployed_f1": 0.8, "new_rows": 150},
              feature_drift={"drifted": ["lastmonth_activity"], "any": True},
              promotion={"action": "promote the challenger by hand with `python deployment.py --promote`"})
    cycle_row(conn, T0 + 70, "no drift")
    cycle_row(conn, T0 + 80, "failed", errors=["scoring: no complete labelled rows in testdata.csv"])
    p = summary.period(conn, since=T0)
    previous, scores = summary.previous_deployment(conn, 1)
    assert (previous["version"], previous["action"], scores["f1"]) == (2, "deploy", 0.7)  # no scores row: as deployed
    said = summary.summarize(p, {"version": 1, "f1": 0.8}, {"version": 2, "f1": scores["f1"]},
                             summary.report_live(None))
    assert said["happened"] == (
        'Since the report of 2023-11-14 22:13 UTC: 2 deliveries ingested (150 rows), 1 quarantined; 5 cycles decided '
        '"no drift" (2), "drift: redeployed" (1), "' + KEPT + '" (1) and "failed" (1); version 2 deployed, then '
        "rolled back to version 1.")
    assert said["scores"] == "Version 1 serves: test F1 0.8000, up from 0.7000 for version 2 (the previous deployment)."
    assert said["drift"] == ("Drift: the last check (2023-11-14 22:14 UTC) found score drift (F1 0.40 on 150 new rows "
                             'against 0.80 for the serving model) and feature drift in lastmonth_activity; decided "'
                             + KEPT + '".')
    assert said["todo"] == (  # the deployments came before the check: its action stands
        "What to do: (1) look into the last cycle's failure (2023-11-14 22:14 UTC): scoring: no complete labelled rows "
        "in testdata.csv; the next cycle tries again on schedule. (2) correct the quarantined file (bad.csv: column "
        "'exited' is missing) and deliver it again. (3) promote the challenger by hand with "
        "`python deployment.py --promote`.")
    conn.execute("INSERT INTO deployments (at, version, action, model_sha256, f1) VALUES (?, 2, 'restore', ?, 0.7)",
                 (T0 + 65, f"{2:064x}"))
    p = summary.period(conn, since=T0 + 62)
    assert summary.summarize(p, {"version": 2, "f1": 0.7}, None, summary.report_live(None))["todo"] == (
        "What to do: look into the last cycle's failure (2023-11-14 22:14 UTC): scoring: no complete labelled rows "
        "in testdata.csv; the next cycle tries again on schedule.")  # served by hand after the check: closed
    assert summary._happened(p) == ('Since the report of 2023-11-14 22:14 UTC: no delivery ingested or quarantined; '
                                    '2 cycles decided "no drift" (1) and "failed" (1); version 2 restored.')


def test_the_running_cycle_counts_before_its_row_is_finished(conn):
    """The report a cycle writes: its own row is unfinished in the database; its record says what it decided."""
    running = conn.execute("INSERT INTO cycles (started_at, record) VALUES (?, '{}')", (T0 + 5,)).lastrowid
    rec = CycleRecord(cycle_id=running, started_at="2023-11-14T22:13:25+00:00", decision="no drift",
                      score_drift={"drift": False, "new_f1": 0.81, "deployed_f1": 0.8,
                                   "evidence": {"rows": 60, "counted": 30}})
    said = summary.summarize(summary.period(conn, since=T0, current=rec), {"version": 1, "f1": 0.8}, None,
                             summary.report_live(None))
    assert said["happened"] == ('Since the report of 2023-11-14 22:13 UTC: no delivery ingested or quarantined; '
                                '1 cycle decided "no drift"; no deployment.')
    assert said["drift"] == ('Drift: the last check (2023-11-14 22:13 UTC) found no score drift (F1 0.81 on 60 new '
                             'rows against 0.80 for the serving model); decided "no drift".')


# --- the report and the page of the sample data, after a real cycle ----------------------------------

@pytest.fixture
def sample(tmp_path):
    """The repo's sample data in a world of its own: practicedata/ deployed by hand, sourcedata/ to come."""
    for folder in ("practicedata", "testdata"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    (tmp_path / "sourcedata").mkdir()
    cfg = load_config(make_config(tmp_path, drift_test="sequential", promotion_gate=True, monitoring=False,
                                  api_url="http://127.0.0.1:9", package_index_url=CLOSED_INDEX))
    ingestion.ingest(cfg, folder=tmp_path / "practicedata")
    training.run(cfg)
    scoring.run(cfg)
    deployment.deploy_from_config(cfg)
    return cfg


def report_times(cfg):
    with closing(history.connect(cfg.history)) as c:
        return [summary.stamp(r[0]) for r in c.execute("SELECT at FROM step_timings WHERE step = 'report' ORDER BY id")]


def report_summary(path):
    text = words(pdf_text(path))
    return text[text.index("Summary ") + len("Summary "):text.index(" The deployed model ")]


def page_summary(cfg):
    page = app_module.create_app(cfg).test_client().get("/").get_data(as_text=True)
    section = page[page.index('<section id="summary"'):page.index("</section>", page.index('<section id="summary"'))]
    return [html.unescape(line) for line in re.findall(r"<p[^>]*>(.*?)</p>", section, re.S)]


def test_the_sample_data_story(sample):
    first = reporting.generate_report(sample)
    assert report_summary(first["latest"]) == (
        "Since the history began: 2 deliveries ingested (60 rows), none quarantined; no cycle with new data; "
        "version 1 deployed. "
        "Version 1 serves: test F1 0.7907; the first deployment in the history, nothing to compare with. "
        "Drift: no check has run yet; the monitoring cycle checks every new delivery. "
        "Live traffic: none recorded yet. "
        "What to do: nothing.")

    for name in ("dataset3.csv", "dataset4.csv"):
        shutil.copy(REPO / "sourcedata" / name, sample.input_folder_path / name)
    rec = fullprocess.run_cycle(sample)
    assert rec.decision == KEPT
    action = rec.promotion["action"]
    assert action == (f"refresh the test data ({sample.test_data_file}) with recently labelled rows: they no longer "
                      "represent the deliveries (the next cycle re-scores the serving model on them); or promote the "
                      f"challenger by hand with `python deployment.py --promote --config {sample.path}`")
    at_first, at_cycle = report_times(sample)
    with closing(history.connect(sample.history)) as c:
        checked = summary.stamp(c.execute("SELECT max(started_at) FROM cycles").fetchone()[0])
    assert report_summary(sample.output_model_path / "report.pdf") == (
        f"Since the report of {at_first}: 2 deliveries ingested (60 rows), none quarantined; 1 cycle decided "
        f'"{KEPT}"; no deployment. '
        "Version 1 serves: test F1 0.7907; the first deployment in the history, nothing to compare with. "
        f"Drift: the last check ({checked}) found score drift (F1 0.24 on 60 new rows against 0.79 for the serving "
        f'model) and no feature drift; decided "{KEPT}". '
        f"Live traffic: none recorded since the report of {at_first}. "
        f"What to do: {action}.")

    # The status page, shorter: what came since the cycle's report, the scores, the traffic, what to do.
    assert page_summary(sample) == [
        f"Since the report of {at_cycle}: no delivery ingested or quarantined; no cycle with new data; no deployment.",
        "Version 1 serves: test F1 0.7907; the first deployment in the history, nothing to compare with.",
        "Live traffic: none recorded yet.",
        f"What to do: {action}."]

    # Served by hand, as the action says: a deployment after the check closes it.
    done = run_script("deployment.py", "--config", sample.path, "--promote")
    assert done.returncode == 0, done.stderr
    assert page_summary(sample) == [
        f"Since the report of {at_cycle}: no delivery ingested or quarantined; no cycle with new data; "
        "version 2 deployed.",
        "Version 2 serves: test F1 0.0000, down from 0.7907 for version 1 (the previous deployment).",
        "Live traffic: none recorded yet.",
        "What to do: nothing."]


# --- live traffic in the report ---------------------------------------------------------------------

def test_live_traffic_and_the_estimated_f1(make_deployed):
    cfg = make_deployed(monitoring_min_rows=30, monitoring_window_seconds=60)
    app = app_module.create_app(cfg)
    monitor = app.extensions["dras"].monitor
    client = app.test_client()
    rows = read_finaldata(cfg.finaldata)[list(FEATURES)].astype(int).to_dict("records")
    base = T0 - T0 % 86400
    for at in (base + 10, base + 70):
        monitor.clock = lambda at=at: at
        assert client.post("/prediction", json={"records": rows}).status_code == 200
        monitor.flush()
    live = traffic.report_data(cfg)
    est = live["estimated_f1"]
    f1 = deployment.current_manifest(cfg.prod_deployment_path)["metrics"]["f1"]
    paths = reporting.generate_report(cfg)
    assert (f"Live traffic so far: 400 rows predicted in 2 windows; the drift alarm judged 2 looks: 0 at act, 0 at "
            f"watch; estimated F1 {est['value']:.3f} (95% interval {est['interval'][0]:.3f} to "
            f"{est['interval'][1]:.3f}) beside the test F1 {f1:.3f}.") in report_summary(paths["latest"])
    shown = status.gather(cfg)["traffic"]  # the page's live traffic: the latest windows
    page_est = shown["estimated_f1"]
    assert page_summary(cfg)[2] == (
        f"Live traffic since {summary.stamp(base)}: 400 rows predicted in 2 windows; the latest look the drift alarm "
        f"judged is at ok; estimated F1 {page_est['value']:.3f} (95% interval {page_est['interval'][0]:.3f} to "
        f"{page_est['interval'][1]:.3f}) beside the test F1 {f1:.3f}.")


def test_a_long_period_counts_its_deployments_and_names_the_last():
    p = {"since": T0, "ingested": {"files": 1200, "rows": 1_234_567}, "quarantined": [],
         "decisions": {"no drift": 8572, "drift: redeployed": 1428},
         "deployments": [{"at": T0 + k, "version": k, "action": "deploy"} for k in range(1, 1429)]
         + [{"at": T0 + 1429, "version": 3, "action": "rollback"}]}
    assert summary._happened(p) == (
        'Since the report of 2023-11-14 22:13 UTC: 1,200 deliveries ingested (1,234,567 rows), none quarantined; '
        '10,000 cycles decided "no drift" (8,572) and "drift: redeployed" (1,428); 1,429 deployments, the last: '
        "rolled back to version 3.")
