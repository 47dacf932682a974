import gzip
import json
import math
import os
import pickle
import socket
import tempfile
import threading
import time
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version as installed_version
from pathlib import Path

import pandas as pd
import pytest
from conftest import HEADER, make_config, run_script, write_delivery

import deployment
import diagnostics
import history
import ingestion
from settings import COLUMNS, load_config

# Four rows, two gaps: every figure below is worked out by hand from these.
SMALL = HEADER + ("aaaa,10,100,5,0\n"
                  "bbbb,20,200,,1\n"
                  "cccc,30,,15,0\n"
                  "dddd,40,400,25,1\n")


def refused_url():
    """An index URL on a loopback port nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple", f"127.0.0.1:{port}"


@pytest.fixture
def small(world):
    write_delivery(world, "small.csv", text=SMALL)
    ingestion.ingest(world)
    return world


def test_summary_and_missing_data_match_hand_computed_values(small):
    assert diagnostics.dataframe_summary(small) == {
        "lastmonth_activity": {"mean": 25.0, "median": 25.0, "std": pytest.approx(math.sqrt(500 / 3)),
                               "min": 10.0, "max": 40.0, "count": 4},
        "lastyear_activity": {"mean": pytest.approx(700 / 3), "median": 200.0,
                              "std": pytest.approx(math.sqrt(70000 / 3)), "min": 100.0, "max": 400.0,
                              "count": 3},
        "number_of_employees": {"mean": 15.0, "median": 15.0, "std": 10.0, "min": 5.0, "max": 25.0,
                                "count": 3},
    }
    assert diagnostics.missing_data(small) == {"corporation": 0.0, "lastmonth_activity": 0.0,
                                               "lastyear_activity": 25.0, "number_of_employees": 25.0,
                                               "exited": 0.0}


def test_summary_never_rereads_finaldata(small):
    before = diagnostics.dataframe_summary(small), diagnostics.missing_data(small)
    small.finaldata.write_text("this is not the data any more\n")
    assert (diagnostics.dataframe_summary(small), diagnostics.missing_data(small)) == before


def test_summary_before_any_ingestion(world):
    assert diagnostics.dataframe_summary(world) == {}
    assert diagnostics.missing_data(world) == {c: None for c in COLUMNS}
    assert diagnostics.recorded_timings(world) == {}


def test_recorded_timings_are_the_latest_of_each_step(world):
    with closing(history.connect(world.history)) as conn:
        history.record_timing(conn, "ingestion", 1.5)
        history.record_timing(conn, "training", 3.25)
        history.record_timing(conn, "ingestion", 2.0)
    assert diagnostics.recorded_timings(world) == {"ingestion": 2.0, "training": 3.25}


def test_model_predictions_are_the_deployed_models_one_per_row_in_order(deployed):
    with open(deployed.prod_deployment_path / "trainedmodel.pkl", "rb") as f:
        model = pickle.load(f)
    test = pd.read_csv(deployed.test_data_file)
    expected = model.predict(test[["lastmonth_activity", "lastyear_activity", "number_of_employees"]]).tolist()
    assert 0 < sum(expected) < len(expected)  # both classes, so the order below means something
    assert diagnostics.model_predictions(deployed.test_data_file, cfg=deployed) == expected
    assert diagnostics.model_predictions(test.iloc[::-1], cfg=deployed) == expected[::-1]
    assert diagnostics.model_predictions(test.iloc[:3], model=model) == expected[:3]


def test_model_predictions_without_a_deployed_model(world):
    with pytest.raises(deployment.DeploymentError, match="no model is deployed"):
        diagnostics.model_predictions(world.test_data_file, cfg=world)


def snapshot(root):
    """Every file under `root`: its bytes and its modification time."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[p] = (st.st_mtime_ns, os.readlink(p) if os.path.islink(p) else Path(p).read_bytes())
    return out


def history_rows(cfg):
    """Every row of every table of cfg's history."""
    with closing(history.connect_ro(cfg.history)) as conn:
        return {t: sorted(map(tuple, conn.execute(f"SELECT * FROM {t}"))) for t in history.tables(conn)}


@pytest.mark.backends
def test_execution_time_never_touches_the_live_folders(deployed, tmp_path_factory, monkeypatch):
    scratch = tmp_path_factory.mktemp("scratch")
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    rows = history_rows(deployed)  # first: SQLite's reader leaves its -shm file beside the database
    before = snapshot(deployed.base)
    assert len(before) > 10 and len(rows["ingested_files"]) == 1
    result = diagnostics.execution_time(deployed)
    assert snapshot(deployed.base) == before
    assert history_rows(deployed) == rows  # nor the history, wherever it is
    assert sorted(result) == ["ingestion", "training"]
    assert all(isinstance(v, float) and 0 < v < 60 for v in result.values())
    assert list(scratch.iterdir()) == []  # the scratch copy is gone too


