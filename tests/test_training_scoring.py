import json
import pickle

import numpy as np
import pandas as pd
import pytest
from conftest import run_script, write_delivery
from sklearn.metrics import f1_score
from sklearn.pipeline import Pipeline

import history
import ingestion
import scoring
import training
from settings import FEATURES


@pytest.fixture
def ingested(world):
    write_delivery(world, "a.csv", rows=200, seed=1)
    write_delivery(world, "b.csv", text="corporation,lastmonth_activity,lastyear_activity,number_of_employees,exited\n"
                                        "abcd,,1,1,1\n")  # a row with a missing value: kept, not trained on
    ingestion.ingest(world)
    return world


def test_trained_model_unpickles_to_the_fitted_pipeline(ingested):
    meta = training.run(ingested)
    with open(ingested.model_file, "rb") as f:
        model = pickle.load(f)
    assert isinstance(model, Pipeline)
    assert [name for name, _ in model.steps] == ["scale", "classify"]
    X = pd.read_csv(ingested.test_data_file)[list(FEATURES)]
    assert model.predict(X).shape == (40,)
    assert meta["training_rows"] == 200
    assert meta["features"] == list(FEATURES)
    on_disk = json.loads(ingested.model_file.with_suffix(".json").read_text())
    assert on_disk == meta
    import hashlib

    assert on_disk["data_sha256"] == hashlib.sha256(ingested.finaldata.read_bytes()).hexdigest()
    assert on_disk["model_sha256"] == hashlib.sha256(ingested.model_file.read_bytes()).hexdigest()


def test_training_is_deterministic(ingested):
    training.run(ingested)
    first = ingested.model_file.read_bytes()
    training.run(ingested)
    assert pickle.loads(first).named_steps["classify"].coef_.tolist() == \
        pickle.loads(ingested.model_file.read_bytes()).named_steps["classify"].coef_.tolist()


def test_single_class_is_a_clear_error(world):
    write_delivery(world, "a.csv", text="corporation,lastmonth_activity,lastyear_activity,number_of_employees,exited\n"
                                        "abcd,1,1,1,0\nefgh,2,2,2,0\n")
    ingestion.ingest(world)
    with pytest.raises(training.TrainingError, match=r"^the training data has only one class \(exited=0\)$"):
        training.run(world)


class FixedModel:
    """A stand-in whose predictions are given, for hand-computed metrics."""

    def __init__(self, pred, prob):
        self.pred, self.prob = np.array(pred), np.array(prob)

    def predict(self, X):
        return self.pred

    def predict_proba(self, X):
        return np.column_stack([1 - self.prob, self.prob])


def test_metrics_against_hand_computed_values():
    # truth 1 1 0 0 1, predicted 1 0 0 1 1: tp=2 fp=1 fn=1 -> precision 2/3, recall 2/3, F1 2/3.
    # ROC AUC: positives' scores .9 .4 .8, negatives' .2 .6 -> pairs won 2+1+2 = 5 of 6.
    y = pd.Series([1, 1, 0, 0, 1])
    model = FixedModel([1, 0, 0, 1, 1], [0.9, 0.4, 0.2, 0.6, 0.8])
    result = scoring.score_model(model, pd.DataFrame({"x": range(5)}), y)
    assert result == {"f1": 2 / 3, "precision": 2 / 3, "recall": 2 / 3, "roc_auc": pytest.approx(5 / 6, abs=1e-15),
                      "rows": 5}


def test_score_is_written_at_full_precision_and_recorded(ingested):
    training.run(ingested)
    result = scoring.run(ingested)
    with open(ingested.model_file, "rb") as f:
        model = pickle.load(f)
    test = pd.read_csv(ingested.test_data_file)
    expected = f1_score(test["exited"], model.predict(test[list(FEATURES)]))
    assert result["f1"] == expected
    assert ingested.score_file.read_text() == f"{expected!r}\n"
    assert len(ingested.score_file.read_text().strip()) > 6  # not rounded
    conn = history.connect(ingested.history)
    row = conn.execute("SELECT dataset, rows, f1, precision, recall, roc_auc FROM scores").fetchone()
    assert tuple(row) == ("test", 40, expected, result["precision"], result["recall"], result["roc_auc"])


def test_scripts_run_in_order(ingested):
    train = run_script("training.py", "--config", ingested.path)
    assert train.returncode == 0, train.stderr
    assert train.stdout == f"{ingested.model_file}: trained on 200 rows\n"
    score = run_script("scoring.py", "--config", ingested.path)
    assert score.returncode == 0, score.stderr
    f1 = ingested.score_file.read_text().strip()
    assert score.stdout.startswith(f"{ingested.score_file}: F1 {f1} (precision ")


def test_scoring_without_a_model_is_one_line(world):
    proc = run_script("scoring.py", "--config", world.path)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {world.model_file} does not exist: run training.py first\n"
