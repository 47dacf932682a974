"""The monitoring cycle's decisions, in-process with a recording publisher, and its crash recovery."""
import json
import time
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import f1_score

import cycle
import delivery
import deployment
import fullprocess
import history
import ingestion
from conftest import make_config, write_delivery
from helpers import pdf_text, query, writing
from settings import FEATURES, TARGET, load_config


class Publisher:
    """Stands in for reporting + apicalls: remembers each record it was asked to publish."""

    def __init__(self, fail=False):
        self.records = []
        self.fail = fail

    def __call__(self, cfg, record):
        self.records.append(json.loads(record.to_json()))
        if self.fail:
            raise OSError("disk full while writing the report")
        return {"report": str(cfg.output_folder_path / "report.pdf"), "apireturns": "apireturns.txt"}


# These tests hold the course's decisions (README, "The course's setting"): the raw test, no gate.
# The default decisions are tested in tests/test_decisions_cycle.py.
COURSE = {"drift_test": "raw", "promotion_gate": False}


@pytest.fixture
def world(make_world):
    """The conftest world with the course's setting."""
    return make_world(**COURSE)


@pytest.fixture
def published(monkeypatch):
    pub = Publisher()
    monkeypatch.setattr(fullprocess, "publish", pub)
    return pub


def cycles(cfg):
    return [(r[0], r[1], json.loads(r[2])) for r in query(cfg, "SELECT id, decision, record FROM cycles ORDER BY id")]


def log_lines(cfg):
    return [json.loads(line) for line in (cfg.log_folder_path / "cycles.jsonl").read_text().splitlines()]


def deployed_version(cfg):
    return deployment.current_manifest(cfg.prod_deployment_path)["version"]


def f1_on(model, df):
    df = df.dropna()
    return float(f1_score(df[TARGET].astype("int64"), model.predict(df[list(FEATURES)].astype("float64")),
                          zero_division=0))


def cold_start(cfg, published, rows=200, seed=1):
    write_delivery(cfg, "first.csv", rows=rows, seed=seed)
    rec = fullprocess.run_cycle(cfg).to_dict()
    assert rec["decision"] == cycle.COLD_START
    return rec


@pytest.mark.backends
def test_no_data_yet(world, published):
    rec = fullprocess.run_cycle(world).to_dict()
    assert rec["decision"] == cycle.NO_DATA_YET
    assert rec["errors"] == []
    assert deployment.current_manifest(world.prod_deployment_path) is None
    assert published.records == []
    assert cycles(world) == []  # nothing happened: logged, not recorded
    assert [line["decision"] for line in log_lines(world)] == ["no data yet"]


@pytest.mark.backends
def test_cold_start_ingests_trains_deploys_and_publishes(world, published):
    rec = cold_start(world, published)
    assert rec["new_files"] == ["first.csv"]
    assert rec["deployed_version"] == 1 and rec["previous_version"] is None
    assert rec["published_version"] == 1
    assert len(ingestion.read_finaldata(world.finaldata)) == 200
    assert (world.prod_deployment_path / "ingestedfiles.txt").read_text() == "first.csv\n"
    # the publisher saw the finished decision and the version it is publishing
    assert len(published.records) == 1
    assert published.records[0]["decision"] == cycle.COLD_START
    assert published.records[0]["deployed_version"] == 1
    assert [(c[0], c[1]) for c in cycles(world)] == [(1, cycle.COLD_START)]
    assert log_lines(world)[-1]["decision"] == cycle.COLD_START


@pytest.mark.backends
def test_no_new_data_does_nothing(world, published):
    cold_start(world, published)
    before = world.finaldata.read_bytes()
    rec = fullprocess.run_cycle(world).to_dict()
    assert rec["decision"] == cycle.NO_NEW_DATA
    assert rec["new_files"] == [] and rec["errors"] == []
    assert deployed_version(world) == 1
    assert world.finaldata.read_bytes() == before
    assert len(published.records) == 1
    assert [c[1] for c in cycles(world)] == [cycle.COLD_START]
    assert [line["decision"] for line in log_lines(world)] == [cycle.COLD_START, cycle.NO_NEW_DATA]