def test_execution_time_with_nothing_to_train_on(world):
    result = diagnostics.execution_time(world)
    assert result["training"] is None and result["ingestion"] >= 0


def write_requirements(tmp_path, lines):
    path = tmp_path / "requirements-test.txt"
    path.write_text("# pinned\n" + "".join(line + "\n" for line in lines))
    return path


def test_dependencies_with_the_index_unreachable_answer_fast_with_the_reason(world, tmp_path):
    url, host = refused_url()
    cfg = load_config(make_config(tmp_path, package_index_url=url))
    numpy_version = installed_version("numpy")
    reqs = write_requirements(tmp_path, [f"numpy=={numpy_version}", "no-such-package-here==1.0"])
    reason = f"package index {host} unreachable: cannot connect"
    expected = {"index": url, "packages": [
        {"package": "numpy", "pinned": numpy_version, "installed": numpy_version, "latest": None,
         "status": "unknown", "reason": reason},
        {"package": "no-such-package-here", "pinned": "1.0", "installed": None, "latest": None,
         "status": "not as pinned", "reason": reason},
    ]}
    started = time.perf_counter()
    assert diagnostics.outdated_packages_list(cfg, requirements=reqs) == expected
    assert time.perf_counter() - started < 2.0
    # The failure is remembered for a minute: the second call does not wait on the index again.
    cache = json.loads((cfg.output_folder_path / "package_index_cache.json").read_text())
    assert cache[url]["numpy"]["error"] == reason
    assert diagnostics.outdated_packages_list(cfg, requirements=reqs) == expected


def test_dependencies_with_an_index_that_hangs_answer_within_the_deadline(world, tmp_path):
    with socket.socket() as server:  # accepts connections (the backlog) and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        host = "127.0.0.1:%d" % server.getsockname()[1]
        reqs = write_requirements(tmp_path, ["numpy==1.0", "pandas==1.0"])
        started = time.perf_counter()
        result = diagnostics.outdated_packages_list(None, requirements=reqs, index_url=f"http://{host}/simple",
                                                    timeout=0.5)
        elapsed = time.perf_counter() - started
    assert 0.5 <= elapsed < 1.0  # it waited for the deadline, and no longer
    assert [(p["package"], p["latest"], p["reason"]) for p in result["packages"]] == [
        ("numpy", None, f"package index {host} did not answer within 0.5s"),
        ("pandas", None, f"package index {host} did not answer within 0.5s"),
    ]


class FakeIndex:
    """A tiny PEP 691 JSON simple index on 127.0.0.1 that counts the requests it gets."""

    def __init__(self, projects):
        self.projects, self.requests = projects, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Accept")))
                name = self.path.removeprefix("/simple/").rstrip("/")
                if name not in outer.projects:
                    self.send_error(404)
                    return
                versions = outer.projects[name]
                if isinstance(versions, str):  # an HTML page, as an index without the JSON API answers
                    body, kind = versions.encode(), "text/html"
                else:
                    body = json.dumps({"meta": {"api-version": "1.1"}, "name": name, "versions": versions,
                                       "files": []}).encode()
                    kind = "application/vnd.pypi.simple.v1+json"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                if "gzip" in (self.headers.get("Accept-Encoding") or ""):
                    body = gzip.compress(body)
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket.listen(64)
        self.url = "http://127.0.0.1:%d/simple" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_dependencies_from_a_local_index_exact_versions_then_the_cache(world, tmp_path):
    numpy_v, prom_v, yaml_v, flask_v = (installed_version(n) for n in ("numpy", "prometheus-client", "pyyaml",
                                                                         "flask"))
    projects = {
        "numpy": ["1.0", numpy_v, "99.0.1", "99.0.0", "100.0rc1", "101.0.dev1", "not a version"],
        "prometheus-client": ["0.1.0", prom_v],
        "pyyaml": ["5.0", "6.0"],  # the index is behind the pin: not outdated
        "flask": "<html><body><a href='flask-3.1.3.tar.gz'>flask-3.1.3.tar.gz</a></body></html>",
    }
    reqs = write_requirements(tmp_path, [f"numpy=={numpy_v}", f"prometheus_client=={prom_v}",
                                         f"pyyaml=={yaml_v}", "missing-on-index==2.0", f"flask=={flask_v}"])
    with FakeIndex(projects) as index:
        cfg = load_config(make_config(tmp_path, package_index_url=index.url))
        first = diagnostics.outdated_packages_list(cfg, requirements=reqs)
        host = index.url.split("/")[2]
        assert first == {"index": index.url, "packages": [
            {"package": "numpy", "pinned": numpy_v, "installed": numpy_v, "latest": "99.0.1", "status": "outdated"},
            {"package": "prometheus_client", "pinned": prom_v, "installed": prom_v, "latest": prom_v,
             "status": "up to date"},
            {"package": "pyyaml", "pinned": yaml_v, "installed": yaml_v, "latest": "6.0", "status": "up to date"},
            {"package": "missing-on-index", "pinned": "2.0", "installed": None, "latest": None,
             "status": "not as pinned", "reason": f"package index {host} answered HTTP 404"},
            {"package": "flask", "pinned": flask_v, "installed": flask_v, "latest": None, "status": "unknown",
             "reason": f"package index {host} answer unusable: not the JSON simple API"},
        ]}
        assert sorted(index.requests) == sorted(
            (f"/simple/{n}/", "application/vnd.pypi.simple.v1+json")
            for n in ("numpy", "prometheus-client", "pyyaml", "missing-on-index", "flask"))
        asked = len(index.requests)
        assert diagnostics.outdated_packages_list(cfg, requirements=reqs) == first
        assert len(index.requests) == asked  # answered from the day's cache
        # A day later the versions are asked again.
        cache_path = cfg.output_folder_path / "package_index_cache.json"
        cache = json.loads(cache_path.read_text())
        for entry in cache[index.url].values():
            entry["at"] -= diagnostics.CACHE_SECONDS + 1
        cache_path.write_text(json.dumps(cache))
        index.projects["numpy"].append("99.1")
        third = diagnostics.outdated_packages_list(cfg, requirements=reqs)
        assert third["packages"][0]["latest"] == "99.1"
        assert len(index.requests) == asked + 5


