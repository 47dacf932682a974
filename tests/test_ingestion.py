import gzip
import hashlib
import os
import time
from contextlib import closing

import pandas as pd
import pytest
from conftest import HEADER, run_script, write_delivery
from helpers import query, reading, records

import datagen
import history
import ingestion
from settings import load_config

GOOD = HEADER + "abcd,10,120,5,0\nefgh,0,3,2000,1\n"


def test_merges_files_and_removes_duplicate_rows(world):
    a = datagen.generate(30, seed=1)
    b = pd.concat([datagen.generate(20, seed=2), a.iloc[:7]], ignore_index=True)
    a.to_csv(world.input_folder_path / "a.csv", index=False)
    b.to_csv(world.input_folder_path / "b.csv", index=False)

    result = ingestion.ingest(world)

    assert [f["name"] for f in result.ingested] == ["a.csv", "b.csv"]
    assert [f["rows"] for f in result.ingested] == [30, 27]
    assert result.total_rows == 50
    final = pd.read_csv(world.finaldata)
    assert list(final.columns) == list(datagen.COLUMNS)
    assert len(final) == 50
    expected = pd.concat([a, b]).drop_duplicates().sort_values(list(datagen.COLUMNS)).reset_index(drop=True)
    got = final.sort_values(list(datagen.COLUMNS)).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert world.ingested_list.read_text() == "a.csv\nb.csv\n"


@pytest.mark.backends
def test_records_each_file_in_history(world):
    path = write_delivery(world, "a.csv", text=GOOD)
    ingestion.ingest(world)
    assert records(world, "SELECT name, sha256, rows, folder FROM ingested_files") == [
        {"name": "a.csv", "sha256": hashlib.sha256(GOOD.encode()).hexdigest(), "rows": 2, "folder": str(path.parent)}]
    with reading(world) as conn:
        summary = history.latest_summary(conn)
    assert summary["rows"] == 2
    assert summary["stats"]["number_of_employees"] == {
        "mean": 1002.5, "median": 1002.5, "std": 1995 / 2**0.5,
        "min": 5.0, "max": 2000.0, "count": 2}
    assert query(world, "SELECT count(*) FROM step_timings WHERE step = 'ingestion'") == [(1,)]


@pytest.mark.backends
def test_new_delivery_adds_to_what_was_ingested(world):
    write_delivery(world, "a.csv", rows=10, seed=1)
    ingestion.ingest(world)
    write_delivery(world, "b.csv", rows=5, seed=2)
    result = ingestion.ingest(world)
    assert [f["name"] for f in result.ingested] == ["b.csv"]
    assert result.skipped == ["a.csv"]
    assert result.total_rows == 15
    assert len(pd.read_csv(world.finaldata)) == 15
    assert world.ingested_list.read_text() == "a.csv\nb.csv\n"


@pytest.mark.backends
def test_same_content_under_another_name_is_not_ingested_twice(world):
    write_delivery(world, "a.csv", text=GOOD)
    ingestion.ingest(world)
    write_delivery(world, "copy of a.csv", text=GOOD)
    result = ingestion.ingest(world)
    assert result.ingested == []
    assert result.skipped == ["a.csv", "copy of a.csv"]
    assert world.ingested_list.read_text() == "a.csv\n"


@pytest.mark.backends
def test_changed_file_under_old_name_is_a_new_delivery(world):
    path = write_delivery(world, "a.csv", text=GOOD)
    ingestion.ingest(world)
    path.write_text(GOOD + "ijkl,7,7,7,0\n")
    os.utime(path, (time.time() - 10, time.time() - 10))  # a distinct mtime
    result = ingestion.ingest(world)
    assert [(f["name"], f["rows"]) for f in result.ingested] == [("a.csv", 3)]
    assert len(pd.read_csv(world.finaldata)) == 3