@pytest.mark.backends
def test_concept_drift_retrains_redeploys_and_publishes(world, published):
    cold_start(world, published)
    deployed_f1 = float((world.prod_deployment_path / "latestscore.txt").read_text())
    old_model, _ = deployment.load_deployed(world.prod_deployment_path)
    path = write_delivery(world, "shifted.csv", rows=300, seed=2, drift="concept", strength=1.0)
    rec = fullprocess.run_cycle(world).to_dict()
    new_f1 = f1_on(old_model, delivery.parse_delivery(path.read_bytes()))
    assert new_f1 < deployed_f1
    assert rec["decision"] == cycle.REDEPLOYED
    sd = rec["score_drift"]
    assert (sd["test"], sd["used"], sd["drift"], sd["new_rows"]) == ("raw", "raw", True, 300)
    assert sd["new_f1"] == new_f1 and sd["deployed_f1"] == deployed_f1
    assert rec["new_rows"] == {"rows": 300, "complete": 300}
    assert set(rec["feature_drift"]["features"]) == set(FEATURES)
    import audit

    _, first_manifest = deployment.load_version(world.prod_deployment_path / "versions" / "v0001")
    definitions = first_manifest["training"]["slice_definitions"]
    assert rec["slices_new"] == audit.slices_for_rows(old_model, delivery.parse_delivery(path.read_bytes()),
                                                      definitions, world.slice_margin, world.slice_min_rows)
    assert sum(s["rows"] for s in rec["slices_new"]["slices"] if s["feature"] == "number_of_employees") == 300
    assert (rec["previous_version"], rec["deployed_version"], rec["published_version"]) == (1, 2, 2)
    assert deployed_version(world) == 2
    assert (world.prod_deployment_path / "ingestedfiles.txt").read_text() == "first.csv\nshifted.csv\n"
    assert len(ingestion.read_finaldata(world.finaldata)) == 500
    assert [r["deployed_version"] for r in published.records] == [1, 2]
    assert published.records[1]["score_drift"]["drift"] is True
    # the new model is the one trained on everything
    _, manifest = deployment.load_deployed(world.prod_deployment_path)
    assert manifest["training"]["training_rows"] == 500
    assert manifest["cycle"]["id"] == rec["cycle_id"]
    assert manifest["cycle"]["decision"] == cycle.REDEPLOYED
    assert manifest["cycle"]["score_drift"] == rec["score_drift"]
    card = (world.prod_deployment_path / "modelcard.md").read_text()
    assert "- Score drift: **drift** (test `raw`)" in card


@pytest.mark.backends
def test_tie_is_not_drift_and_the_delivery_is_ingested_once(world, published):
    cold_start(world, published)
    # the test data itself as a delivery: the deployed model scores exactly its deployed score
    write_delivery(world, "same.csv", text=world.test_data_file.read_bytes())
    rec = fullprocess.run_cycle(world).to_dict()
    assert rec["decision"] == cycle.NO_DRIFT
    sd = rec["score_drift"]
    assert sd["new_f1"] == sd["deployed_f1"] and sd["drift"] is False
    assert sd["reason"].startswith(f"new F1 {sd['new_f1']:.4f} is equal to the deployed score")
    assert deployed_version(world) == 1
    assert len(published.records) == 1
    rows = len(ingestion.read_finaldata(world.finaldata))
    again = fullprocess.run_cycle(world).to_dict()
    assert again["decision"] == cycle.NO_NEW_DATA
    assert len(ingestion.read_finaldata(world.finaldata)) == rows
    assert query(world, "SELECT count(*) FROM ingested_files WHERE name = 'same.csv'") == [(1,)]


@pytest.mark.parametrize("test", ["parametric", "nonparametric"])
def test_statistical_tests_fall_back_to_raw_with_little_history(tmp_path, published, test):
    (tmp_path / "sourcedata").mkdir()
    (tmp_path / "testdata").mkdir()
    cfg = load_config(make_config(tmp_path, promotion_gate=False, drift_test=test, drift_min_history=3))
    import datagen

    datagen.generate(40, seed=301).to_csv(cfg.test_data_file, index=False)
    cold_start(cfg, published)
    write_delivery(cfg, "shifted.csv", rows=300, seed=2, drift="concept", strength=1.0)
    rec = fullprocess.run_cycle(cfg).to_dict()
    sd = rec["score_drift"]
    assert (sd["test"], sd["used"], sd["history_size"]) == (test, "raw", 1)
    assert sd["fallback"] == f"1 score(s) of history, 3 needed for the {test} test: used the raw comparison"
    assert rec["decision"] == cycle.REDEPLOYED