def test_collect_records_the_run_in_the_history(small, tmp_path):
    url, _ = refused_url()
    cfg = load_config(make_config(small.base, package_index_url=url, history_url=small.history_url))
    result = diagnostics.collect(cfg, measure=False)
    assert result["summary"] == diagnostics.dataframe_summary(cfg)
    assert result["missing_data"]["lastyear_activity"] == 25.0
    assert result["execution_time"] == result["recorded_timings"] == diagnostics.recorded_timings(cfg)
    assert list(result["recorded_timings"]) == ["ingestion"]
    with closing(history.connect(cfg.history)) as conn:
        rows = conn.execute("SELECT kind, value FROM diagnostics").fetchall()
    assert [(r["kind"], json.loads(r["value"])) for r in rows] == [("all", json.loads(json.dumps(result)))]


def test_cli_prints_the_diagnostics_as_json(deployed):
    url, _ = refused_url()
    cfg_path = make_config(deployed.base, package_index_url=url, history_url=deployed.history_url)
    proc = run_script("diagnostics.py", "--config", cfg_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert sorted(out) == ["dependencies", "execution_time", "missing_data", "predictions_on_test_data",
                           "recorded_timings", "summary"]
    assert out["predictions_on_test_data"] == diagnostics.model_predictions(deployed.test_data_file, cfg=deployed)
    assert out["summary"] == diagnostics.dataframe_summary(deployed)


def test_cli_bad_config_is_one_line(tmp_path):
    proc = run_script("diagnostics.py", "--config", tmp_path / "nope.json")
    assert proc.returncode == 2
    assert proc.stderr == f"error: config file not found: {tmp_path / 'nope.json'}\n"


def test_dependencies_from_an_index_that_speaks_no_http(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        host = "127.0.0.1:%d" % server.getsockname()[1]

        server.settimeout(0.1)
        stop = threading.Event()

        def serve():
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.recv(4096)
                    conn.sendall(b"garbage\r\n\r\n")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        reqs = write_requirements(tmp_path, ["numpy==1.0"])
        result = diagnostics.outdated_packages_list(None, requirements=reqs, index_url=f"http://{host}/simple",
                                                    timeout=1.0)
        stop.set()
        thread.join(5)
        assert not thread.is_alive()
    assert result["packages"][0]["reason"] == f"package index {host} unusable: its answer is not HTTP"
    assert result["packages"][0]["latest"] is None


@pytest.mark.parametrize(("rows", "message"), [
    ({"lastmonth_activity": [1, 2], "lastyear_activity": [3, 4]}, "missing column(s): number_of_employees"),
    ({"lastmonth_activity": [1, None], "lastyear_activity": [3, 4], "number_of_employees": [5, 6]},
     "row 2 has no value for 'lastmonth_activity': the model cannot predict it"),
    ({"lastmonth_activity": [1, 2], "lastyear_activity": [3, "lots"], "number_of_employees": [5, 6]},
     "a feature value is not a number: could not convert string to float: 'lots'"),
])
def test_model_predictions_refuse_rows_they_cannot_predict(deployed, rows, message):
    with pytest.raises(ValueError) as err:
        diagnostics.model_predictions(pd.DataFrame(rows), cfg=deployed)
    assert str(err.value) == message
