"""The API under a real gunicorn on a free loopback port, redeployed while requests flow."""
import json
import os
import shutil
import threading
import time

import requests
from conftest import REPO, retrain_and_deploy
from helpers import ROW, gunicorn

import datagen
from settings import FEATURES


def test_gunicorn_conf_binds_loopback_with_a_worker_per_core(monkeypatch):
    import runpy

    monkeypatch.setenv("PORT", "8123")
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.delenv("DRAS_CONFIG", raising=False)
    # the file sets PROMETHEUS_MULTIPROC_DIR when it is unset: undone after (setenv restores the unset)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    conf = runpy.run_path(str(REPO / "gunicorn.conf.py"))
    assert conf["bind"] == "127.0.0.1:8123"
    assert conf["workers"] == os.cpu_count()
    assert conf["wsgi_app"] == "app:create_app(None)"
    monkeypatch.delenv("PORT")
    assert runpy.run_path(str(REPO / "gunicorn.conf.py"))["bind"] == "127.0.0.1:8000"
    shutil.rmtree(conf["_OWN_METRICS_DIR"])


def test_redeploying_while_requests_flow(deployed):
    cfg = deployed
    rows = datagen.generate(5, seed=9)
    payload = json.dumps({"records": rows[list(FEATURES)].to_dict("records")})
    csv_body = rows.to_csv(index=False).encode()
    stop = threading.Event()
    seen = {}  # client -> [(status, version)]

    def client(name, kind):
        out = seen.setdefault(name, [])
        with requests.Session() as s:
            for _ in range(3000):  # bounded; normally stopped by `stop` long before
                if kind == "json":
                    r = s.post(url + "/prediction", data=payload, headers={"Content-Type": "application/json"}, timeout=10)
                else:
                    r = s.post(url + "/prediction", data=csv_body, headers={"Content-Type": "text/csv"}, timeout=10)
                out.append((r.status_code, r.json().get("model_version")))
                if stop.is_set():
                    break

    with gunicorn(cfg) as url:
        threads = [threading.Thread(target=client, args=(f"c{i}", "json" if i % 2 else "csv")) for i in range(4)]
        for t in threads:
            t.start()
        for seed in (2, 3, 4):
            time.sleep(0.3)
            retrain_and_deploy(cfg, seed=seed, rows=60)
        # Every worker serves the last version from its next request on.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(out and out[-1][1] == 4 for out in seen.values()):
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        health = requests.get(url + "/health", timeout=5)
    assert (health.status_code, health.json()) == (200, {"status": "ok", "model_version": 4})
    for name, out in seen.items():
        assert len(out) > 10, name
        assert {status for status, _ in out} == {200}, name
        versions = [v for _, v in out]
        # With two workers a connection may meet either; each worker only moves forward, and a
        # deployment is served by both from their next request, so the versions only move forward.
        assert versions == sorted(versions), name
        assert versions[0] == 1 and versions[-1] == 4, name


def test_the_real_server_answers_every_format_and_error(make_deployed):
    cfg = make_deployed(max_request_bytes=4096)
    data = cfg.test_data_file.read_bytes()
    auth = {"Authorization": "Bearer s3cret"}
    with gunicorn(cfg, env={"DRAS_API_TOKEN": "s3cret"}) as url:
        by_body = requests.post(url + "/prediction", data=data, headers={"Content-Type": "text/csv", **auth}, timeout=10)
        by_upload = requests.post(url + "/prediction", files={"file": ("testdata.csv", data)}, headers=auth, timeout=10)
        by_path = requests.post(url + "/prediction", json={"filepath": "testdata/testdata.csv"}, headers=auth, timeout=10)
        by_records = requests.post(url + "/prediction", json={"records": [ROW]}, headers=auth, timeout=10)
        too_big = requests.post(url + "/prediction", data=data + b"1,2,3,4,0\n" * 500,
                                headers={"Content-Type": "text/csv", **auth}, timeout=10)
        outside = requests.post(url + "/prediction", json={"filepath": "../config.json"}, headers=auth, timeout=10)
        missing = requests.get(url + "/nowhere", headers=auth, timeout=10)
        scoring = requests.get(url + "/scoring", headers=auth, timeout=10)
        denied = [requests.get(url + "/scoring", timeout=10),
                  requests.post(url + "/prediction", json={"records": [ROW]}, timeout=10)]
        health = requests.get(url + "/health", timeout=10)
    assert by_body.status_code == by_upload.status_code == by_path.status_code == by_records.status_code == 200
    assert by_body.content == by_upload.content == by_path.content
    assert len(by_body.json()["predictions"]) == 40
    assert (too_big.status_code, too_big.json()) == (
        413, {"error": "request body too large: the limit is 4096 bytes (max_request_bytes)"})
    assert outside.status_code == 403
    assert (missing.status_code, missing.json()) == (404, {"error": "no such endpoint: /nowhere"})
    assert scoring.json()["f1"] == float(cfg.score_file.read_text())
    assert [r.status_code for r in denied] == [401, 401]
    assert (health.status_code, health.json()) == (200, {"status": "ok", "model_version": 1})