@pytest.mark.backends
def test_rows_with_missing_values_stay_in_finaldata(world):
    write_delivery(world, "a.csv", text=HEADER + "abcd,10,,5,0\nefgh,NA,3,2000,1\n,1,2,3,\nijkl,1,2,3,1\n")
    result = ingestion.ingest(world)
    assert result.total_rows == 4
    with reading(world) as conn:
        missing = history.latest_summary(conn)["missing"]
    assert missing == {
        "corporation": 25.0, "lastmonth_activity": 25.0, "lastyear_activity": 25.0,
        "number_of_employees": 0.0, "exited": 25.0}
    assert world.finaldata.read_text().splitlines()[1:] == [
        "abcd,10,,5,0", "efgh,,3,2000,1", ",1,2,3,", "ijkl,1,2,3,1"]


BAD_FILES = [
    ("empty.csv", b"", "empty file"),
    ("header.csv", HEADER.encode(), "header only, no rows"),
    ("missing.csv", b"corporation,lastmonth_activity,lastyear_activity,exited\nabcd,1,2,0\n",
     "missing column 'number_of_employees'"),
    ("extra.csv", HEADER.rstrip().encode() + b",region\nabcd,1,2,3,0,north\n", "unexpected column 'region'"),
    ("dupcol.csv", HEADER.rstrip().encode() + b",exited\nabcd,1,2,3,0,0\n", "duplicated column 'exited'"),
    ("text.csv", (HEADER + "abcd,1,2,3,0\nefgh,lots,2,3,0\n").encode(),
     "column 'lastmonth_activity', row 2 (line 3): value 'lots' is not a number"),
    ("negative.csv", (HEADER + "abcd,1,-2,3,0\n").encode(),
     "column 'lastyear_activity', row 1 (line 2): value '-2' is negative"),
    ("inf.csv", (HEADER + "abcd,1,2,inf,0\n").encode(),
     "column 'number_of_employees', row 1 (line 2): value 'inf' is not a finite number"),
    ("fraction.csv", (HEADER + "abcd,1.5,2,3,0\n").encode(),
     "column 'lastmonth_activity', row 1 (line 2): value '1.5' is not a whole number"),
    ("huge.csv", (HEADER + "abcd,1,2,1e30,0\n").encode(),
     "column 'number_of_employees', row 1 (line 2): value '1e30' is out of range (at most 9007199254740991)"),
    ("target.csv", (HEADER + "abcd,1,2,3,2\n").encode(),
     "column 'exited', row 1 (line 2): value '2' is not 0 or 1"),
    ("latin1.csv", (HEADER + "caf\xe9,1,2,3,0\n").encode("latin-1"), "not UTF-8 text: undecodable byte at offset 79"),
    ("gzipped.csv", gzip.compress((HEADER + "abcd,1,2,3,0\n").encode(), mtime=0),
     "gzip-compressed data, not a plain CSV text file"),
    ("junk.csv", bytes(range(256)) * 4, "binary content (NUL bytes), not a CSV text file"),
    ("semicolons.csv", HEADER.replace(",", ";").encode() + b"abcd;1;2;3;0\n",
     "missing column 'corporation' (the separator must be a comma)"),
]