@pytest.mark.parametrize(("test", "earlier", "drift"), [
    ("parametric", (0.95, 0.10), False),     # a spread history: a big drop is within mean - 2 sd
    ("parametric", (0.80, 0.81), True),      # a tight history: the same drop is drift
    ("nonparametric", (0.95, 0.10), False),
    ("nonparametric", (0.80, 0.81), True),
])
@pytest.mark.backends
def test_statistical_tests_use_the_deployment_history(tmp_path, history_overrides, published, test, earlier, drift):
    import numpy as np

    (tmp_path / "sourcedata").mkdir()
    (tmp_path / "testdata").mkdir()
    cfg = load_config(make_config(tmp_path, promotion_gate=False, drift_test=test, drift_min_history=3,
                                  **history_overrides))
    import datagen

    datagen.generate(40, seed=301).to_csv(cfg.test_data_file, index=False)
    cold_start(cfg, published)
    deployed_f1 = float((cfg.prod_deployment_path / "latestscore.txt").read_text())
    # two earlier deployments, long ago (they cover nothing ingested since)
    with writing(cfg) as conn:
        real = conn.execute("SELECT version, action, model_sha256, f1 FROM deployments").fetchall()
        conn.execute("DELETE FROM deployments")
        conn.executemany("INSERT INTO deployments (at, version, action, model_sha256, f1) VALUES (?, ?, ?, ?, ?)",
                         [(1.0, 98, "deploy", "x", earlier[0]), (2.0, 99, "rollback", "z", 0.0),
                          (2.5, 99, "deploy", "y", earlier[1]), (3.0, *real[0])])
    write_delivery(cfg, "shifted.csv", rows=300, seed=2, drift="concept", strength=1.0)
    rec = fullprocess.run_cycle(cfg).to_dict()
    sd = rec["score_drift"]
    history = np.array([earlier[0], earlier[1], deployed_f1])  # rollbacks are not scores of history
    if test == "parametric":
        threshold = history.mean() - 2 * history.std(ddof=1)
    else:
        q1, q3 = np.percentile(history, [25, 75])
        threshold = q1 - 1.5 * (q3 - q1)
    assert (sd["used"], sd["history_size"], sd["fallback"]) == (test, 3, None)
    assert sd["threshold"] == pytest.approx(threshold, abs=1e-12)
    assert sd["new_f1"] < deployed_f1
    assert sd["drift"] is drift and bool(sd["new_f1"] < threshold) is drift
    assert rec["decision"] == (cycle.REDEPLOYED if drift else cycle.NO_DRIFT)
    assert deployed_version(cfg) == (2 if drift else 1)


def gate_world(tmp_path, gate):
    (tmp_path / "sourcedata").mkdir()
    (tmp_path / "testdata").mkdir()
    cfg = load_config(make_config(tmp_path, drift_test="raw", promotion_gate=gate, feature_drift_triggers_retrain=True))
    import datagen

    datagen.generate(40, seed=301).to_csv(cfg.test_data_file, index=False)
    return cfg


def labelled_by_deployed(cfg, n=400):
    """Covariate-drifted rows labelled by the deployed model: it scores F1 1.0 on them."""
    import datagen

    model, _ = deployment.load_deployed(cfg.prod_deployment_path)
    df = datagen.generate(n, seed=5, drift="covariate", strength=1.5)
    df[TARGET] = model.predict(df[list(FEATURES)].astype("float64"))
    df.to_csv(cfg.input_folder_path / "moved.csv", index=False)
    return df


