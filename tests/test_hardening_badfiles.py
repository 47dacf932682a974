"""Bad files: one delivery holding every kind of strange file, through a real cycle process.

test_ingestion.py checks each rule on its own at the function level; here the whole corpus
arrives at once and goes through `fullprocess.main` in its own process: each file is ingested or
quarantined by README's "Ingestion rules" with its reason, nothing crashes, and the good files of
the same delivery go through.
"""
import gzip
import json

import pandas as pd
from conftest import HEADER, write_delivery
from helpers import query, run, stand_in

import cycle
import datagen
import delivery
import fullprocess
import ingestion

GOOD = "abcd,10,120,5,0\nefgh,0,3,2000,1\n"
BIG = "big delivery 50 MB.csv"


def big_bad_file():
    """Over 50 MB of good rows (a 1,000-row block repeated), and on the very last line an `exited` of 7;
    returns the bytes and that line's number."""
    block = datagen.generate(1000, seed=11).to_csv(index=False, header=False).encode()
    repeats = 50 * 1024 * 1024 // len(block) + 1
    return HEADER.encode() + block * repeats + b"zzzz,1,2,3,7\n", 1000 * repeats + 2


def value(col, line, v, what):
    return f"column {col!r}, row {line - 1} (line {line}): value {v!r} {what}"


OUT_OF_RANGE = "is out of range (at most 9007199254740991)"

# name, bytes, and either the quarantine reason or the number of rows ingested
CORPUS = [
    ("empty.csv", b"", "empty file"),
    ("blank lines.csv", b"  \r\n\n", "empty file"),
    ("header only.csv", HEADER.encode(), "header only, no rows"),
    ("bom crlf header only.csv", b"\xef\xbb\xbf" + HEADER.replace("\n", "\r\n").encode(), "header only, no rows"),
    ("missing column.csv", b"corporation,lastmonth_activity,lastyear_activity,exited\nabcd,1,2,0\n",
     "missing column 'number_of_employees'"),
    ("extra column.csv", HEADER.rstrip().encode() + b",region\nabcd,1,2,3,0,north\n", "unexpected column 'region'"),
    ("duplicated column.csv", HEADER.rstrip().encode() + b",exited\nabcd,1,2,3,0,0\n", "duplicated column 'exited'"),
    ("words.csv", (HEADER + "abcd,1,2,3,0\nefgh,lots,2,3,0\n").encode(),
     value("lastmonth_activity", 3, "lots", "is not a number")),
    ("negative.csv", (HEADER + "abcd,1,-2,3,0\n").encode(), value("lastyear_activity", 2, "-2", "is negative")),
    ("inf.csv", (HEADER + "abcd,1,2,inf,0\n").encode(), value("number_of_employees", 2, "inf", "is not a finite number")),
    ("minus inf.csv", (HEADER + "abcd,1,-inf,3,0\n").encode(),
     value("lastyear_activity", 2, "-inf", "is not a finite number")),
    ("huge.csv", (HEADER + "abcd,1,2,1e30,0\n").encode(), value("number_of_employees", 2, "1e30", OUT_OF_RANGE)),
    ("two to the 53.csv", (HEADER + f"abcd,1,2,{2**53},0\n").encode(),
     value("number_of_employees", 2, str(2**53), OUT_OF_RANGE)),
    ("twenty digits.csv", (HEADER + "abcd,1,2,99999999999999999999,0\n").encode(),
     value("number_of_employees", 2, "99999999999999999999", OUT_OF_RANGE)),
    ("fraction.csv", (HEADER + "abcd,1.5,2,3,0\n").encode(), value("lastmonth_activity", 2, "1.5", "is not a whole number")),
    ("hex.csv", (HEADER + "abcd,0x10,2,3,0\n").encode(), value("lastmonth_activity", 2, "0x10", "is not a number")),
    ("fullwidth digits.csv", (HEADER + "abcd,\uff11\uff12,2,3,0\n").encode(),
     value("lastmonth_activity", 2, "\uff11\uff12", "is not a number")),
    ("target.csv", (HEADER + "abcd,1,2,3,2\n").encode(), value("exited", 2, "2", "is not 0 or 1")),
    ("semicolons.csv", HEADER.replace(",", ";").encode() + b"abcd;1;2;3;0\n",
     "missing column 'corporation' (the separator must be a comma)"),
    ("tabs.csv", HEADER.replace(",", "\t").encode() + b"abcd\t1\t2\t3\t0\n", "missing column 'corporation'"),
    ("gzipped.csv", gzip.compress((HEADER + GOOD).encode(), mtime=0), "gzip-compressed data, not a plain CSV text file"),
    ("binary junk.csv", bytes(range(256)) * 4, "binary content (NUL bytes), not a CSV text file"),
    ("high bytes.csv", bytes(range(128, 256)) * 8, "not UTF-8 text: undecodable byte at offset 0"),
    ("latin-1.csv", (HEADER + "caf\xe9,1,2,3,0\n").encode("latin-1"), "not UTF-8 text: undecodable byte at offset 79"),
    ("late nul.csv", (HEADER + "abcd,1,2,3,0\n" * 6000).encode() + b"ab\x00d,1,2,3,0\n",
     "binary content (NUL bytes), not a CSV text file"),
    ("one field too many.csv", (HEADER + "abcd,1,2,3,0,1\nefgh,1,2\n").encode(),
     "malformed CSV: line 2 has 6 fields, the header has 5"),
    ("later field too many.csv", (HEADER + "abcd,1,2,3,0\nefgh,1,2,3,0,1\n").encode(),
     "malformed CSV: line 3 has 6 fields, the header has 5"),
    ("donn\u00e9es \u00e9t\u00e9 2026.csv", (HEADER + "abcd,1,2,x,0\n").encode(),
     value("number_of_employees", 2, "x", "is not a number")),
    (BIG, None, None),  # the bytes and the reason are made by the test: 50 MB are not made at import
    # ... and the good ones of the same delivery
    ("nan and missing.csv", (HEADER + "gaaa,NaN,2,3,0\ngbbb,1,nan,3,1\ngccc,1,2,3,\ngddd,1,2,3,0\n").encode(), 4),
    ("largest value.csv", (HEADER + f"geee,1,2,{2**53 - 1},0\n").encode(), 1),
    ("bom.csv", b"\xef\xbb\xbf" + (HEADER + GOOD).encode(), 2),
    ("crlf.csv", (HEADER + "gfff,7,8,9,1\ngggg,4,5,6,0\n").replace("\n", "\r\n").encode(), 2),
    ("quoted.csv", (HEADER + '"gh,hh",1,2,3,0\n"gi""ii",4,5,6,1\n"gj\njj",7,8,9,0\n').encode(), 3),
    ("spaces.csv", b" corporation , lastmonth_activity,lastyear_activity , number_of_employees,exited\ngkkk, 1, 2, 3, 0\n", 1),
    ("duplicate rows.csv", (HEADER + "glll,1,1,1,1\n" * 3).encode(), 3),
    ("client list (M\u00e4rz) \u00e9t\u00e9 \u5ba2\u6237.csv", (HEADER + "gmmm,5,60,7,0\n").encode(), 1),
    ("UPPER CASE.CSV", (HEADER + "gnnn,8,90,10,1\n").encode(), 1),
    ("exponent.csv", (HEADER + "gooo,1e3,2,3,0\n").encode(), 1),
    ("shifted.csv", datagen.generate(300, seed=2, drift="concept", strength=1.0).to_csv(index=False).encode(), 300),
]


