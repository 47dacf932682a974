"""Redeploys under load: the real gunicorn API, several client processes sending requests without a
pause, while ten deployments and a rollback happen underneath. No request fails, none gets a 5xx,
and every answer is exactly the prediction of a version that was deployed, the one it names."""
import json
import subprocess
import sys
import time

import numpy as np
import requests
from conftest import REPO, build_world, retrain_and_deploy
from helpers import gunicorn

import datagen
import deployment
from settings import FEATURES

CLIENTS = 4
DEPLOYMENTS = 10

# One client process: POSTs the same five rows (as JSON or CSV) until the stop file appears, then
# writes what it got: one [status, model_version, predictions, probabilities] per request, or the
# exception of a request that failed. It touches its ready file once its first request is over.
CLIENT = r"""
import json, os, sys, requests
url, kind, body_file, stop_file, ready_file, out_file = sys.argv[1:]
body = open(body_file, "rb").read()
ctype = "application/json" if kind == "json" else "text/csv"
seen = []
with requests.Session() as s:
    while not os.path.exists(stop_file) and len(seen) < 20000:
        try:
            r = s.post(url + "/prediction", data=body, headers={"Content-Type": ctype}, timeout=10)
            try:
                b = r.json()
            except ValueError:
                b = {"not json": r.text[:200]}
            seen.append([r.status_code, b.get("model_version"), b.get("predictions"), b.get("probabilities")])
        except requests.RequestException as exc:
            seen.append(["failed", repr(exc), None, None])
        if len(seen) == 1:
            open(ready_file, "w").close()
with open(out_file, "w") as f:
    json.dump(seen, f)
"""


def expected_answer(cfg, rows):
    model, manifest = deployment.load_deployed(cfg.prod_deployment_path)
    X = rows[list(FEATURES)].astype("float64")
    return manifest["version"], (model.predict(X).tolist(), model.predict_proba(X)[:, 1])


def wait_for_first_answers(ready, clients, timeout=60.0):
    """Until every client has had its first answer (all from version 1), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not all(path.exists() for path in ready):
        assert [p.poll() for p in clients] == [None] * len(clients), "a client ended before its first answer"
        assert time.monotonic() < deadline, f"no first answer within {timeout} s: {[p.exists() for p in ready]}"
        time.sleep(0.05)


def test_ten_redeploys_and_a_rollback_under_load_lose_no_request(tmp_path):
    cfg = build_world(tmp_path / "w", cv_folds=0)
    rows = datagen.generate(5, seed=9)
    (tmp_path / "body.json").write_text(json.dumps({"records": rows[list(FEATURES)].to_dict("records")}))
    (tmp_path / "body.csv").write_text(rows.to_csv(index=False))
    stop = tmp_path / "stop"
    ready = [tmp_path / f"client{i}.ready" for i in range(CLIENTS)]
    answers = dict([expected_answer(cfg, rows)])  # version -> (predictions, probabilities)
    with gunicorn(cfg, workers=2) as url:
        clients = [subprocess.Popen(
            [sys.executable, "-c", CLIENT, url, kind, str(tmp_path / f"body.{kind}"), str(stop), str(ready[i]),
             str(tmp_path / f"client{i}.json")], cwd=REPO)
            for i, kind in enumerate(["json", "csv"] * (CLIENTS // 2))]
        try:
            wait_for_first_answers(ready, clients)  # so that every client sees version 1
            for seed in range(2, 2 + DEPLOYMENTS):
                retrain_and_deploy(cfg, seed=seed, rows=60)
                version, answer = expected_answer(cfg, rows)
                answers[version] = answer
                time.sleep(0.1)
            deployment.rollback(cfg.prod_deployment_path)
            rolled_back_to, _ = expected_answer(cfg, rows)
            time.sleep(1.0)  # every worker serves the rollback from its next request on
            health = requests.get(url + "/health", timeout=5)
        finally:
            stop.touch()
            for proc in clients:
                proc.wait(timeout=60)
    assert sorted(answers) == list(range(1, DEPLOYMENTS + 2))
    assert rolled_back_to == DEPLOYMENTS
    # (its status may say "degraded": online monitoring sees the same five rows again and again)
    assert (health.status_code, health.json()["model_version"]) == (200, DEPLOYMENTS)
    assert [p.returncode for p in clients] == [0] * CLIENTS
    served = set()
    for i in range(CLIENTS):
        seen = json.loads((tmp_path / f"client{i}.json").read_text())
        assert len(seen) > 20, i
        failed = [s for s in seen if s[0] != 200]
        assert failed == [], (i, failed[:5])
        for status, version, predictions, probabilities in seen:
            assert version in answers, version
            assert predictions == answers[version][0], version
            np.testing.assert_allclose(probabilities, answers[version][1], rtol=0, atol=1e-9)
            served.add(version)
        assert seen[-1][1] == DEPLOYMENTS, i  # the rollback is served
    # the clients really saw the redeploys happen: the first version, the last, and some between
    assert {1, DEPLOYMENTS + 1, DEPLOYMENTS} <= served and len(served) >= 5, sorted(served)
