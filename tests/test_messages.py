"""Every message a person reads, in words: no `None`, no exception class names, exit 2 for a user's
mistake, a duplicate named with the file it duplicates, a settling file with the time it waits until."""
import ast
import json
import os
import re
import shutil
import time

import pytest
import requests

import alerts
import apicalls
import cycle
import deployment
import ingestion
import reproduce
import words
from conftest import REPO, run_script, write_delivery
from cycle import CycleRecord

SOURCES = sorted(REPO.glob("*.py")) + sorted((REPO / "scripts").glob("*.py")) + sorted((REPO / "bench").glob("*.py"))
TOOK = re.compile(r"^took \d+\.\d{3}s$")


def leaks(path) -> list:
    """Where `path` puts a caught exception's class name or repr into text: `type(exc).__name__`,
    `repr(exc)`, `{exc!r}`, for any name bound by an `except ... as` clause."""
    tree = ast.parse(path.read_text(), filename=str(path))
    caught = {h.name for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler) and h.name}

    def is_caught(node):
        return isinstance(node, ast.Name) and node.id in caught

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FormattedValue) and node.conversion == ord("r") and is_caught(node.value):
            found.append(f"{path.name}:{node.lineno} {{{node.value.id}!r}}")
        elif (isinstance(node, ast.Attribute) and node.attr == "__name__" and isinstance(node.value, ast.Call)
              and isinstance(node.value.func, ast.Name) and node.value.func.id == "type"
              and node.value.args and is_caught(node.value.args[0])):
            found.append(f"{path.name}:{node.lineno} type({node.value.args[0].id}).__name__")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "repr"
              and node.args and is_caught(node.args[0])):
            found.append(f"{path.name}:{node.lineno} repr({node.args[0].id})")
    return found


def test_no_message_names_an_exception_class_or_shows_its_repr():
    assert [leak for path in SOURCES for leak in leaks(path)] == []


