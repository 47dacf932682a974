"""A throwaway world per test: data folders, output folders and a config pointing at them."""
import json
import logging
import sys
from pathlib import Path

import pytest

import datagen
from settings import load_config

REPO = Path(__file__).resolve().parent.parent
HEADER = "corporation,lastmonth_activity,lastyear_activity,number_of_employees,exited\n"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item):
    """Leave the root logger as the test found it. An entry point run in-process (main()) puts a handler
    on the test's stderr there, which pytest closes (at the test's end under capsys, at the session's
    otherwise): left in place, every later record printed a `--- Logging error ---` traceback."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return (yield)
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


@pytest.fixture(scope="session", autouse=True)
def monitors_stopped_before_the_session_ends():
    """Apps made in-process start monitoring threads that would flush, and may log, at exit, after
    pytest has closed its streams: close them (their last flush) while pytest still captures what they say."""
    yield
    import gc

    import monitoring

    for obj in gc.get_objects():
        if isinstance(obj, monitoring.Monitor):
            obj.close()


def make_config(root: Path, **overrides) -> Path:
    config = {
        "input_folder_path": "sourcedata",
        "output_folder_path": "ingesteddata",
        "test_data_path": "testdata",
        "output_model_path": "models",
        "prod_deployment_path": "production_deployment",
        "ingest_settle_seconds": 0,
        "model": {"C": 1.0, "max_iter": 1000, "random_state": 0},
    }
    config.update(overrides)
    path = root / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


@pytest.fixture
def world(tmp_path):
    """tmp_path with sourcedata/ (empty), testdata/testdata.csv (40 seeded rows) and a config; returns the Config."""
    (tmp_path / "sourcedata").mkdir()
    (tmp_path / "testdata").mkdir()
    datagen.generate(40, seed=301).to_csv(tmp_path / "testdata" / "testdata.csv", index=False)
    return load_config(make_config(tmp_path))


def write_delivery(cfg, name, rows=None, seed=0, text=None, drift="none", strength=0.0):
    """Put a delivery file in the input folder: `text` as given, or `rows` seeded rows."""
    path = cfg.input_folder_path / name
    if text is not None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    else:
        datagen.generate(rows, seed=seed, drift=drift, strength=strength).to_csv(path, index=False)
    return path


def run_script(script, *args, cwd=None, timeout=120):
    """Run one of the repo's scripts with this interpreter; return the CompletedProcess."""
    import subprocess

    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
