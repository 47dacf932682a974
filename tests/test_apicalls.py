"""apicalls.py against a real gunicorn server and against a stopped one."""
import json
import re

import pytest
from conftest import run_script
from helpers import free_port, gunicorn

import apicalls
import delivery
import deployment
import scoring


def sections(text):
    """apireturns.txt's header lines and {'METHOD /path': (status, body)}."""
    header, *parts = re.split(r"^== ", text, flags=re.M)
    out = {}
    for part in parts:
        title, status, body = part.split("\n", 2)
        out[title] = (int(status.removeprefix("status: ")), json.loads(body))
    return header.splitlines(), out


@pytest.fixture(scope="module")
def served(shared):
    with gunicorn(shared) as url:
        yield shared, url


def expected_bodies(cfg):
    model, manifest = deployment.load_deployed(cfg.prod_deployment_path)
    X, y = delivery.read_labelled(cfg.test_data_file)
    return model, {"model_version": 1, **scoring.score_model(model, X, y),
                   "cross_validation": manifest["audit"]["cross_validation"], "slices": manifest["audit"]["slices"]}


def check_returns(cfg, text, how):
    header, found = sections(text)
    assert header[0].startswith("# API returns, 20")
    assert header[1] == f"# via: {how}"
    assert list(found) == ["POST /prediction", "GET /scoring", "GET /summarystats", "GET /diagnostics"]
    model, score = expected_bodies(cfg)
    status, prediction = found["POST /prediction"]
    assert status == 200
    assert prediction["model_version"] == 1
    assert prediction["predictions"] == model.predict(delivery.read_labelled(cfg.test_data_file)[0]).tolist()
    assert found["GET /scoring"] == (200, score)
    assert found["GET /summarystats"][0] == 200
    assert found["GET /summarystats"][1]["summary"]["number_of_employees"]["count"] == 200
    assert found["GET /diagnostics"][0] == 200
    assert sorted(found["GET /diagnostics"][1]) == ["dependencies", "execution_time", "missing_data", "recorded_timings"]


def test_produce_returns_from_the_running_server(served):
    cfg, url = served
    path = apicalls.produce_returns(cfg, url=url)
    assert path == cfg.output_model_path / "apireturns.txt"
    check_returns(cfg, path.read_text(), f"the server at {url}")


def test_the_script_against_the_running_server(served):
    cfg, url = served
    (cfg.output_model_path / "apireturns.txt").unlink(missing_ok=True)
    done = run_script("apicalls.py", "--config", cfg.path, "--url", url)
    assert done.returncode == 0, done.stderr
    path = cfg.output_model_path / "apireturns.txt"
    assert done.stdout == (f"{path}: answers of POST /prediction, GET /scoring, GET /summarystats, "
                           f"GET /diagnostics from {url}\n")
    check_returns(cfg, path.read_text(), f"the server at {url}")


def test_produce_returns_falls_back_in_process_when_the_server_is_down(deployed):
    cfg = deployed
    url = f"http://127.0.0.1:{free_port()}"
    path = apicalls.produce_returns(cfg, url=url, timeout=2)
    reason = (f"POST /prediction: no answer from {url}: connection refused or unreachable "
              "(is the server running? `make serve`)")
    check_returns(cfg, path.read_text(), f"in-process (the server at {url} did not answer: {reason})")


def test_the_script_says_which_endpoint_failed_when_the_server_is_down(deployed):
    cfg = deployed
    url = f"http://127.0.0.1:{free_port()}"
    done = run_script("apicalls.py", "--config", cfg.path, "--url", url)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (f"error: POST /prediction: no answer from {url}: connection refused or unreachable "
                           "(is the server running? `make serve`)\n")
    assert not (cfg.output_model_path / "apireturns.txt").exists()


def test_the_script_says_which_endpoint_answered_an_error(served, tmp_path):
    cfg, url = served
    bad = tmp_path / "bad.csv"
    bad.write_text("lastmonth_activity,lastyear_activity\n1,2\n")
    other = json.loads(cfg.path.read_text())
    for key in ("input_folder_path", "output_folder_path", "output_model_path", "prod_deployment_path"):
        other[key] = str(cfg.base / other[key])
    other["test_data_path"] = str(bad)
    other["output_model_path"] = str(tmp_path / "out")
    (tmp_path / "config.json").write_text(json.dumps(other))
    done = run_script("apicalls.py", "--config", tmp_path / "config.json", "--url", url)
    assert done.returncode == 1
    assert done.stderr == "error: POST /prediction: 400 missing column 'number_of_employees'\n"
    # The answers the server gave are still written, with their statuses.
    _, found = sections((tmp_path / "out" / "apireturns.txt").read_text())
    assert found["POST /prediction"] == (400, {"error": "missing column 'number_of_employees'"})
    assert found["GET /scoring"][0] == 200


def test_the_script_refuses_a_bad_config(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{")
    done = run_script("apicalls.py", "--config", bad)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: config file {bad} is not valid JSON: ")
    assert done.stderr.count("\n") == 1
