"""Files and folders a cycle writes get what the umask gives, as any program's output does: an API
running as another user than the cron job can read them under the usual 022 (issue 14)."""
import os
import subprocess
import sys

import pytest

import datagen
from conftest import REPO, make_config, write_delivery
from settings import load_config


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)],
                         ids=["umask022", "umask077"])
def test_a_real_cycle_writes_what_the_umask_gives(tmp_path, umask, file_mode, dir_mode):
    (tmp_path / "sourcedata").mkdir()
    (tmp_path / "testdata").mkdir()
    datagen.generate(40, seed=301).to_csv(tmp_path / "testdata" / "testdata.csv", index=False)
    # Closed ports: the cycle calls its API returns in-process and finds no package index.
    cfg = load_config(make_config(tmp_path, api_url="http://127.0.0.1:9",
                                  package_index_url="http://127.0.0.1:9/simple"))
    write_delivery(cfg, "a.csv", rows=200, seed=1)
    result = subprocess.run([sys.executable, str(REPO / "fullprocess.py"), "--config", str(cfg.path)],
                            preexec_fn=lambda: os.umask(umask), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    modes = {}
    for folder in ("ingesteddata", "models", "production_deployment", "logs"):
        for path in [tmp_path / folder, *(tmp_path / folder).rglob("*")]:
            st = path.lstat()
            if not os.path.islink(path):
                modes[str(path.relative_to(tmp_path))] = (st.st_mode & 0o777, path.is_dir())
    expected = {name: (dir_mode if is_dir else file_mode, is_dir) for name, (_, is_dir) in modes.items()}
    assert modes == expected
    # The outputs that matter are there (a walk that found nothing would pass the line above).
    for name in ("ingesteddata/finaldata.csv", "ingesteddata/history.sqlite", "models/trainedmodel.pkl",
                 "logs/cycles.jsonl", "production_deployment/versions/v0001/trainedmodel.pkl",
                 "production_deployment/versions/v0001"):
        assert name in modes
