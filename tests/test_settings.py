import json
import os
import re
import socket

import pytest
from conftest import REPO, make_config, run_script

from settings import DEFAULT_SLICES, MODEL_SCHEMA, REQUIRED, SCHEMA, ConfigError, load_config


def test_repo_config_loads_with_paths_beside_it():
    cfg = load_config(REPO / "config.json")
    assert cfg.input_folder_path == REPO / "sourcedata"
    assert cfg.prod_deployment_path == REPO / "production_deployment"
    assert cfg.test_data_file == REPO / "testdata" / "testdata.csv"
    assert cfg.drift_test == "sequential"
    assert cfg.promotion_gate is True


def test_defaults_are_the_sequential_test_and_the_gate(world):
    assert (world.drift_test, world.promotion_gate) == ("sequential", True)


def test_the_course_setting_is_one_setting_away(make_world):
    cfg = make_world(drift_test="raw", promotion_gate=False)
    assert (cfg.drift_test, cfg.promotion_gate) == ("raw", False)


def test_default_config_is_the_one_beside_the_scripts():
    assert load_config().path == REPO / "config.json"


def test_relative_paths_resolve_against_the_config_not_the_cwd(tmp_path, monkeypatch):
    path = make_config(tmp_path, output_folder_path="../elsewhere/out")
    monkeypatch.chdir("/")
    cfg = load_config(path)
    assert cfg.output_folder_path == tmp_path.parent / "elsewhere" / "out"
    assert cfg.history_db == tmp_path.parent / "elsewhere" / "out" / "history.sqlite"


HOST_NAME_RULE = ("config key 'host_name' must be 1 to 63 printable characters, without leading or trailing spaces"
                  " (or absent: the machine's host name)")


@pytest.mark.parametrize(("change", "message"), [
    ({"input_folder_path": None}, "config key 'input_folder_path' must be a string, not null"),
    ({"keep_versions": "5"}, "config key 'keep_versions' must be a whole number, not \"5\""),
    ({"keep_versions": True}, "config key 'keep_versions' must be a whole number, not true"),
    ({"keep_versions": 1}, "config key 'keep_versions' must be at least 2, so a rollback has somewhere to go"),
    ({"drift_test": "vibes"}, "config key 'drift_test' must be one of sequential, raw, parametric, nonparametric, significance, not 'vibes'"),
    ({"model": {"C": 1, "depth": 3}}, "unknown model key 'depth' (known keys: C, class_weight, max_iter, random_state)"),
    ({"model": {"C": -1}}, "model key 'C' must be a positive number, not -1.0"),
    ({"model": {"max_iter": 0}}, "model key 'max_iter' must be at least 1, not 0"),
    ({"model": {"class_weight": "heavy"}}, "model key 'class_weight' must be null or \"balanced\", not 'heavy'"),
    ({"drift_bootstrap_rounds": 0}, "config key 'drift_bootstrap_rounds' must be at least 1, not 0"),
    ({"max_request_bytes": -5}, "config key 'max_request_bytes' must be at least 1, not -5"),
    ({"writer_wait_seconds": -1}, "config key 'writer_wait_seconds' must be 0 (refuse at once) or a positive number of seconds"),
    ({"writer_wait_seconds": "60"}, "config key 'writer_wait_seconds' must be a number, not \"60\""),
    ({"alarm_act_per_day": 0}, "config keys 'alarm_act_per_day' and 'alarm_watch_per_day' must satisfy"
                               " 0 < alarm_act_per_day <= alarm_watch_per_day"),
    ({"alarm_act_per_day": 2, "alarm_watch_per_day": 1}, "config keys 'alarm_act_per_day' and 'alarm_watch_per_day'"
                                                         " must satisfy 0 < alarm_act_per_day <= alarm_watch_per_day"),
    ({"alarm_pool_seconds": 30}, "config key 'alarm_pool_seconds' must be at least 'monitoring_window_seconds'"),
    ({"monitoring_min_rows": 0}, "config key 'monitoring_min_rows' must be at least 1"),
    ({"monitoring_estimate": "yes"}, "config key 'monitoring_estimate' must be true or false, not \"yes\""),
    # history_url: never echoed (a mistyped one may hold a password), never with a password
    ({"history_url": "postgresql://dras:hunter2@db.example:5432/dras"},
     "config key 'history_url' must not hold a password: set it in PGPASSWORD or ~/.pgpass (the URL is written to"
     " the logs and the cycle records)"),
    ({"history_url": "postgresql://dras@db.example/dras?sslmode=require&password=hunter2"},
     "config key 'history_url' must not hold a password: set it in PGPASSWORD or ~/.pgpass (the URL is written to"
     " the logs and the cycle records)"),
    ({"history_url": "mysql://dras:hunter2@db.example/dras"},
     "config key 'history_url' must be sqlite:///PATH or postgresql://USER@HOST:PORT/DBNAME (or absent: the SQLite"
     " file output_folder_path/history.sqlite)"),
    ({"history_url": "postgresql://dras@db.example:5432"},
     "config key 'history_url' must name a host and a database: postgresql://USER@HOST:PORT/DBNAME"),
    ({"history_url": "postgresql://dras@db.example:port/dras"}, "config key 'history_url' has a port that is not a number"),
    ({"history_url": "sqlite:///"}, "config key 'history_url' sqlite:/// needs a file's path after it"),
    ({"history_url": 5432}, "config key 'history_url' must be a string or null, not 5432"),
    ({"host_name": ""}, HOST_NAME_RULE),
    ({"host_name": " api-a"}, HOST_NAME_RULE),
    ({"host_name": "api\na"}, HOST_NAME_RULE),
    ({"host_name": "a" * 64}, HOST_NAME_RULE),
    ({"host_name": 7}, "config key 'host_name' must be a string or null, not 7"),
])
def test_bad_values_are_one_line_errors(tmp_path, change, message):
    with pytest.raises(ConfigError) as err:
        load_config(make_config(tmp_path, **change))
    assert str(err.value) == message