def test_the_leak_finder_finds_each_kind(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("try:\n    pass\nexcept OSError as exc:\n"
                    "    print(f'{type(exc).__name__}: {exc!r}', repr(exc))\n    print(f'{exc}')\n")
    assert sorted(leaks(path)) == ["x.py:4 repr(exc)", "x.py:4 type(exc).__name__", "x.py:4 {exc!r}"]


@pytest.mark.parametrize(("exc", "text"), [
    (OSError(28, "No space left on device"), "no space left on device"),
    (FileNotFoundError(2, "No such file or directory", "/srv/t.csv"), "no such file or directory: /srv/t.csv"),
    (OSError("disk full while writing the report"), "disk full while writing the report"),
    (KeyError("files"), "the entry 'files' is missing"),
    (EOFError(), "the data end too early"),
    (MemoryError(), "out of memory"),
    (ValueError(), "an error that gave no reason"),
    (ValueError("row 3 has no value"), "row 3 has no value"),
])
def test_an_exception_in_words(exc, text):
    assert words.error_text(exc) == text


@pytest.mark.parametrize(("step", "unexpected", "text"), [
    ("score_drift", False, "the score drift step failed: the reason"),
    ("publish", True, "the publish step failed unexpectedly: the reason (the log has the details)"),
    (None, False, "the reason"),
    (None, True, "unexpectedly: the reason (the log has the details)"),
])
def test_a_cycle_failure_names_its_step_in_words(step, unexpected, text):
    assert cycle.failure_text(step, "the reason", unexpected) == text


def _record(**values):
    rec = CycleRecord.start("t", "c")
    for key, value in values.items():
        setattr(rec, key, value)
    return rec


WAITING = {"name": "b.csv", "until": "2026-12-02T04:21:27+00:00", "seconds": 60.0}
WAITING_TEXT = ("b.csv until 2026-12-02T04:21:27+00:00: modified less than 60s ago (ingest_settle_seconds), "
                "so it may still be being written")


@pytest.mark.parametrize(("values", "lines"), [
    ({"decision": cycle.COLD_START, "previous_version": None, "deployed_version": 1},
     ["decision: cold start: deployed", "deployed: version 1 (the first: nothing was deployed before)"]),
    ({"decision": cycle.FAILED, "previous_version": None, "deployed_version": None, "errors": ["input folder gone"]},
     ["decision: failed", "serving: nothing deployed yet", "error: input folder gone"]),
    ({"decision": cycle.NO_NEW_DATA, "previous_version": 3, "deployed_version": 3,
      "duplicates": [{"name": "a_copy.csv", "of": "a.csv"}], "waiting": [WAITING]},
     ["decision: no new data", "duplicate: a_copy.csv: a duplicate of a.csv, already ingested",
      f"waiting: {WAITING_TEXT}", "serving: version 3"]),
])
def test_the_cycle_summary_says_it_in_words(values, lines):
    assert cycle.describe(_record(**values)).splitlines() == lines + ["took 0.000s"]


def test_version_lines_say_when_no_f1_is_recorded():
    assert deployment.f1_text({"metrics": {"f1": 0.75}}) == "F1 0.75"
    assert deployment.f1_text({"metrics": {}}) == "no test F1 recorded"
    assert deployment.cycle_words({"cycle_id": 7}) == "cycle 7"
    assert deployment.cycle_words({}) == "a cycle"


def test_reproduce_names_an_unrecorded_library_in_words():
    manifest = {"training": {"data_sha256": None, "libraries": {"numpy": "2.0.0"}}, "metrics": {}}
    lines = reproduce.differences(manifest, None, None, "ab" * 32, {"numpy": "2.0.0", "scipy": "1.14.0"},
                                  {"f1": 0.5})
    assert lines == ["training set: rebuilt sha256 abababababab, recorded none",
                     "library scipy: not recorded in the manifest, 1.14.0 now",
                     "test F1: deployed none recorded, rebuilt 0.5"]


def test_request_failures_in_words():
    exc = requests.TooManyRedirects("Exceeded 30 redirects.")
    assert apicalls._reason(exc) == "the request failed: Exceeded 30 redirects."
    assert alerts._reason(exc) == "too many redirects"
    assert alerts._reason(requests.RequestException("http://secret@host/hook went wrong")) == "the request failed"


# --- the scripts, as a person runs them -----------------------------------------------------------

def _aged(path, seconds_ago):
    t = int(time.time()) - seconds_ago
    os.utime(path, (t, t))
    return t


def _settle(cfg, seconds):
    """Rewrite cfg's config.json with ingest_settle_seconds = `seconds`."""
    data = json.loads(cfg.path.read_text())
    data["ingest_settle_seconds"] = seconds
    cfg.path.write_text(json.dumps(data))


def test_ingestion_names_the_duplicated_file_and_says_until_when_it_waits(world):
    _settle(world, 3600)
    _aged(write_delivery(world, "a.csv", rows=20, seed=1), 7200)
    assert run_script("ingestion.py", "--config", world.path).returncode == 0
    shutil.copy(world.input_folder_path / "a.csv", world.input_folder_path / "a_copy.csv")
    _aged(world.input_folder_path / "a_copy.csv", 7200)
    t = _aged(write_delivery(world, "b.csv", rows=20, seed=2), 10)
    until = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t + 3600))
    proc = run_script("ingestion.py", "--config", world.path)
    assert (proc.returncode, proc.stdout.splitlines()) == (0, [
        "already in  a.csv",
        "duplicate   a_copy.csv: a duplicate of a.csv, already ingested",
        f"waiting     b.csv until {until}: modified less than 3600s ago (ingest_settle_seconds), "
        "so it may still be being written",
        f"{world.finaldata}: 20 distinct rows"])


def test_a_copy_in_the_same_delivery_names_the_file_it_duplicates(world):
    write_delivery(world, "a.csv", rows=20, seed=1)
    write_delivery(world, "z_copy.csv", rows=20, seed=1)
    result = ingestion.ingest(world)
    assert [f["name"] for f in result.ingested] == ["a.csv"]
    assert (result.skipped, result.duplicates) == (["z_copy.csv"], [{"name": "z_copy.csv", "of": "a.csv"}])