@pytest.mark.parametrize("gate", [True, False])
def test_feature_drift_triggers_retraining_and_the_gate_decides(tmp_path, published, gate):
    cfg = gate_world(tmp_path, gate)
    cold_start(cfg, published)
    labelled_by_deployed(cfg)
    rec = fullprocess.run_cycle(cfg).to_dict()
    fd = rec["feature_drift"]
    assert fd["any"] is True and "lastmonth_activity" in fd["drifted"]
    assert rec["score_drift"]["new_f1"] == 1.0 and rec["score_drift"]["drift"] is False
    assert rec["drift"] is True
    assert rec["retrained"]["training_rows"] == 600
    if gate:
        retrained = ingestion.read_finaldata(cfg.finaldata)
        import scoring

        model = scoring.load_pickle(cfg.model_file)
        expected = f1_on(model, delivery.parse_delivery((cfg.input_folder_path / "moved.csv").read_bytes()))
        assert expected < 1.0 and len(retrained) == 600
        assert rec["gate"] == {"passed": False, "retrained_f1": expected, "deployed_f1": 1.0, "rows": 400,
                               "reason": f"retrained model's F1 {expected:.4f} on the 400 new rows is lower than "
                                         "the deployed model's 1.0000"}
        assert rec["decision"] == cycle.GATE_KEPT
        assert deployed_version(cfg) == 1
        assert len(published.records) == 1
    else:
        assert "gate" not in rec
        assert rec["decision"] == cycle.REDEPLOYED
        assert deployed_version(cfg) == 2
        assert len(published.records) == 2


def test_bad_files_are_quarantined_and_the_good_ones_go_on(world, published):
    cold_start(world, published)
    write_delivery(world, "broken.csv", text="corporation,exited\nabcd,1\n")
    write_delivery(world, "shifted.csv", rows=300, seed=2, drift="concept", strength=1.0)
    rec = fullprocess.run_cycle(world).to_dict()
    assert rec["new_files"] == ["broken.csv", "shifted.csv"]
    assert [q["name"] for q in rec["ingestion"]["quarantined"]] == ["broken.csv"]
    assert rec["pending_files"] == ["shifted.csv"]
    assert rec["decision"] == cycle.REDEPLOYED
    assert not (world.input_folder_path / "broken.csv").exists()


def test_only_bad_files(world, published):
    cold_start(world, published)
    write_delivery(world, "broken.csv", text="corporation,exited\nabcd,1\n")
    rec = fullprocess.run_cycle(world).to_dict()
    assert rec["decision"] == cycle.NO_USABLE_ROWS and rec["errors"] == []
    assert deployed_version(world) == 1
    assert fullprocess.run_cycle(world).to_dict()["decision"] == cycle.NO_NEW_DATA


@pytest.mark.backends
def test_a_failing_cycle_keeps_the_deployment_and_the_next_one_finishes(world, published):
    cold_start(world, published)
    good_test = world.test_data_file.read_bytes()
    write_delivery(world, "shifted.csv", rows=300, seed=2, drift="concept", strength=1.0)
    world.test_data_file.write_text("corporation,exited\n")
    assert fullprocess.main(["--config", str(world.path)]) == 1
    (_, decision, rec), = [c for c in cycles(world) if c[0] == 2]
    assert decision == cycle.FAILED
    assert rec["errors"] == [f"the score drift step failed: test data {world.test_data_file} is not usable: "
                             "missing column 'lastmonth_activity'"]
    assert deployed_version(world) == 1
    deployment.load_deployed(world.prod_deployment_path)
    # the delivery is ingested (once) but still owes its drift decision
    world.test_data_file.write_bytes(good_test)
    rec = fullprocess.run_cycle(world).to_dict()
    assert rec["new_files"] == [] and rec["pending_files"] == ["shifted.csv"]
    assert rec["decision"] == cycle.REDEPLOYED and deployed_version(world) == 2


@pytest.mark.backends
def test_a_failed_publish_is_retried_by_the_next_cycle(world, monkeypatch):
    failing = Publisher(fail=True)
    monkeypatch.setattr(fullprocess, "publish", failing)
    write_delivery(world, "first.csv", rows=200, seed=1)
    rec = fullprocess.run_cycle(world).to_dict()
    assert rec["decision"] == cycle.COLD_START
    assert rec["errors"] == ["the publish step failed unexpectedly: disk full while writing the report "
                             "(the log has the details)"]
    assert rec["published_version"] is None and deployed_version(world) == 1
    ok = Publisher()
    monkeypatch.setattr(fullprocess, "publish", ok)
    rec = fullprocess.run_cycle(world).to_dict()
    assert rec["decision"] == cycle.PUBLISHED and rec["errors"] == []
    assert [r["deployed_version"] for r in ok.records] == [1]
    assert fullprocess.run_cycle(world).to_dict()["decision"] == cycle.NO_NEW_DATA


