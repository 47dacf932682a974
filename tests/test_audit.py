import hashlib
import json
import subprocess
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, make_config, run_script, write_delivery
from sklearn.metrics import f1_score, make_scorer, precision_score, recall_score
from sklearn.model_selection import StratifiedKFold, cross_validate

import audit
import datagen
import delivery
import deployment
import drift
import history
import ingestion
import measures
import modelcard
import scoring
import training
from settings import ConfigError, load_config

PARAMS = {"C": 1.0, "max_iter": 1000, "class_weight": None, "random_state": 0}


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def section(card, title):
    """The lines of one `## title` section of a card, without the heading."""
    lines = card.splitlines()
    start = lines.index(f"## {title}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [line for line in lines[start:end] if line]


# ---------------------------------------------------------------- cross-validation

def test_cross_validation_equals_a_hand_run_of_scikit_learn():
    X, y = delivery.training_frame(datagen.generate(60, seed=3))
    ours = audit.cross_validation(training.build_model(PARAMS), X, y, folds=5, seed=7)

    by_hand = {"f1": [], "precision": [], "recall": []}
    oof = np.full(len(y), -1)
    for train_idx, test_idx in StratifiedKFold(n_splits=5, shuffle=True, random_state=7).split(X, y):
        model = training.build_model(PARAMS).fit(X.iloc[train_idx], y.iloc[train_idx])
        pred = model.predict(X.iloc[test_idx])
        oof[test_idx] = pred
        by_hand["f1"].append(f1_score(y.iloc[test_idx], pred, zero_division=0))
        by_hand["precision"].append(precision_score(y.iloc[test_idx], pred, zero_division=0))
        by_hand["recall"].append(recall_score(y.iloc[test_idx], pred, zero_division=0))
    theirs = cross_validate(training.build_model(PARAMS), X, y,
                            cv=StratifiedKFold(n_splits=5, shuffle=True, random_state=7),
                            scoring={"f1": make_scorer(f1_score, zero_division=0),
                                     "precision": make_scorer(precision_score, zero_division=0),
                                     "recall": make_scorer(recall_score, zero_division=0)})
    assert ours["folds"] == 5 and ours["folds_asked"] == 5 and ours["seed"] == 7 and ours["rows"] == 60
    assert ours["note"] is None
    for m in ("f1", "precision", "recall"):
        assert ours[m]["folds"] == by_hand[m] == theirs[f"test_{m}"].tolist()
        assert ours[m]["mean"] == float(np.mean(by_hand[m]))
        assert ours[m]["std"] == float(np.std(by_hand[m]))
    assert 0 < ours["f1"]["std"]  # the folds really differ: a constant would not pass the equalities by luck
    truth = y.to_numpy()
    assert (oof >= 0).all()  # every row is predicted once, by the one fold's model that never trained on it
    assert ours["out_of_fold"] == {"rows": 60, "counted": int(((truth == 1) | (oof == 1)).sum()),
                                   "hits": int(((truth == 1) & (oof == 1)).sum())}
    assert 0 < ours["out_of_fold"]["hits"] < ours["out_of_fold"]["counted"] < 60


def labels(positives, negatives):
    y = pd.Series([1] * positives + [0] * negatives)
    X = pd.DataFrame({"lastmonth_activity": np.arange(len(y)) * 7 % 50, "lastyear_activity": np.arange(len(y)),
                      "number_of_employees": np.arange(len(y)) % 13})
    return X, y


@pytest.mark.parametrize(("positives", "negatives", "asked", "folds", "note"), [
    (3, 27, 5, 3, "5 folds asked, 3 used: class exited=1 has only 3 rows"),
    (20, 2, 5, 2, "5 folds asked, 2 used: class exited=0 has only 2 rows"),
    (1, 29, 5, None, "class exited=1 has 1 row: stratified k-fold needs at least 2 rows of each class"),
    (0, 30, 5, None, "the training data has a single class"),
    (10, 10, 0, None, "cross-validation is off (cv_folds is 0)"),
    (10, 10, 4, 4, None),
])
def test_a_small_class_gets_fewer_folds_or_a_reason(positives, negatives, asked, folds, note):
    X, y = labels(positives, negatives)
    result = audit.cross_validation(training.build_model(PARAMS), X, y, folds=asked, seed=0)
    assert result["folds"] == folds
    assert result["note"] == note
    if folds is None:
        assert (result["f1"], result["precision"], result["recall"]) == (None, None, None)
    else:
        assert len(result["f1"]["folds"]) == folds
        expected = cross_validate(training.build_model(PARAMS), X, y,
                                  cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=0),
                                  scoring={"f1": make_scorer(f1_score, zero_division=0)})
        assert result["f1"]["folds"] == expected["test_f1"].tolist()