def test_every_kind_of_bad_file_in_one_delivery_through_a_real_cycle(make_world):
    world = make_world(drift_test="raw", promotion_gate=False)  # the course's setting: drift redeploys
    write_delivery(world, "first.csv", rows=300, seed=1)
    assert fullprocess.run_cycle(world, publisher=stand_in).to_dict()["decision"] == cycle.COLD_START
    corpus = []
    for name, data, expected in CORPUS:
        if name == BIG:
            data, line = big_bad_file()
            assert len(data) > 50 * 1024 * 1024
            expected = value("exited", line, "7", "is not 0 or 1")
        write_delivery(world, name, text=data)
        corpus.append((name, data, expected))

    proc = run(world, timeout=300)

    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    rec = json.loads((world.log_folder_path / "cycles.jsonl").read_text().splitlines()[-1])
    assert rec["errors"] == []
    assert rec["decision"] == cycle.REDEPLOYED  # the shifted rows among the good files drifted
    bad = [(n, e) for n, _, e in corpus if isinstance(e, str)]
    good = [(n, e) for n, _, e in corpus if isinstance(e, int)]
    assert sorted((q["name"], q["reason"]) for q in rec["ingestion"]["quarantined"]) == sorted(bad)
    assert sorted((f["name"], f["rows"]) for f in rec["ingestion"]["ingested"]) == sorted(good)
    assert sorted(rec["pending_files"]) == sorted(n for n, _ in good)
    # each bad file moved, byte for byte, with its reason beside it; recorded once; the good ones stay
    left = sorted(p.name for p in world.input_folder_path.iterdir())
    assert left == sorted(["first.csv"] + [n for n, _ in good])
    moved = {p.name.split("-", 2)[2]: p for p in world.quarantine_folder_path.iterdir()
             if not p.name.endswith(".reason.txt")}
    assert sorted(moved) == sorted(n for n, _ in bad)
    for name, data, reason in corpus:
        if isinstance(reason, str):
            assert moved[name].read_bytes() == data, name
            assert moved[name].with_name(moved[name].name + ".reason.txt").read_text() == f"{name}: {reason}\n"
    assert sorted(query(world, "SELECT name, reason FROM quarantined_files")) == sorted(bad)
    assert [r[0] for r in query(world, "SELECT name FROM ingested_files ORDER BY id")] == \
        ["first.csv"] + sorted(n for n, _ in good)
    # finaldata: the distinct rows of the first delivery and of the good files, in arrival order
    frames = [delivery.parse_delivery((world.input_folder_path / n).read_bytes())
              for n in ["first.csv"] + sorted(n for n, _ in good)]
    expected = pd.concat(frames, ignore_index=True).drop_duplicates(ignore_index=True)
    assert ingestion.read_finaldata(world.finaldata).to_csv(index=False) == expected.to_csv(index=False)
    # and the next cycle finds nothing to do
    again = run(world)
    assert again.returncode == 0, again.stderr
    assert json.loads((world.log_folder_path / "cycles.jsonl").read_text().splitlines()[-1])["decision"] == \
        cycle.NO_NEW_DATA