@pytest.mark.backends
def test_a_held_lock_means_exit_zero_at_once(world, published):
    write_delivery(world, "first.csv", rows=50, seed=1)
    with fullprocess.cycle_lock(world.writer_lock) as held:
        assert held is True
        assert fullprocess.run_cycle(world).to_dict() == {"decision": "locked", "errors": []}
        assert fullprocess.main(["--config", str(world.path)]) == 0
    assert not history.exists(world.history) or cycles(world) == []
    assert fullprocess.run_cycle(world).to_dict()["decision"] == cycle.COLD_START


@pytest.mark.backends
def test_manual_deployment_counts_as_decided(world, published):
    """Ingested and deployed by hand (as `make demo` does first): the cycle then has nothing to do."""
    import scoring
    import training

    write_delivery(world, "first.csv", rows=200, seed=1)
    ingestion.ingest(world)
    training.run(world)
    scoring.run(world)
    deployment.deploy_from_config(world)
    rec = fullprocess.run_cycle(world).to_dict()
    assert rec["decision"] == cycle.NO_NEW_DATA
    assert published.records == []


def test_missing_values_are_kept_and_scored_on_complete_rows(world, published):
    cold_start(world, published)
    path = write_delivery(world, "shifted.csv", rows=300, seed=2, drift="concept", strength=1.0)
    text = path.read_text().splitlines()
    fields = text[1].split(",")
    fields[1] = ""
    text[1] = ",".join(fields)
    path.write_text("\n".join(text) + "\n")
    rec = fullprocess.run_cycle(world).to_dict()
    assert rec["new_rows"] == {"rows": 300, "complete": 299}
    assert rec["score_drift"]["new_rows"] == 299


def test_the_significance_test_is_passed_through(tmp_path, published):
    (tmp_path / "sourcedata").mkdir()
    (tmp_path / "testdata").mkdir()
    cfg = load_config(make_config(tmp_path, promotion_gate=False, drift_test="significance", drift_bootstrap_rounds=500))
    import datagen

    datagen.generate(400, seed=301).to_csv(cfg.test_data_file, index=False)
    cold_start(cfg, published, rows=1000)
    write_delivery(cfg, "shifted.csv", rows=500, seed=2, drift="concept", strength=1.0)
    rec = fullprocess.run_cycle(cfg).to_dict()
    sd = rec["score_drift"]
    assert (sd["test"], sd["used"], sd["rounds"], sd["level"], sd["new_rows"]) == ("significance", "significance",
                                                                                     500, 0.05, 500)
    assert sd["p_value"] < 0.05 and sd["drift"] is True
    assert rec["decision"] == cycle.REDEPLOYED


@pytest.mark.backends
def test_end_to_end_cycles_publish_the_real_report_and_api_returns(world):
    """Real processes and modules: a cold start while the API is down (its returns made in-process),
    then the API under gunicorn and a drifted delivery: redeployed, reported, and the running API,
    now serving the new version, answers the returns."""
    from conftest import run_script
    from helpers import free_port, gunicorn

    port = free_port()
    cfg = load_config(make_config(world.base, **{**world.raw, "api_url": f"http://127.0.0.1:{port}",
                                                  "package_index_url": f"http://127.0.0.1:{free_port()}/simple"}))
    assert (cfg.drift_test, cfg.history_url) == ("raw", world.history_url)
    write_delivery(cfg, "first.csv", rows=300, seed=1)
    assert fullprocess.main(["--config", str(cfg.path)]) == 0  # in-process, with the real publish
    first = log_lines(cfg)[-1]
    assert first["decision"] == cycle.COLD_START
    assert "Decision: cold start: deployed" in pdf_text(cfg.output_model_path / "report.pdf")
    returns = Path(first["published"]["apireturns"]).read_text().splitlines()
    assert returns[1].startswith(f"# via: in-process (the server at http://127.0.0.1:{port} did not answer")
    with gunicorn(cfg, workers=1, port=port):
        write_delivery(cfg, "shifted.csv", rows=300, seed=2, drift="concept", strength=1.0)
        second = run_script("fullprocess.py", "--config", cfg.path, "--verbose")
    assert second.returncode == 0, second.stderr
    rec = log_lines(cfg)[-1]
    assert rec["decision"] == cycle.REDEPLOYED and rec["deployed_version"] == 2
    assert second.stdout.splitlines()[:2] == ["decision: drift: redeployed", "new files: shifted.csv"]
    assert set(rec["published"]) == {"report", "report_copy", "confusion_matrix", "apireturns"}
    pdf = rec["published"]["report"]
    assert pdf == str(cfg.output_model_path / "report.pdf")
    assert rec["published"]["report_copy"].startswith(str(cfg.output_model_path / "reports" / "report-v0002-"))
    assert f"report: {pdf}" in second.stdout.splitlines()
    text = pdf_text(pdf)
    assert "Decision: drift: redeployed" in text
    assert f"New F1 {rec['score_drift']['new_f1']:.4f}" in " ".join(text.split())
    assert "v0002" in text
    returns = Path(rec["published"]["apireturns"]).read_text()
    assert returns.splitlines()[1] == f"# via: the server at http://127.0.0.1:{port}"
    assert '"model_version": 2' in returns
    assert f"apireturns: {rec['published']['apireturns']}" in second.stdout.splitlines()
    # A report made later by hand (no cycle given) still shows the drift check behind the serving model.
    import reporting

    later = " ".join(pdf_text(reporting.generate_report(cfg)["latest"]).split())
    assert "Decision: drift: redeployed" in later
    assert f"New F1 {rec['score_drift']['new_f1']:.4f}" in later
    assert "No drift check has run" not in later


