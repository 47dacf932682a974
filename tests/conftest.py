"""A throwaway world per test: its builders (data folders, a config, a deployed model) and its fixtures."""
import functools
import json
import logging
import os
import sys
from pathlib import Path

import pytest

import datagen
import deployment
import ingestion
import scoring
import training
from settings import load_config

REPO = Path(__file__).resolve().parent.parent
CLOSED_INDEX = "http://127.0.0.1:9/simple"  # nothing listens on port 9: the index is unreachable
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


def new_world(root, **overrides):
    """`root` with sourcedata/ (empty), testdata/testdata.csv (40 seeded rows) and a config (make_config's,
    changed by `overrides`); returns the Config."""
    (root / "sourcedata").mkdir(parents=True)
    (root / "testdata").mkdir()
    datagen.generate(40, seed=301).to_csv(root / "testdata" / "testdata.csv", index=False)
    return load_config(make_config(root, **overrides))


def build_world(root, rows=200, seed=1, **overrides):
    """A world under `root` with one ingested delivery, a trained, scored and deployed model (the
    package index unreachable)."""
    cfg = new_world(root, package_index_url=CLOSED_INDEX, **overrides)
    write_delivery(cfg, "a.csv", rows=rows, seed=seed)
    ingestion.ingest(cfg)
    training.run(cfg)
    scoring.run(cfg)
    deployment.deploy_from_config(cfg)
    return cfg


def retrain_and_deploy(cfg, seed, rows=150):
    write_delivery(cfg, f"more{seed}.csv", rows=rows, seed=seed, drift="concept", strength=0.8)
    ingestion.ingest(cfg)
    training.run(cfg)
    scoring.run(cfg)
    return deployment.deploy_from_config(cfg)


# --- the history's backends: SQLite (every test), PostgreSQL (the tests marked `backends`) ---------

BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc):
    """A test marked `backends` whose world has a history runs once per backend: [sqlite], [postgresql]."""
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("backends"):
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (tests/pgserver.py), started at its first use."""
    from pgserver import PostgresServer

    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture
def backend(request):
    """The history's backend of this test's world: "sqlite" unless the test is marked `backends` (or
    DRAS_TEST_BACKEND=postgresql puts every make_world's history there: a sweep for dialect slips)."""
    return getattr(request, "param", os.environ.get("DRAS_TEST_BACKEND", "sqlite"))


@pytest.fixture
def history_overrides(backend, request):
    """The config keys that put a world's history in its backend: none for SQLite, a fresh database's
    history_url on the session's server for PostgreSQL."""
    if backend == "sqlite":
        return {}
    return {"history_url": request.getfixturevalue("postgres").new_database()}


# --- the world fixtures: an empty world, a deployed one, and one deployed world per module ---------

@pytest.fixture
def make_world(tmp_path, history_overrides):
    """make_world(**overrides): new_world under tmp_path, its config changed by `overrides`."""
    return functools.partial(new_world, tmp_path, **history_overrides)


@pytest.fixture
def world(make_world):
    """tmp_path with sourcedata/ (empty), testdata/testdata.csv (40 seeded rows) and a config; returns the Config."""
    return make_world()


@pytest.fixture
def make_deployed(tmp_path, history_overrides):
    """make_deployed(rows=200, seed=1, **overrides): build_world under tmp_path."""
    return functools.partial(build_world, tmp_path, **history_overrides)


@pytest.fixture
def deployed(make_deployed):
    """A world under tmp_path with a trained, scored and deployed model."""
    return make_deployed()


@pytest.fixture(scope="module")
def shared_overrides():
    """The config overrides of the module's `shared` world; a test module overrides this fixture to change them."""
    return {}


@pytest.fixture(scope="module")
def shared(tmp_path_factory, shared_overrides):
    """One deployed world for the read-only tests of a module."""
    return build_world(tmp_path_factory.mktemp("shared"), **shared_overrides)
