"""A model file that would run code, brought by every route a file can reach production_deployment/.

The trojan is the real trained Pipeline with one more attribute whose `__reduce__` is os.system
writing a marker file: loaded by pickle itself, the model works and the command has run. The
marker must never appear, whoever reads the file (the API, deployment.py, scoring.py,
reporting.py, diagnostics.py, the cycle), and the API must keep serving the version it had.
"""
import ast
import hashlib
import json
import os
import pickle
import shlex
import subprocess
import sys
from contextlib import closing

import pandas as pd
import pytest
import requests
from conftest import REPO, run_script, write_delivery
from helpers import ROW, gunicorn

import deployment
import history
from settings import FEATURES

REFUSAL = ("it names posix.system, which is not on the model allow-list (a scikit-learn Pipeline, "
           "StandardScaler, LogisticRegression and numpy arrays): refused, since loading it could run code")


class Trojan:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def trojan_bytes(good: bytes, marker) -> bytes:
    """The good model's pickle with a Trojan inside its LogisticRegression."""
    model = pickle.loads(good)  # the test's own freshly trained model: trusted
    model.steps[1][1].calibration = Trojan(marker)
    return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)


def plant(version_dir, data):
    """What an attacker who can write production_deployment/ does: new model bytes, the manifest's hash to match."""
    (version_dir / "trainedmodel.pkl").write_bytes(data)
    manifest = json.loads((version_dir / "manifest.json").read_text())
    manifest["files"]["trainedmodel.pkl"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (version_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def test_only_modelfile_unpickles():
    """One loading function, one place: no other module calls pickle.load, pickle.loads or an Unpickler."""
    found = []
    for path in sorted(REPO.glob("*.py")):
        if path.name == "modelfile.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("load", "loads", "Unpickler") \
                    and isinstance(node.value, ast.Name) and node.value.id == "pickle":
                found.append(f"{path.name}:{node.lineno} pickle.{node.attr}")
    assert found == []


def test_deployment_script_refuses_a_trojan_trained_model(deployed, tmp_path):
    marker = tmp_path / "marker"
    good = deployed.model_file.read_bytes()
    deployed.model_file.write_bytes(trojan_bytes(good, marker))
    done = run_script("deployment.py", "--config", deployed.path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"error: cannot deploy {deployed.model_file}: {REFUSAL}\n"
    # deploy() itself, whatever calls it, with a score recorded for the trojan or not
    with closing(history.connect(deployed.history)) as conn:
        history.record_score(conn, "test", 40, hashlib.sha256(deployed.model_file.read_bytes()).hexdigest(),
                             {"f1": 1.0, "precision": 1.0, "recall": 1.0, "roc_auc": 1.0, "rows": 40})
    done = run_script("deployment.py", "--config", deployed.path)
    assert done.stderr == f"error: cannot deploy {deployed.model_file}: {REFUSAL}\n"
    assert deployment.versions(deployed.prod_deployment_path) == [1]
    assert not marker.exists()
    # scoring.py reads the same trained file: refused in one line, exit 2
    done = run_script("scoring.py", "--config", deployed.path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"error: {deployed.model_file} is refused: {REFUSAL}\n"
    assert not marker.exists()


CYCLE = """
import sys
import deployment, fullprocess, training

trojan, when = open(sys.argv[1], "rb").read(), sys.argv[2]
real_save, real_deploy = training.save_model, deployment.deploy_from_config

def save_model(model, path, metadata):  # the retrained file replaced by the trojan as it is written
    digest = real_save(model, path, metadata)
    path.write_bytes(trojan)
    return digest

def deploy_from_config(cfg, conn=None, extra=None):  # replaced after scoring, just before deployment
    cfg.model_file.write_bytes(trojan)
    return real_deploy(cfg, conn, extra)

if when == "training":
    training.save_model = save_model
else:
    deployment.deploy_from_config = deploy_from_config
fullprocess.publish = lambda cfg, record: {"report": "stand-in", "apireturns": "stand-in"}
sys.exit(fullprocess.main(sys.argv[3:]))
"""


def cycle(cfg, *args):
    return subprocess.run([sys.executable, "-c", CYCLE, *map(str, args)], cwd=cfg.base, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize(("when", "error"), [
    ("training", "the scoring step failed: {model} is refused: {refusal}"),  # scoring.py's load refuses it first
    ("deployment", "the deployment step failed: cannot deploy {model}: {refusal}"),
])
def test_a_cycle_that_retrains_into_a_trojan_deploys_nothing(make_deployed, tmp_path, when, error):
    # the course's setting: the retrained (trojan) model goes straight to deployment, the route under test
    deployed = make_deployed(drift_test="raw", promotion_gate=False)
    marker = tmp_path / "marker"
    trojan = tmp_path / "trojan.pkl"
    trojan.write_bytes(trojan_bytes(deployed.model_file.read_bytes(), marker))
    write_delivery(deployed, "drifted.csv", rows=150, seed=7, drift="concept", strength=0.8)
    done = cycle(deployed, trojan, when, "--config", deployed.path)
    assert not marker.exists(), done.stderr
    with closing(history.connect(deployed.history)) as conn:
        record = json.loads(conn.execute("SELECT record FROM cycles ORDER BY id DESC LIMIT 1").fetchone()[0])
    assert record["decision"] == "failed", record
    assert record["errors"] == [error.format(model=deployed.model_file, refusal=REFUSAL)]
    assert deployment.versions(deployed.prod_deployment_path) == [1]


def test_a_planted_version_never_runs_and_the_previous_keeps_serving(deployed, tmp_path):
    marker = tmp_path / "marker"
    prod = deployed.prod_deployment_path
    good = deployed.model_file.read_bytes()
    deployment.deploy(prod, deployed.model_file, deployed.score_file, deployed.ingested_list)  # v2, same model
    model, _ = deployment.load_deployed(prod)
    df = pd.DataFrame([ROW])
    answer = {"model_version": 2, "predictions": model.predict(df[list(FEATURES)]).tolist(),
              "probabilities": model.predict_proba(df[list(FEATURES)])[:, 1].tolist()}
    v1 = prod / "versions" / "v0001"
    planted = v1 / "trainedmodel.pkl"
    refused = f"{planted} is refused: {REFUSAL}"
    with gunicorn(deployed, workers=2) as url:
        for _ in range(6):  # both workers serve v2
            assert requests.post(url + "/prediction", json={"records": [ROW]}, timeout=30).json() == answer
        plant(v1, trojan_bytes(good, marker))
        # a rollback onto the planted version is refused: nothing moves
        done = run_script("deployment.py", "--config", deployed.path, "--rollback")
        assert (done.returncode, done.stderr) == (2, f"error: {refused}\n")
        assert deployment.current_dir(prod).name == "v0002"
        # the attacker moves `current` by hand: the API refuses the version and keeps v2
        deployment._swap_current(prod, 1)
        for _ in range(6):
            resp = requests.post(url + "/prediction", json={"records": [ROW]}, timeout=30)
            assert (resp.status_code, resp.json()) == (200, answer)
            health = requests.get(url + "/health", timeout=30)
            assert (health.status_code, health.json()) == (200, {
                "status": "degraded", "model_version": 2,
                "error": f"the deployed model versions/v0001 failed to load: {refused}; still serving version 2"})
        scoring = requests.get(url + "/scoring", timeout=60)
        assert (scoring.status_code, scoring.json()["model_version"]) == (200, 2)
        assert not marker.exists()
    # a fresh API on the planted version: refuses it, says why, runs nothing
    with gunicorn(deployed, workers=1) as url:
        health = requests.get(url + "/health", timeout=30)
        assert (health.status_code, health.json()) == (503, {
            "status": "unavailable", "model_version": None,
            "error": f"the deployed model versions/v0001 failed to load: {refused}"})
        resp = requests.post(url + "/prediction", json={"records": [ROW]}, timeout=30)
        assert resp.status_code == 503 and resp.headers["Content-Type"] == "application/json"
    # the scripts that read the deployed model: one line, exit 2 (diagnostics says it in its JSON)
    done = run_script("reporting.py", "--config", deployed.path)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"error: no report: {refused}\n")
    done = run_script("diagnostics.py", "--config", deployed.path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["predictions_on_test_data"] == f"unavailable: {refused}"
    # the cycle's drift check loads the deployed model: the cycle fails with the reason, runs nothing
    write_delivery(deployed, "more.csv", rows=50, seed=8)
    done = run_script("fullprocess.py", "--config", deployed.path)
    with closing(history.connect(deployed.history)) as conn:
        record = json.loads(conn.execute("SELECT record FROM cycles ORDER BY id DESC LIMIT 1").fetchone()[0])
    assert (record["decision"], record["errors"]) == ("failed", [refused]), done.stderr
    assert not marker.exists()