HEAVY = ("numpy", "pandas", "sklearn", "scipy", "reportlab", "matplotlib", "flask", "apscheduler")


def test_the_idle_cycle_imports_no_heavy_library(world, published):
    import subprocess
    import sys

    from conftest import REPO

    cold_start(world, published)
    result = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "fullprocess.py"), "--config",
                             str(world.path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "ingestion" in imported and "history" in imported
    assert sorted(imported & set(HEAVY)) == []
    assert "no new data in" in result.stderr


@pytest.mark.parametrize(("argv", "expected"), [
    ([], (None, False, None, False)),
    (["--config", "c.json"], ("c.json", False, None, False)),
    (["--config=c.json"], ("c.json", False, None, False)),
    (["-v", "--config", "c.json"], ("c.json", False, None, True)),
    (["--daemon", "--schedule", "*/5 * * * *"], (None, True, "*/5 * * * *", False)),
])
def test_command_line(argv, expected):
    args, _ = fullprocess.parse_args(argv)
    assert (args.config, args.daemon, args.schedule, args.verbose) == expected


@pytest.mark.parametrize(("argv", "message"), [
    (["--schedule", "* * * * *"], "--schedule needs --daemon"),
    (["--config"], "argument --config: expected one argument"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_command_line_mistakes(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        fullprocess.parse_args(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {message}")


def test_a_bad_config_is_one_line(tmp_path):
    from conftest import run_script

    (tmp_path / "config.json").write_text('{"input_folder_path": "x"}')
    result = run_script("fullprocess.py", "--config", tmp_path / "config.json")
    assert result.returncode == 2
    assert result.stderr == "error: missing config key 'output_folder_path'\n"


def test_significance_reference_includes_held_out_deliveries(tmp_path, published):
    """Deliveries that caused no redeploy are labelled rows the deployed model never saw: they join
    the test data as the significance test's reference (README, "Which reference")."""
    (tmp_path / "sourcedata").mkdir()
    (tmp_path / "testdata").mkdir()
    cfg = load_config(make_config(tmp_path, promotion_gate=False, drift_test="significance", drift_bootstrap_rounds=500))
    import datagen

    datagen.generate(400, seed=301).to_csv(cfg.test_data_file, index=False)
    cold_start(cfg, published, rows=1000)
    write_delivery(cfg, "calm.csv", rows=200, seed=9)
    calm = fullprocess.run_cycle(cfg).to_dict()
    assert calm["held_out_rows"] == 0 and calm["score_drift"]["reference_rows"] == 400
    assert calm["decision"] == cycle.NO_DRIFT and deployed_version(cfg) == 1
    write_delivery(cfg, "shifted.csv", rows=500, seed=2, drift="concept", strength=1.0)
    rec = fullprocess.run_cycle(cfg).to_dict()
    assert rec["held_out_rows"] == 200
    assert (rec["score_drift"]["reference_rows"], rec["score_drift"]["new_rows"]) == (600, 500)
    assert rec["decision"] == cycle.REDEPLOYED
    # after the redeploy the model has seen everything: nothing is held out any more
    write_delivery(cfg, "later.csv", rows=100, seed=10, drift="concept", strength=1.0)
    assert fullprocess.run_cycle(cfg).to_dict()["held_out_rows"] == 0


def test_not_enough_evidence_redeploys_nothing(tmp_path, published):
    (tmp_path / "sourcedata").mkdir()
    (tmp_path / "testdata").mkdir()
    cfg = load_config(make_config(tmp_path, promotion_gate=False, drift_test="significance", drift_bootstrap_rounds=200))
    import datagen

    datagen.generate(5, seed=301).to_csv(cfg.test_data_file, index=False)
    cold_start(cfg, published, rows=56)
    write_delivery(cfg, "few.csv", rows=3, seed=2, drift="concept", strength=1.0)
    rec = fullprocess.run_cycle(cfg).to_dict()
    assert rec["score_drift"]["drift"] is None and rec["score_drift"]["used"] == "significance"
    assert rec["decision"] == cycle.NOT_ENOUGH_EVIDENCE and rec["errors"] == []
    assert deployed_version(cfg) == 1 and len(published.records) == 1
    assert fullprocess.run_cycle(cfg).to_dict()["decision"] == cycle.NO_NEW_DATA


def test_a_missing_input_folder_is_a_failure_not_no_new_data(tmp_path, published):
    cfg = load_config(make_config(tmp_path, input_folder_path="sourcedta"))
    rec = fullprocess.run_cycle(cfg).to_dict()
    assert rec["decision"] == cycle.FAILED
    assert rec["errors"] == [f"input folder {tmp_path / 'sourcedta'} does not exist (config key input_folder_path in {cfg.path})"]
    assert fullprocess.main(["--config", str(cfg.path)]) == 2


def test_a_retrained_model_scoring_below_the_serving_one_is_flagged(world, published):
    cold_start(world, published)
    serving_f1 = deployment.current_manifest(world.prod_deployment_path)["metrics"]["f1"]
    write_delivery(world, "shifted.csv", rows=300, seed=2, drift="concept", strength=1.0)
    rec = fullprocess.run_cycle(world).to_dict()
    new_f1 = rec["retrained"]["test_metrics"]["f1"]
    assert new_f1 < serving_f1  # trained on a reversed relation, it scores worse on the old test data
    assert rec["retrained"]["warning"] == (
        f"the retrained model's test F1 {new_f1:.4f} is below the serving model's {serving_f1:.4f} "
        f"(version 1); config promotion_gate keeps a worse model out")


@pytest.mark.backends
def test_a_rollback_does_not_mark_undecided_deliveries_as_decided(world, published):
    cold_start(world, published)
    write_delivery(world, "second.csv", rows=100, seed=3)
    fullprocess.run_cycle(world).to_dict()  # no drift: nothing redeployed
    with closing(history.connect(world.history)) as conn:
        # A delivery ingested after the last deployment but never decided on (as a killed cycle leaves it)...
        write_delivery(world, "third.csv", rows=50, seed=4)
        ingestion.ingest(world, conn=conn)
        third = conn.execute("SELECT id FROM ingested_files WHERE name = 'third.csv'").fetchone()[0]
        # ...then an operator's rollback, recorded later: it decides nothing about third.csv.
        history.record_json(conn, "deployments", at=time.time() + 1, version=1, action="rollback",
                            model_sha256="x", f1=None)
        assert cycle.covered_id(conn, cycle.last_state(conn)) < third


def test_a_changed_file_under_the_trained_name_is_held_out(tmp_path, published):
    """Held-out rows are matched to the deployed model's training files by content, not by name."""
    (tmp_path / "sourcedata").mkdir()
    (tmp_path / "testdata").mkdir()
    cfg = load_config(make_config(tmp_path, promotion_gate=False, drift_test="significance", drift_bootstrap_rounds=500))
    import os

    import datagen

    datagen.generate(400, seed=301).to_csv(cfg.test_data_file, index=False)
    cold_start(cfg, published, rows=1000)  # trained on first.csv
    path = write_delivery(cfg, "first.csv", rows=200, seed=9)  # new content under the trained name
    os.utime(path, (time.time() - 5, time.time() - 5))
    assert fullprocess.run_cycle(cfg).to_dict()["decision"] == cycle.NO_DRIFT
    write_delivery(cfg, "next.csv", rows=300, seed=11)
    rec = fullprocess.run_cycle(cfg).to_dict()
    assert rec["held_out_rows"] == 200
    assert rec["score_drift"]["reference_rows"] == 600