def test_training_with_one_row_of_a_class_records_why_cv_was_skipped(world):
    rows = datagen.generate(30, seed=4)
    rows["exited"] = 0
    rows.loc[5, "exited"] = 1
    rows.to_csv(world.input_folder_path / "a.csv", index=False)
    ingestion.ingest(world)
    meta = training.run(world)
    assert meta["cross_validation"]["folds"] is None
    assert meta["cross_validation"]["note"] == ("class exited=1 has 1 row: stratified k-fold needs at least 2 rows "
                                                "of each class")


# ---------------------------------------------------------------- slices

def test_slices_flag_the_known_bad_slice_and_the_too_small_one():
    # employees < 100: 10 rows, truth 1111100000, predicted 1100011000: tp 2, fp 2, fn 3
    #   -> precision 2/4, recall 2/5, F1 4/9, far below the overall 0.8
    # 100 <= employees < 1000: 12 rows, all right -> F1 1
    # employees >= 1000: 4 rows, all right, but fewer than 10: too small to judge
    # overall: tp 2+6+2 = 10, fp 2, fn 3 -> precision 10/12, recall 10/13, F1 20/25 = 0.8
    y_true = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0] + [1] * 6 + [0] * 6 + [1, 0, 1, 0]
    y_pred = [1, 1, 0, 0, 0, 1, 1, 0, 0, 0] + [1] * 6 + [0] * 6 + [1, 0, 1, 0]
    X = pd.DataFrame({"number_of_employees": [5] * 10 + [100] * 6 + [999] * 6 + [1000, 5000, 1000, 7]})
    X.loc[25, "number_of_employees"] = 1e6
    definitions = [{"feature": "number_of_employees", "source": "fixed edges", "edges": [100.0, 1000.0]}]
    result = audit.slice_performance(y_true, y_pred, X, definitions, margin=0.1, min_rows=10)
    assert result["overall"]["f1"] == f1_score(y_true, y_pred) == 0.8
    assert result["slices"] == [
        {"feature": "number_of_employees", "band": 0, "label": "number_of_employees < 100", "lower": None,
         "upper": 100.0, "rows": 10, "exits": 5, "f1": 4 / 9, "precision": 0.5, "recall": 0.4,
         "flag": "below overall"},
        {"feature": "number_of_employees", "band": 1, "label": "100 <= number_of_employees < 1000",
         "lower": 100.0, "upper": 1000.0, "rows": 12, "exits": 6, "f1": 1.0, "precision": 1.0, "recall": 1.0,
         "flag": None},
        {"feature": "number_of_employees", "band": 2, "label": "number_of_employees >= 1000", "lower": 1000.0,
         "upper": None, "rows": 4, "exits": 2, "f1": 1.0, "precision": 1.0, "recall": 1.0, "flag": "too small"},
    ]
    assert result["below_overall"] == ["number_of_employees < 100"]
    assert result["not_judged"] == ["number_of_employees >= 1000"]
    # A wider margin forgives the bad slice: 0.8 - 4/9 = 0.356 is not more than 0.4.
    assert audit.slice_performance(y_true, y_pred, X, definitions, margin=0.4)["below_overall"] == []