def test_the_cycle_says_a_duplicate_and_a_settling_file_are_not_new_data(deployed):
    _settle(deployed, 3600)
    shutil.copy(deployed.input_folder_path / "a.csv", deployed.input_folder_path / "a_copy.csv")
    _aged(deployed.input_folder_path / "a_copy.csv", 7200)
    _aged(deployed.input_folder_path / "a.csv", 7200)
    t = _aged(write_delivery(deployed, "b.csv", rows=20, seed=2), 10)
    until = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t + 3600))
    proc = run_script("fullprocess.py", "--config", deployed.path, "-v")
    lines = proc.stdout.splitlines()
    assert (proc.returncode, lines[:-1]) == (0, [
        "decision: no new data",
        "duplicate: a_copy.csv: a duplicate of a.csv, already ingested",
        f"waiting: b.csv until {until}: modified less than 3600s ago (ingest_settle_seconds), "
        "so it may still be being written",
        "serving: version 1"]), proc.stderr
    assert TOOK.match(lines[-1])
    assert (f"no new data in {deployed.input_folder_path}; a_copy.csv: a duplicate of a.csv, already ingested"
            in proc.stderr)
    rec = json.loads((deployed.log_folder_path / "cycles.jsonl").read_text().splitlines()[-1])
    assert (rec["duplicates"], rec["waiting"]) == ([{"name": "a_copy.csv", "of": "a.csv"}],
                                                   [{"name": "b.csv", "until": until, "seconds": 3600.0}])


def test_a_missing_input_folder_is_a_mistake_said_in_one_line(world):
    world.input_folder_path.rmdir()
    said = (f"input folder {world.input_folder_path} does not exist "
            f"(config key input_folder_path in {world.path})")
    proc = run_script("fullprocess.py", "--config", world.path)
    assert (proc.returncode, proc.stdout, len(proc.stderr.splitlines())) == (2, "", 1), proc.stderr
    assert proc.stderr.endswith(f" ERROR __main__: cycle failed: {said}\n")
    proc = run_script("fullprocess.py", "--config", world.path, "-v")
    assert proc.returncode == 2
    assert proc.stdout.splitlines()[:-1] == ["decision: failed", "serving: nothing deployed yet", f"error: {said}"]


def test_deploying_without_a_model_says_no_model_exists(world):
    proc = run_script("deployment.py", "--config", world.path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        2, "", f"error: no trained model to deploy: {world.model_file} does not exist; "
               "run training.py and scoring.py first\n")


def test_diagnostics_without_test_data_says_so_in_its_json(deployed):
    deployed.test_data_file.unlink()
    proc = run_script("diagnostics.py", "--config", deployed.path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["predictions_on_test_data"] == (
        f"unavailable: cannot read the test data: no such file or directory: {deployed.test_data_file}")


NOTHING_YET = [
    (("ingestion.py",), 0, "nothing ingested yet: no {finaldata}\n", ""),
    (("training.py",), 2, "", "error: {finaldata} does not exist: run ingestion.py first\n"),
    (("scoring.py",), 2, "", "error: {model} does not exist: run training.py first\n"),
    (("deployment.py", "--list"), 0, "no versions in {prod}\n", ""),
    (("deployment.py", "--rollback"), 2, "", "error: nothing is deployed in {prod}: nothing to roll back\n"),
    (("deployment.py", "--promote"), 2, "",
     "error: no kept challenger in {models}: a cycle saves one when it keeps the serving model\n"),
    (("reporting.py",), 2, "", "error: no report: no model is deployed in {prod}\n"),
    (("training.py", "--runs"), 0, "no training runs recorded: {history} does not exist\n", ""),
]


@pytest.mark.parametrize(("args", "code", "out", "err"), NOTHING_YET, ids=[" ".join(a) for a, *_ in NOTHING_YET])
def test_before_anything_exists_each_script_says_what_to_do_first(world, args, code, out, err):
    names = {"finaldata": world.finaldata, "model": world.model_file, "prod": world.prod_deployment_path,
             "models": world.output_model_path, "history": world.history_db}
    proc = run_script(*args, "--config", world.path)
    logged = [line for line in proc.stderr.splitlines(keepends=True) if " INFO " not in line]
    assert (proc.returncode, proc.stdout, "".join(logged)) == (code, out.format(**names), err.format(**names))
