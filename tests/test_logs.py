"""The logs stay bounded: rotation by size (settings.rotate_logs), and gunicorn's access log."""
import gzip
import subprocess
import sys

import pytest
import requests

import settings
from conftest import REPO
from helpers import gunicorn


def test_a_log_at_its_size_is_copied_to_a_gzip_backup_and_emptied_in_place(tmp_path):
    log = tmp_path / "cron.log"
    log.write_text("a" * 100 + "\n")
    held = open(log, "a")  # as cron's `>>` holds it while the cycle runs
    assert settings.rotate_logs(tmp_path, max_bytes=100, backups=2) == ["cron.log"]
    held.write("after\n")
    held.close()
    assert log.read_text() == "after\n"  # the writer goes on in the same file, from its start
    assert gzip.decompress((tmp_path / "cron.log.1.gz").read_bytes()) == b"a" * 100 + b"\n"
    for text in ("b" * 200 + "\n", "c" * 200 + "\n"):
        log.write_text(text)
        settings.rotate_logs(tmp_path, max_bytes=100, backups=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cron.log", "cron.log.1.gz", "cron.log.2.gz"]
    assert gzip.decompress((tmp_path / "cron.log.1.gz").read_bytes()) == b"c" * 200 + b"\n"
    assert gzip.decompress((tmp_path / "cron.log.2.gz").read_bytes()) == b"b" * 200 + b"\n"


def test_a_small_log_and_a_missing_one_are_left_alone(tmp_path):
    (tmp_path / "cycles.jsonl").write_text("{}\n")
    assert settings.rotate_logs(tmp_path, max_bytes=100, backups=2) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cycles.jsonl"]


def test_no_backups_only_empties(tmp_path):
    (tmp_path / "access.log").write_text("x" * 200)
    assert settings.rotate_logs(tmp_path, max_bytes=100, backups=0) == ["access.log"]
    assert [(p.name, p.stat().st_size) for p in tmp_path.iterdir()] == [("access.log", 0)]


def test_many_no_op_cycles_as_cron_runs_them_keep_the_log_folder_under_its_bound(make_world):
    cfg = make_world(log_max_bytes=1024, log_backups=2)
    logs = cfg.log_folder_path
    line = (f"mkdir -p {logs} && {sys.executable} {REPO / 'fullprocess.py'} --config {cfg.path}"
            f" >> {logs / 'cron.log'} 2>&1")
    for _ in range(16):  # about 200 bytes of cron.log and 330 of cycles.jsonl a cycle
        subprocess.run(["sh", "-c", line], check=True, timeout=60)
    names = sorted(p.name for p in logs.iterdir())
    assert names == ["cron.log", "cron.log.1.gz", "cron.log.2.gz", "cycles.jsonl", "cycles.jsonl.1.gz",
                     "cycles.jsonl.2.gz"]
    # each live log stays below the size plus one cycle's lines; each backup holds at most one size's worth
    assert (logs / "cron.log").stat().st_size < 1024 + 1024
    assert (logs / "cycles.jsonl").stat().st_size < 1024 + 1024
    for name in names[1:3] + names[4:]:
        assert len(gzip.decompress((logs / name).read_bytes())) < 1024 + 1024
    assert "cycle finished: no data yet" in (logs / "cron.log").read_text().splitlines()[-1]


@pytest.mark.parametrize(("key", "value"), [("log_max_bytes", 10), ("log_backups", -1)])
def test_log_limits_are_checked(make_world, key, value):
    with pytest.raises(settings.ConfigError, match="config keys 'log_max_bytes' and 'log_backups' must be at least"):
        make_world(**{key: value})


def test_gunicorn_writes_an_access_log_in_the_log_folder(make_deployed):
    cfg = make_deployed()
    with gunicorn(cfg, workers=1) as url:
        assert requests.get(url + "/health", timeout=10).status_code == 200
    lines = (cfg.log_folder_path / "access.log").read_text().splitlines()
    assert len(lines) == 2  # the helper's wait for the server, and ours
    assert all(line.startswith("127.0.0.1 - - [") and '"GET /health HTTP/1.1" 200' in line for line in lines)