@pytest.mark.parametrize(("name", "data", "reason"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_quarantined_with_reason_and_good_files_go_through(world, name, data, reason):
    write_delivery(world, name, text=data)
    write_delivery(world, "good.csv", text=GOOD)

    result = ingestion.ingest(world)

    assert [f["name"] for f in result.ingested] == ["good.csv"]
    assert [(f["name"], f["reason"]) for f in result.quarantined] == [(name, reason)]
    assert not (world.input_folder_path / name).exists()
    moved = list(world.quarantine_folder_path.iterdir())
    data_file = [p for p in moved if not p.name.endswith(".reason.txt")]
    assert len(data_file) == 1 and data_file[0].read_bytes() == data  # moved, never altered or deleted
    reason_file = data_file[0].with_name(data_file[0].name + ".reason.txt")
    assert reason_file.read_text() == f"{name}: {reason}\n"
    assert query(world, "SELECT name, reason FROM quarantined_files") == [(name, reason)]
    assert world.finaldata.read_text() == GOOD


@pytest.mark.parametrize(("name", "data", "rows"), [
    ("bom.csv", b"\xef\xbb\xbf" + GOOD.encode(), ["abcd,10,120,5,0", "efgh,0,3,2000,1"]),
    ("crlf.csv", GOOD.replace("\n", "\r\n").encode(), ["abcd,10,120,5,0", "efgh,0,3,2000,1"]),
    ("reordered.csv", b"exited,corporation,number_of_employees,lastyear_activity,lastmonth_activity\n1,zzzz,4,3,2\n",
     ["zzzz,2,3,4,1"]),
    ("caf\u00e9 deliv\u00e9ry.csv", GOOD.encode(), ["abcd,10,120,5,0", "efgh,0,3,2000,1"]),
])
def test_tolerated_variants_are_ingested(world, name, data, rows):
    write_delivery(world, name, text=data)
    result = ingestion.ingest(world)
    assert [f["name"] for f in result.ingested] == [name]
    assert world.finaldata.read_text().splitlines() == [HEADER.strip()] + rows


def test_files_still_being_written_are_left_alone(tmp_path, world):
    from conftest import make_config

    cfg = load_config(make_config(tmp_path, ingest_settle_seconds=60))
    write_delivery(cfg, "fresh.csv", text=GOOD)
    old = write_delivery(cfg, "old.csv", text=GOOD + "ijkl,1,1,1,1\n")
    os.utime(old, (time.time() - 120, time.time() - 120))
    write_delivery(cfg, ".hidden.csv", text=GOOD)
    write_delivery(cfg, "partial.csv.tmp", text=GOOD)
    write_delivery(cfg, "notes.txt", text="hello")

    result = ingestion.ingest(cfg)

    assert [f["name"] for f in result.ingested] == ["old.csv"]
    assert sorted(p.name for p in cfg.input_folder_path.iterdir()) == [
        ".hidden.csv", "fresh.csv", "notes.txt", "old.csv", "partial.csv.tmp"]


@pytest.mark.backends
def test_new_files_uses_content_hash(world):
    write_delivery(world, "a.csv", text=GOOD)
    with closing(history.connect(world.history)) as conn:
        assert [c.path.name for c in ingestion.new_files(conn, world.input_folder_path)] == ["a.csv"]
        ingestion.ingest(world, conn=conn)
        assert ingestion.new_files(conn, world.input_folder_path) == []
        write_delivery(world, "b.csv", text=GOOD)
        assert ingestion.new_files(conn, world.input_folder_path) == []


@pytest.mark.backends
def test_script_reports_what_it_did(world):
    write_delivery(world, "a.csv", text=GOOD)
    write_delivery(world, "b.csv", text=b"")
    proc = run_script("ingestion.py", "--config", world.path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "ingested    a.csv (2 rows)",
        "quarantined b.csv: empty file",
        f"{world.finaldata}: 2 distinct rows",
    ]
    assert query(world, "SELECT name, rows FROM ingested_files") == [("a.csv", 2)]
    assert query(world, "SELECT name, reason FROM quarantined_files") == [("b.csv", "empty file")]


def test_script_with_a_missing_folder_or_nothing_to_ingest(world):
    proc = run_script("ingestion.py", "--config", world.path, "--input-folder", world.base / "nowhere")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"error: input folder {world.base / 'nowhere'} does not exist (given by --input-folder)\n"
    world.input_folder_path.rmdir()
    proc = run_script("ingestion.py", "--config", world.path)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (f"error: input folder {world.input_folder_path} does not exist "
                           f"(config key input_folder_path in {world.path})\n")
    world.input_folder_path.mkdir()
    proc = run_script("ingestion.py", "--config", world.path)
    assert (proc.returncode, proc.stdout) == (0, f"nothing ingested yet: no {world.finaldata}\n")
