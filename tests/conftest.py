"""A throwaway world per test: data folders, output folders and a config pointing at them; the builders and fixtures of worlds."""
import json
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


def build_world(root, rows=200, seed=1, **overrides):
    """A world under `root` with one ingested delivery, a trained, scored and deployed model."""
    (root / "sourcedata").mkdir(parents=True)
    (root / "testdata").mkdir()
    datagen.generate(40, seed=301).to_csv(root / "testdata" / "testdata.csv", index=False)
    cfg = load_config(make_config(root, package_index_url=CLOSED_INDEX, **overrides))
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