@pytest.mark.parametrize("seed", range(8))
def test_metrics_from_counts_are_scikit_learns_floats(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    y_true, y_pred = rng.random(n) < rng.random(), rng.random(n) < rng.random()
    ours = measures.metrics_from_counts(measures.confusion(y_true.astype(int), y_pred.astype(int)))
    assert ours == scoring.metrics(y_true.astype(int), y_pred.astype(int))


def test_a_slice_with_no_exit_is_not_judged():
    y_true = [0] * 12 + [1, 0] * 6
    y_pred = [1] * 12 + [1, 0] * 6
    X = pd.DataFrame({"lastmonth_activity": [1] * 12 + [50] * 12})
    definitions = [{"feature": "lastmonth_activity", "source": "fixed edges", "edges": [10.0]}]
    result = audit.slice_performance(y_true, y_pred, X, definitions, margin=0.1, min_rows=10)
    assert [(s["rows"], s["exits"], s["f1"], s["flag"]) for s in result["slices"]] == [
        (12, 0, 0.0, "no exits"), (12, 6, 1.0, None)]
    assert result["not_judged"] == ["lastmonth_activity < 10"]


def test_quantile_bands_come_from_the_training_data_and_fixed_edges_from_config():
    X = pd.DataFrame({"number_of_employees": np.arange(1, 101), "lastmonth_activity": [3] * 100})
    spec = {"number_of_employees": {"bands": 4}, "lastmonth_activity": {"bands": 3},
            "lastyear_activity": {"edges": [500.0, 20.0]}}
    assert audit.slice_definitions(spec, X) == [
        {"feature": "number_of_employees", "source": "4 quantile bands of the training data",
         "edges": np.quantile(np.arange(1, 101), [0.25, 0.5, 0.75]).tolist()},
        # every value the same: the repeated quantiles collapse into one edge, two bands
        {"feature": "lastmonth_activity", "source": "3 quantile bands of the training data", "edges": [3.0]},
        {"feature": "lastyear_activity", "source": "fixed edges", "edges": [20.0, 500.0]},
    ]
    assert [audit.band_label("x", [25.75, 50.5], i) for i in range(3)] == [
        "x < 25.75", "25.75 <= x < 50.50", "x >= 50.50"]


def test_slices_of_a_new_delivery_leave_out_incomplete_rows():
    model = training.train(datagen.generate(200, seed=1), PARAMS)
    delivery = datagen.generate(50, seed=9).astype({"number_of_employees": "Int64"})
    delivery.loc[0, "number_of_employees"] = pd.NA
    definitions = [{"feature": "number_of_employees", "source": "fixed edges", "edges": [150.0]}]
    result = audit.slices_for_rows(model, delivery, definitions, margin=0.1, min_rows=5)
    complete = delivery.iloc[1:]
    X = complete[["lastmonth_activity", "lastyear_activity", "number_of_employees"]].astype("float64")
    pred = model.predict(X)
    assert result["overall"] == scoring.metrics(complete["exited"].to_numpy(), pred)
    small = X["number_of_employees"].to_numpy() < 150
    assert [s["rows"] for s in result["slices"]] == [int(small.sum()), int((~small).sum())]
    assert result["slices"][0]["f1"] == f1_score(complete["exited"][small], pred[small], zero_division=0)


# ---------------------------------------------------------------- training records

@pytest.fixture
def trained(world):
    write_delivery(world, "a.csv", rows=200, seed=1)
    ingestion.ingest(world)
    meta = training.run(world)
    score = scoring.run(world)
    return world, meta, score


def test_training_records_cv_slices_and_provenance(trained):
    cfg, meta, score = trained
    X, y = delivery.training_frame(ingestion.read_finaldata(cfg.finaldata))
    assert meta["cross_validation"] == audit.cross_validation(training.build_model(cfg.model), X, y, 5, seed=0)
    assert meta["evaluation"]["metrics"] == {**score, "confusion": meta["evaluation"]["metrics"]["confusion"]}
    confusion = meta["evaluation"]["metrics"]["confusion"]
    assert sum(confusion.values()) == 40
    assert meta["slice_definitions"] == [
        {"feature": f, "source": "3 quantile bands of the training data",
         "edges": np.quantile(X[f].to_numpy(), [1 / 3, 2 / 3]).tolist()}
        for f in ("number_of_employees", "lastmonth_activity")]
    assert [s["rows"] for s in meta["evaluation"]["slices"]["slices"][:3]] != [0, 0, 0]
    assert sum(s["rows"] for s in meta["evaluation"]["slices"]["slices"]) == 2 * 40
    a_csv = cfg.input_folder_path / "a.csv"
    assert [(f["name"], f["sha256"], f["rows"]) for f in meta["training_files"]] == [("a.csv", sha(a_csv), 200)]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert meta["code_version"]["commit"] == head.strip()
    conn = history.connect(cfg.history)
    row = conn.execute("SELECT metrics, model_sha256 FROM training_runs").fetchone()
    assert json.loads(row["metrics"]) == {"test": meta["evaluation"]["metrics"], "cross_validation":
                                          meta["cross_validation"], "slices": meta["evaluation"]["slices"]}
    assert row["model_sha256"] == sha(cfg.model_file)


def test_training_without_test_data_still_trains(world):
    write_delivery(world, "a.csv", rows=100, seed=1)
    ingestion.ingest(world)
    world.test_data_file.unlink()
    meta = training.run(world)
    assert meta["evaluation"] == {"error": f"cannot read test data {world.test_data_file}: No such file or directory"}
    assert meta["cross_validation"]["folds"] == 5


@pytest.mark.backends
def test_runs_are_listed_newest_first(trained, tmp_path):
    cfg, first, _ = trained
    other = load_config(make_config(tmp_path, cv_folds=3, history_url=cfg.history_url))
    second = training.run(other)
    proc = run_script("training.py", "--config", cfg.path, "--runs")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split("  ")[0] == "run"
    assert [line.split()[0] for line in lines[1:]] == ["2", "1"]
    for line, meta in zip(lines[1:], (second, first)):
        cv = meta["cross_validation"]
        assert line.split()[3:] == [
            "200", meta["data_sha256"][:12], f"{meta['evaluation']['metrics']['f1']:.4f}",
            f"{cv['f1']['mean']:.4f}", "±", f"{cv['f1']['std']:.4f},", str(cv["folds"]),
            str(len(meta["evaluation"]["slices"]["below_overall"]) + len(meta["evaluation"]["slices"]["not_judged"])),
            meta["model_sha256"][:12], str(cfg.model_file)]
    assert second["cross_validation"]["folds"] == 3


def test_runs_before_any_training(world):
    proc = run_script("training.py", "--config", world.path, "--runs")
    assert (proc.returncode, proc.stdout) == (0, f"no training runs recorded: {world.history} does not exist\n")


# ---------------------------------------------------------------- the model card

def test_the_card_states_the_recorded_facts(trained):
    cfg, meta, score = trained
    conn = history.connect(cfg.history)
    manifest = deployment.deploy_from_config(cfg, conn)
    prod = cfg.prod_deployment_path
    card = (prod / "modelcard.md").read_text()
    assert (prod / "modelcard.md").read_bytes() == (prod / "versions" / "v0001" / "modelcard.md").read_bytes()
    assert card == modelcard.model_card(deployment.read_manifest(prod / "versions" / "v0001"))  # regenerated exactly
    assert manifest["files"]["modelcard.md"] == {"sha256": sha(prod / "modelcard.md"),
                                                 "bytes": (prod / "modelcard.md").stat().st_size}
    assert audit.slices_for_deployment(manifest) == meta["evaluation"]["slices"]
    assert audit.cross_validation_for_deployment(manifest) == meta["cross_validation"]

    a_csv = cfg.input_folder_path / "a.csv"
    at = conn.execute("SELECT at FROM ingested_files").fetchone()[0]
    when = datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")
    details = section(card, "Model details")
    assert details[:6] == [
        f"- Type: {audit.MODEL_TYPE}",
        "- Hyperparameters: C=1.0, class_weight=None, max_iter=1000, random_state=0",
        "- Features: `lastmonth_activity`, `lastyear_activity`, `number_of_employees`; target `exited`",
        f"- Version: v0001, deployed {manifest['deployed_at']}",
        f"- Trained: {meta['trained_at']}",
        f"- Model file SHA-256: `{sha(cfg.model_file)}`",
    ]
    assert details[6].startswith(f"- Code version: git commit `{meta['code_version']['commit']}`")
    data = section(card, "Training data")
    assert data[0] == f"- 200 complete rows of `finaldata.csv` (SHA-256 `{sha(cfg.finaldata)}`), merged and " \
                      "deduplicated from:"
    assert data[3] == f"| a.csv | `{sha(a_csv)}` | 200 | {when} |"
    assert data[4] == (f"Lineage: a.csv {sha(a_csv)[:12]}. Each delivery is kept in the archive as "
                       "`deliveries/<SHA-256>.csv.gz`; `python deployment.py --reproduce 1` rebuilds this model from them.")
    evaluation = section(card, "Evaluation")
    assert evaluation[1] == (f"- F1 {score['f1']:.4f}, precision {score['precision']:.4f}, recall "
                             f"{score['recall']:.4f}, ROC AUC {score['roc_auc']:.4f}, on 40 rows")
    cv = meta["cross_validation"]
    assert evaluation[3] == (f"- f1 {cv['f1']['mean']:.4f} ± {cv['f1']['std']:.4f}, precision "
                             f"{cv['precision']['mean']:.4f} ± {cv['precision']['std']:.4f}, recall "
                             f"{cv['recall']['mean']:.4f} ± {cv['recall']['std']:.4f} (mean ± std over 5 "
                             "stratified folds, seed 0, 200 rows)")
    rows = [line for line in evaluation if line.startswith("| ") and "slice" not in line]
    slices = meta["evaluation"]["slices"]["slices"]
    assert rows == [f"| {s['label']} | {s['rows']} | {s['exits']} | {s['f1']:.4f} | {s['precision']:.4f} | "
                    f"{s['recall']:.4f} | {s['flag'] or 'ok'} |" for s in slices]
    assert section(card, "Drift decision") == ["First deployment / deployed by hand, no drift check."]
    caveats = section(card, "Caveats")
    assert caveats[0].startswith("- Small test set: 40 rows: one prediction more or less moves the test F1 by up to ")
    assert caveats[-1] == "- `corporation` is an identifier and is never used as a feature."


def test_the_card_renders_the_cycles_drift_decision(trained):
    cfg, _, _ = trained
    decision = drift.decide("parametric", new_f1=0.5, deployed_f1=0.8, history=[0.8], min_history=3)
    deployment.deploy_from_config(cfg, extra={"cycle": {"id": 12, "decision": "retrain", "score_drift": decision,
                                                        "feature_drift": {"drifted": ["lastmonth_activity"]}}})
    card = (cfg.prod_deployment_path / "modelcard.md").read_text()
    assert section(card, "Drift decision") == [
        "- Score drift: **drift** (test `parametric`, used `raw`)",
        "- Reason: new F1 0.5000 is lower than the deployed score 0.8000",
        "- F1 on the new rows: 0.5000",
        "- F1 of the model it replaced: 0.8000",
        "- threshold: 0.8000",
        "- Fallback: 1 score(s) of history, 3 needed for the parametric test: used the raw comparison",
        "- Feature drift: `lastmonth_activity`",
        "- decision: retrain",
        "- id: 12",
    ]


def test_a_cycle_id_alone_is_not_a_drift_decision(trained):
    cfg, _, _ = trained
    deployment.deploy_from_config(cfg, extra={"cycle": 7, "drift_test": "raw"})
    card = (cfg.prod_deployment_path / "modelcard.md").read_text()
    assert section(card, "Drift decision") == [
        "Deployed by monitoring cycle 7, which passed no drift decision to the deployment."]


def test_the_card_follows_the_serving_version_on_redeploy_and_rollback(trained):
    cfg, _, _ = trained
    prod = cfg.prod_deployment_path
    root = prod / "modelcard.md"
    deployment.deploy_from_config(cfg)
    first = root.read_bytes()
    write_delivery(cfg, "b.csv", rows=100, seed=5, drift="concept", strength=1.0)
    ingestion.ingest(cfg)
    training.run(cfg)
    scoring.run(cfg)
    deployment.deploy_from_config(cfg)
    second = root.read_bytes()
    assert second == (prod / "versions" / "v0002" / "modelcard.md").read_bytes() != first
    assert f"| b.csv | `{sha(cfg.input_folder_path / 'b.csv')}` | 100 |".encode() in second
    assert b"| b.csv |" not in first

    deployment.rollback(prod)
    assert root.read_bytes() == first
    assert deployment.current_manifest(prod)["version"] == 1

    deployment.deploy_from_config(cfg)  # the newest model again, as v0003: its card is regenerated
    third = root.read_bytes()
    manifest = deployment.current_manifest(prod)
    assert third.decode() == modelcard.model_card(manifest)
    changed = [(a, b) for a, b in zip(second.decode().splitlines(), third.decode().splitlines()) if a != b]
    assert [b for _, b in changed] == [
        "# Model card: client attrition model v0003",
        "Generated from the recorded facts of version v0003 (its `manifest.json`) at its deployment; never edited "
        "by hand.",
        f"- Version: v0003, deployed {manifest['deployed_at']}",
        f"Lineage: a.csv {sha(cfg.input_folder_path / 'a.csv')[:12]}, b.csv {sha(cfg.input_folder_path / 'b.csv')[:12]}."
        " Each delivery is kept in the archive as `deliveries/<SHA-256>.csv.gz`; `python deployment.py --reproduce 3`"
        " rebuilds this model from them.",
    ]


def test_the_card_warns_of_data_outside_the_training_range(trained):
    cfg, meta, _ = trained
    big = datagen.generate(20, seed=8)
    big.loc[3, "number_of_employees"] = 10**9
    big.to_csv(cfg.input_folder_path / "big.csv", index=False)
    ingestion.ingest(cfg)  # ingested, not trained on: the deployed model never saw such a client
    deployment.deploy_from_config(cfg)
    caveats = section((cfg.prod_deployment_path / "modelcard.md").read_text(), "Caveats")
    low, high = meta["feature_ranges"]["number_of_employees"].values()
    assert (f"- `number_of_employees` in the ingested data goes up to 1000000000, outside its training range "
            f"{low:.0f} to {high:.0f}: predictions there are extrapolations.") in caveats


def test_a_card_without_recorded_facts_says_so(tmp_path):
    manifest = {"version": 4, "deployed_at": "2026-01-02T03:04:05+00:00", "metrics": {"f1": 0.5},
                "files": {"trainedmodel.pkl": {"sha256": "ab" * 32}}}
    card = modelcard.model_card(manifest)
    assert "- Code version: unknown" in card.splitlines()
    assert section(card, "Drift decision") == ["First deployment / deployed by hand, no drift check."]
    assert "The ingested files were not recorded." in card
    assert audit.code_version(repo=tmp_path) == {"commit": None, "dirty": None}
    assert modelcard.report_audit(manifest) is None  # deployed before audits: the report says none is provided


def test_f1_swing_by_hand():
    # tp 2, fp 1, fn 1: F1 4/6. One caught exit missed: 2/5, the largest move, 4/6 - 2/5 = 4/15.
    assert audit.f1_swing({"tp": 2, "fp": 1, "fn": 1, "tn": 1}) == pytest.approx(4 / 15, abs=1e-15)


# ---------------------------------------------------------------- config

@pytest.mark.parametrize(("change", "message"), [
    ({"cv_folds": 1}, "config key 'cv_folds' must be 0 (off) or at least 2"),
    ({"slice_margin": 1.5}, "config key 'slice_margin' must be between 0 and 1"),
    ({"slice_min_rows": 0}, "config key 'slice_min_rows' must be at least 1"),
    ({"slices": {"corporation": {"bands": 3}}},
     "config key 'slices' entry 'corporation': not a feature (features: lastmonth_activity, lastyear_activity, "
     "number_of_employees)"),
    ({"slices": {"number_of_employees": {"bands": 1}}},
     "config key 'slices' entry 'number_of_employees': bands must be an integer of at least 2, not 1"),
    ({"slices": {"number_of_employees": {"edges": [10, 5]}}},
     "config key 'slices' entry 'number_of_employees': edges must be strictly increasing, not [10, 5]"),
    ({"slices": {"number_of_employees": {"bins": 3}}},
     "config key 'slices' entry 'number_of_employees' must be {\"bands\": N} or {\"edges\": [numbers]}, "
     "not {\"bins\": 3}"),
])
def test_bad_audit_config_is_one_line(tmp_path, change, message):
    with pytest.raises(ConfigError) as err:
        load_config(make_config(tmp_path, **change))
    assert str(err.value) == message


def test_audit_config_defaults(tmp_path):
    cfg = load_config(make_config(tmp_path))
    assert (cfg.cv_folds, cfg.slice_margin, cfg.slice_min_rows) == (5, 0.1, 10)
    assert cfg.slices == {"number_of_employees": {"bands": 3}, "lastmonth_activity": {"bands": 3}}
    fixed = load_config(make_config(tmp_path, slices={"lastyear_activity": {"edges": [100, 1000]}}))
    assert fixed.slices == {"lastyear_activity": {"edges": [100.0, 1000.0]}}


def test_a_new_delivery_is_cut_on_the_deployed_models_slices(trained):
    cfg, meta, _ = trained
    deployment.deploy_from_config(cfg)
    model, manifest = deployment.load_deployed(cfg.prod_deployment_path)
    delivery = datagen.generate(300, seed=21, drift="covariate", strength=1.0)
    result = audit.slices_for_config(cfg, model, delivery, manifest)
    assert [s["label"] for s in result["slices"]] == [s["label"] for s in meta["evaluation"]["slices"]["slices"]]
    assert [s["rows"] for s in result["slices"][:3]] == [
        int(n) for n in np.bincount(np.searchsorted(meta["slice_definitions"][0]["edges"],
                                                    delivery["number_of_employees"], side="right"), minlength=3)]
    assert result["overall"] == scoring.metrics(delivery["exited"].to_numpy(),
                                                model.predict(delivery[list(audit.FEATURES)].astype("float64")))
    assert audit.slices_for_config(cfg, model, delivery, {"training": {}}) is None


def test_cross_validation_on_many_rows_uses_a_stratified_sample():
    import datagen
    from sklearn.model_selection import StratifiedKFold, cross_validate, train_test_split

    from delivery import training_frame
    from training import build_model

    X, y = training_frame(datagen.generate(3000, seed=8))
    params = {"C": 1.0, "max_iter": 1000, "class_weight": None, "random_state": 0}
    cv = audit.cross_validation(build_model(params), X, y, folds=3, seed=4, max_rows=1000)
    Xs, _, ys, _ = train_test_split(X, y, train_size=1000, stratify=y, random_state=4)
    by_hand = cross_validate(build_model(params), Xs, ys, cv=StratifiedKFold(3, shuffle=True, random_state=4),
                             scoring="f1")
    assert cv["rows"] == 1000
    assert cv["note"] == "on a stratified sample of 1000 of 3000 rows"
    assert cv["f1"]["folds"] == [float(v) for v in by_hand["test_score"]]