@pytest.mark.parametrize(("url", "history", "lock"), [
    (None, "ingesteddata/history.sqlite", "ingesteddata"),
    ("sqlite:///shared/h.sqlite", "shared/h.sqlite", "ingesteddata"),  # relative to the config, as SQLAlchemy
    ("sqlite:////srv/dras/h.sqlite", "/srv/dras/h.sqlite", "ingesteddata"),
    ("postgresql://dras@db.example:5432/dras", "postgresql://dras@db.example:5432/dras",
     "postgresql://dras@db.example:5432/dras"),
    ("postgres://dras@/dras?host=/run/postgresql", "postgres://dras@/dras?host=/run/postgresql",
     "postgres://dras@/dras?host=/run/postgresql"),
])
def test_history_url_says_where_the_history_and_the_writer_lock_live(tmp_path, url, history, lock):
    cfg = load_config(make_config(tmp_path, **({"history_url": url} if url else {})))
    anchored = (lambda v: v if v.startswith("postgres") else tmp_path / v)
    assert (cfg.history, cfg.writer_lock, cfg.postgres) == (anchored(history), anchored(lock), url is not None
                                                           and url.startswith("postgres"))
    if not cfg.postgres:
        assert cfg.history == cfg.history_db


def test_host_name_names_this_host_in_the_history(tmp_path):
    assert load_config(make_config(tmp_path)).host == socket.gethostname()
    assert load_config(make_config(tmp_path, host_name="api-b.example")).host == "api-b.example"


def test_missing_and_unknown_keys(tmp_path):
    path = make_config(tmp_path)
    data = json.loads(path.read_text())
    del data["test_data_path"]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="^missing config key 'test_data_path'$"):
        load_config(path)
    data["test_data_path"] = "testdata"
    data["output_fodler_path"] = "x"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="^unknown config key 'output_fodler_path'"):
        load_config(path)


@pytest.mark.parametrize("script", ["ingestion.py", "training.py", "scoring.py", "deployment.py", "fullprocess.py",
                                    "reporting.py", "diagnostics.py", "apicalls.py"])
def test_scripts_say_one_line_not_a_traceback(tmp_path, script):
    (tmp_path / "config.json").write_text("{not json")
    proc = run_script(script, "--config", tmp_path / "config.json")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: config file {tmp_path / 'config.json'} is not valid JSON: ")
    assert len(proc.stderr.splitlines()) == 1


def readme_config_table(text) -> dict:
    """The rows of the README's config table: {key: (default column, meaning column)}."""
    section = text.split("\n## Configuration: `config.json`\n", 1)[1].split("\n## ", 1)[0]
    return {m[1]: (m[2], m[3]) for m in re.finditer(r"^\| `(\w+)` \| ([^|]+?) \| (.*) \|$", section, re.M)}


def documented(text):
    """A default as the README writes it: `required`, `none`, or a backticked JSON value or word."""
    if text in ("required", "none"):
        return {"required": REQUIRED, "none": None}[text]
    word = text.strip("`")
    try:
        return json.loads(word)
    except json.JSONDecodeError:
        return word


def test_readme_table_reader_reads_the_config_section_only():
    text = ("Intro\n| `drift_test` | `raw` | outside the section |\n\n## Configuration: `config.json`\n\n| key | default | meaning |\n|---|---|---|\n"
            "| `keep_versions` | `4` | versions kept |\n| `api_url` | `http://x` | where |\n\n## Development\n"
            "| `not_a_key` | `1` | outside the section |\n")
    table = readme_config_table(text)
    assert table == {"keep_versions": ("`4`", "versions kept"), "api_url": ("`http://x`", "where")}
    assert {key: documented(d) for key, (d, _) in table.items()} == {"keep_versions": 4, "api_url": "http://x"}


def test_readme_config_table_lists_every_key_with_its_real_default():
    table = readme_config_table((REPO / "README.md").read_text(encoding="utf-8"))
    assert {"missing from the README": sorted(set(SCHEMA) - set(table)),
            "not in settings.SCHEMA": sorted(set(table) - set(SCHEMA))} == {
        "missing from the README": [], "not in settings.SCHEMA": []}
    real = {key: DEFAULT_SLICES if key == "slices" else default for key, (_, default) in SCHEMA.items()}
    assert {key: documented(d) for key, (d, _) in table.items()} == real
    # The model's own keys are named in the `model` row's meaning, each with its default.
    assert [key for key, (_, default) in MODEL_SCHEMA.items()
            if f"`{key}` ({json.dumps(default)})" not in table["model"][1]] == []


def test_gunicorn_with_a_bad_config_says_one_line_and_exits_2(tmp_path):
    """Found by the README pass: `make serve` with a bad config printed the app factory's 41-line
    traceback; gunicorn.conf.py checks the config first."""
    import subprocess
    import sys

    bad = tmp_path / "config.json"
    bad.write_text('{"input_folder_path": 5}')
    proc = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py")], cwd=tmp_path,
                          env={**os.environ, "DRAS_CONFIG": str(bad), "PORT": "1"}, capture_output=True, text=True,
                          timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        2, "", "error: config key 'input_folder_path' must be a string, not 5\n")
