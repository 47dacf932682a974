"""A pytest session of its own, run by test_clean_output.py (its name keeps the suite from collecting
it), doing what the suite does that printed `--- Logging error ---` tracebacks:

- an entry point run in-process: its main() puts a root handler on the test's stderr, which pytest
  closes at the test's end (under capsys) or at the session's;
- an app left with traffic not yet flushed, drifted past psi_act: its Monitor flushes at exit and
  logs the drift, after pytest has closed its streams.
"""
import app as app_module
import ingestion
from conftest import build_world, write_delivery

SHIFTED = [{"lastmonth_activity": 10_000 + i, "lastyear_activity": 100_000 + i, "number_of_employees": 10**7}
           for i in range(60)]


def test_an_entry_point_run_in_process_under_capsys(world, capsys):
    write_delivery(world, "a.csv", rows=5, seed=1)
    assert ingestion.main(["--config", str(world.path)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "ingested    a.csv (5 rows)"


def test_a_later_test_logs_without_a_traceback(tmp_path, capsys):
    # No flush before the session ends (flush every hour): the one at exit finds the drift.
    cfg = build_world(tmp_path, monitoring_min_rows=50, monitoring_flush_seconds=3600)
    client = app_module.create_app(cfg).test_client()  # logs "serving model version 1"
    assert client.post("/prediction", json={"records": SHIFTED}).status_code == 200
    assert "--- Logging error ---" not in capsys.readouterr().err


def test_an_entry_point_run_in_process(world):
    write_delivery(world, "b.csv", rows=5, seed=2)
    assert ingestion.main(["--config", str(world.path)]) == 0
