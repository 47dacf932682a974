"""No package index: the live API's /diagnostics still answers within a second, with the reason
(test_diagnostics.py checks diagnostics.py itself; test_app.py the test client)."""
import socket
import time

import requests
from conftest import build_world, make_config
from helpers import gunicorn

import app as app_module
from settings import load_config


def test_live_diagnostics_answer_fast_with_the_reason_when_the_index_hangs_or_refuses(tmp_path):
    with socket.socket() as hanging, socket.socket() as closed:
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(64)  # accepts connections into the backlog and never answers
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        hang_host = "127.0.0.1:%d" % hanging.getsockname()[1]
        closed_host = "127.0.0.1:%d" % closed.getsockname()[1]
        answers = {}
        for name, host in (("hangs", hang_host), ("refuses", closed_host)):
            cfg = build_world(tmp_path / name, cv_folds=0)
            cfg = load_config(make_config(cfg.base, package_index_url=f"http://{host}/simple", cv_folds=0))
            with gunicorn(cfg, workers=1) as url:
                for attempt in ("first", "second"):  # the second within the minute the failure is remembered
                    started = time.perf_counter()
                    resp = requests.get(url + "/diagnostics", timeout=10)
                    answers[name, attempt] = (time.perf_counter() - started, resp.status_code, resp.json())
    for (name, attempt), (elapsed, status, body) in answers.items():
        assert status == 200, (name, attempt)
        assert elapsed < 1.0, (name, attempt, elapsed)
        packages = body["dependencies"]["packages"]
        assert len(packages) >= 10
        host = hang_host if name == "hangs" else closed_host
        reason = (f"package index {host} did not answer within {app_module.INDEX_TIMEOUT}s" if name == "hangs"
                  else f"package index {host} unreachable: cannot connect")
        assert {(p["latest"], p["status"], p["reason"]) for p in packages} == {(None, "unknown", reason)}, (name, attempt)
