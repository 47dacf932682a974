"""Delivery files nobody here wrote: CSV dialect corner cases and arbitrary bytes, drawn by hypothesis.

Every file ends in exactly one of two states, whatever its bytes: ingested (its rows in
finaldata.csv, as its text says) or quarantined with a reason; the cycle goes on with the other
files and exits 0, and the next cycle has nothing to do. The API answers the same bytes as a CSV
body with a 200 or a 4xx JSON error, never a 5xx. Then the exact cases the issue named: a bare-CR
file, a quoted field over the csv module's limit, `1e-400`, `12.0000000000000001`, and a file
replaced between its hashing and its reading.
"""
import json

import pandas as pd
import pytest
from conftest import HEADER, build_world, write_delivery
from helpers import gunicorn, query, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app as app_module
import cycle
import delivery
import ingestion
from settings import COLUMNS

SEEDED = dict(deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                     HealthCheck.data_too_large])
LIMIT = 131072  # the csv module's field size limit


# ---------------------------------------------------------------- the grammar of dialect corner cases

# (text, the whole number it means, or None when it breaks the value rules)
GOOD_NUMBERS = [("0", 0), ("7", 7), ("+12", 12), ("12.", 12), ("12.000", 12), ("1e3", 1000), ("1.5e1", 15),
                ("1200e-2", 12), (" 42", 42), ("9007199254740991", 2**53 - 1)]
BAD_NUMBERS = ["1e-400", "12.0000000000000001", "1.5", "-3", "inf", "0x1A", "lots", "1e30", "\uff11",
               "9007199254740992", "1,5"]
# "cr\rend" (a bare CR inside a quoted value) breaks the rules: finaldata.csv would read it back as
# two rows (found by this test); the file is quarantined, with the reason naming the value.
NAMES = ["abcd", "zz", "Ümit", "a,b", 'say "hi"', "two\nlines", "crlf\r\nend", " spaced ", "", "cr\rend"]


@st.composite
def dialect_file(draw):
    """(bytes, the rows the file means or None when the file breaks a rule): a CSV file built from
    corner cases: CR, LF and CRLF line ends mixed, quoted and unquoted fields, embedded line ends,
    huge fields, byte-order marks, UTF-16 and Latin-1, trailing separators, NUL bytes, empty lines."""
    order = draw(st.permutations(list(COLUMNS)))
    ok = True
    rows = []
    lines = []

    def quote(text, always=False):
        if always or any(ch in text for ch in ',"\r\n') or text != text.strip():
            return '"' + text.replace('"', '""') + '"'
        return text

    lines.append(",".join(quote(c, draw(st.booleans()) and draw(st.booleans())) for c in order))
    for _ in range(draw(st.integers(1, 5))):
        name = draw(st.sampled_from(NAMES))
        if "\r" in name.replace("\r\n", ""):
            ok = False  # a CR that does not end a line, inside a quoted name
        if draw(st.integers(0, 30)) == 0:
            name = "h" * draw(st.sampled_from([LIMIT - 10, LIMIT + 1]))
        row = {"corporation": name or None}
        cells = {"corporation": quote(name, draw(st.booleans()))}
        for col in COLUMNS[1:]:
            if draw(st.integers(0, 9)) == 0:
                text = draw(st.sampled_from(BAD_NUMBERS))
                cells[col] = quote(text)
                ok = False
                continue
            text, number = draw(st.sampled_from(GOOD_NUMBERS))
            if col == "exited":
                text, number = draw(st.sampled_from([("0", 0), ("1", 1), ("1.0", 1), ("0e0", 0)]))
            if draw(st.integers(0, 12)) == 0:
                text, number = draw(st.sampled_from(["", "NA", "null"])), None
            row[col] = number
            cells[col] = quote(text, draw(st.integers(0, 5)) == 0)
        rows.append(row)
        line = ",".join(cells[c] for c in order)
        if draw(st.integers(0, 15)) == 0:
            line += ","  # a trailing separator: one field more than the header
            ok = False
        lines.append(line)
    if draw(st.integers(0, 8)) == 0:
        lines.insert(draw(st.integers(1, len(lines))), "")  # an empty line: pandas skips it
    ends = [draw(st.sampled_from(["\n", "\r\n", "\r"])) for _ in lines]
    text = "".join(line + end for line, end in zip(lines, ends))
    if not draw(st.booleans()):
        text = text[:-len(ends[-1])]  # no line end after the last line
    if draw(st.integers(0, 15)) == 0:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + "\x00" + text[at:]
        ok = False
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    data = text.encode(encoding, errors="replace")
    if encoding == "utf-16" or (encoding == "latin-1" and not text.isascii()):
        ok = False
    if any(row.get("corporation") and len(row["corporation"]) > LIMIT for row in rows) and '"' in text:
        ok = False  # quoted somewhere: the csv module refuses a field over its limit
    return data, (rows if ok else None)


def any_file():
    """A dialect file, or arbitrary bytes (alone, or after a good header)."""
    junk = st.binary(max_size=400)
    return st.one_of(
        dialect_file(),
        junk.map(lambda b: (b, None)),
        junk.map(lambda b: (HEADER.encode() + b, None)),
    )


def good_file(serial):
    """A good file whose rows no other example holds."""
    return (HEADER + f"g{serial:03d},1,{serial},3,0\ng{serial:03d},2,{serial},4,1\n").encode()


def expected_frame(rows):
    out = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in COLUMNS[1:]:
        out[col] = out[col].astype("Int64")
    return out


def check_outcome(cfg, name, data, meaning, quarantined, ingested):
    """One file in exactly one of two states: ingested as its text says, or quarantined with a reason."""
    path = cfg.input_folder_path / name
    if name in quarantined:
        reason = quarantined[name]
        assert reason and "\n" not in reason, name
        assert meaning is None, f"{name}: a good file was quarantined: {reason}"
        moved = [p for p in cfg.quarantine_folder_path.iterdir() if p.name.endswith("-" + name)]
        assert len(moved) == 1 and moved[0].read_bytes() == data
        assert moved[0].with_name(moved[0].name + ".reason.txt").read_text() == f"{name}: {reason}\n"
        assert not path.exists()
    else:
        assert name in ingested, f"{name}: neither ingested nor quarantined"
        assert path.read_bytes() == data
        df = delivery.parse_delivery(data)
        if meaning is not None:
            assert df.to_csv(index=False) == expected_frame(meaning).to_csv(index=False)
        assert row_set(df) <= row_set(ingestion.read_finaldata(cfg.finaldata))


def row_set(df):
    return set(map(tuple, df.astype(object).where(df.notna(), None).values.tolist()))


# ---------------------------------------------------------------- in process: many files through ingest()

@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory):
    from conftest import new_world

    return new_world(tmp_path_factory.mktemp("dialects"))


SERIAL = iter(range(10**6))


@settings(max_examples=300, **SEEDED)
@given(example=any_file())
def test_ingest_every_file_ingested_or_quarantined(fuzz_world, example):
    cfg = fuzz_world
    data, meaning = example
    n = next(SERIAL)
    name, good = f"x{n:04d}.csv", f"g{n:04d}.csv"
    write_delivery(cfg, name, text=data)
    write_delivery(cfg, good, text=good_file(n))
    result = ingestion.ingest(cfg)
    quarantined = {q["name"]: q["reason"] for q in result.quarantined}
    ingested = {f["name"] for f in result.ingested}
    if name in result.skipped:  # the same bytes as an earlier example: already ingested
        assert query(cfg, "SELECT 1 FROM ingested_files WHERE sha256 = ?",
                     (ingestion.atomicfiles.sha256_file(cfg.input_folder_path / name),)) == [(1,)]
        ingested.add(name)
    check_outcome(cfg, name, data, meaning, quarantined, ingested)
    assert good in ingested
    final = ingestion.read_finaldata(cfg.finaldata)
    assert (final["corporation"] == f"g{n:03d}").sum() == 2
    assert ingestion.ingest(cfg).ingested == []


# ---------------------------------------------------------------- real cycle processes

@pytest.mark.filterwarnings("ignore:Generating overly large repr")  # a failing example's repr can be large
@settings(max_examples=5, **SEEDED)
@given(files=st.lists(any_file(), min_size=5, max_size=5))
def test_cycle_process_goes_on_whatever_the_files(tmp_path_factory, files):
    """25 generated files, five at a time beside a good one, through real cycle processes."""
    cfg = build_world(tmp_path_factory.mktemp("cycle"), cv_folds=0)
    names = []
    for i, (data, _) in enumerate(files):
        names.append(f"fuzz {i}.csv")
        write_delivery(cfg, names[-1], text=data)
    write_delivery(cfg, "good.csv", text=good_file(999))

    proc = run(cfg, timeout=300)

    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    rec = json.loads((cfg.log_folder_path / "cycles.jsonl").read_text().splitlines()[-1])
    assert rec["errors"] == []
    quarantined = {q["name"]: q["reason"] for q in rec["ingestion"]["quarantined"]}
    ingested = {f["name"] for f in rec["ingestion"]["ingested"]} | set(rec["ingestion"]["skipped"])
    for name, (data, meaning) in zip(names, files):
        check_outcome(cfg, name, data, meaning, quarantined, ingested)
    assert "good.csv" in ingested
    final = ingestion.read_finaldata(cfg.finaldata)
    assert (final["corporation"] == "g999").sum() == 2
    again = run(cfg)
    assert again.returncode == 0, again.stderr
    assert json.loads((cfg.log_folder_path / "cycles.jsonl").read_text().splitlines()[-1])["decision"] == \
        cycle.NO_NEW_DATA


# ---------------------------------------------------------------- the API: the same bytes as CSV bodies

@pytest.fixture(scope="module")
def api_world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("api"), cv_folds=0)


@pytest.fixture(scope="module")
def client(api_world):
    return app_module.create_app(api_world).test_client()


def check_answer(status, body, data):
    assert status == 200 or 400 <= status < 500, (status, body)
    doc = json.loads(body)
    if status == 200:
        assert len(doc["predictions"]) == len(delivery.feature_matrix(data))
    else:
        assert isinstance(doc["error"], str) and doc["error"]


@settings(max_examples=200, **SEEDED)
@given(example=any_file())
def test_prediction_csv_body_never_5xx(client, example):
    data, _ = example
    resp = client.post("/prediction", data=data, content_type="text/csv")
    assert resp.mimetype == "application/json"
    check_answer(resp.status_code, resp.get_data(), data)


@settings(max_examples=8, **SEEDED)
@given(example=any_file())
def test_prediction_csv_body_never_5xx_on_gunicorn(live_url, example):
    import requests

    data, _ = example
    resp = requests.post(live_url + "/prediction", data=data, headers={"Content-Type": "text/csv"}, timeout=30)
    assert resp.headers["Content-Type"].startswith("application/json")
    check_answer(resp.status_code, resp.content, data)


@pytest.fixture(scope="module")
def live_url(api_world):
    with gunicorn(api_world, workers=1) as url:
        yield url


# ---------------------------------------------------------------- the exact cases

MAC = b"corporation,lastmonth_activity,lastyear_activity,number_of_employees,exited\rabcd,3,34,5,1\r"
HUGE = (HEADER + '"' + "h" * (LIMIT + 1) + '",3,34,5,1\n').encode()
TINY = (HEADER + "abcd,1e-400,34,5,1\n").encode()
NEARLY = (HEADER + "abcd,12.0000000000000001,34,5,1\n").encode()
HUGE_REASON = "malformed CSV: line 2: a field longer than 131072 characters"
TINY_REASON = "column 'lastmonth_activity', row 1 (line 2): value '1e-400' is not a whole number"
NEARLY_REASON = "column 'lastmonth_activity', row 1 (line 2): value '12.0000000000000001' is not a whole number"


def test_bare_cr_file_is_read_as_csv_with_old_mac_line_ends(world):
    write_delivery(world, "mac.csv", text=MAC)
    write_delivery(world, "mixed.csv", text=(HEADER + "efgh,1,2,3,0\r\nijkl,4,5,6,1\rmnop,7,8,9,0\n").encode())
    result = ingestion.ingest(world)
    assert result.quarantined == []
    assert ingestion.read_finaldata(world.finaldata).values.tolist() == [
        ["abcd", 3, 34, 5, 1], ["efgh", 1, 2, 3, 0], ["ijkl", 4, 5, 6, 1], ["mnop", 7, 8, 9, 0]]


def test_bare_cr_file_through_a_cycle_process(tmp_path):
    cfg = build_world(tmp_path, cv_folds=0)
    write_delivery(cfg, "mac.csv", text=MAC)
    proc = run(cfg, "-v")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((cfg.log_folder_path / "cycles.jsonl").read_text().splitlines()[-1])
    assert rec["errors"] == []
    assert [(f["name"], f["rows"]) for f in rec["ingestion"]["ingested"]] == [("mac.csv", 1)]
    assert ingestion.read_finaldata(cfg.finaldata).values.tolist()[-1] == ["abcd", 3, 34, 5, 1]


def test_copies_of_one_content_in_one_cycle_each_end_accounted_for(tmp_path):
    """Found by the cycle fuzz: five empty files in one delivery left four neither quarantined nor
    ingested (only the first copy of a content was a candidate). Each bad copy is quarantined; a
    good content's later copies are reported as already ingested."""
    cfg = build_world(tmp_path, cv_folds=0)
    for name in ("e1.csv", "e2.csv", "e3.csv"):
        write_delivery(cfg, name, text=b"")
    write_delivery(cfg, "a.csv", text=good_file(7))
    write_delivery(cfg, "a2.csv", text=good_file(7))
    proc = run(cfg)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((cfg.log_folder_path / "cycles.jsonl").read_text().splitlines()[-1])
    assert [(q["name"], q["reason"]) for q in rec["ingestion"]["quarantined"]] == [
        ("e1.csv", "empty file"), ("e2.csv", "empty file"), ("e3.csv", "empty file")]
    assert [(f["name"], f["rows"]) for f in rec["ingestion"]["ingested"]] == [("a.csv", 2)]
    assert rec["ingestion"]["skipped"] == ["a2.csv"]
    assert sorted(p.name for p in cfg.input_folder_path.iterdir()) == ["a.csv", "a2.csv"]
    assert sorted(p.name.split("-", 2)[2] for p in cfg.quarantine_folder_path.iterdir()) == [
        "e1.csv", "e1.csv.reason.txt", "e2.csv", "e2.csv.reason.txt", "e3.csv", "e3.csv.reason.txt"]


LONE_CR = (HEADER + '"cr\rend",3,34,5,1\nabcd,1,2,3,0\n').encode()
LONE_CR_REASON = ("column 'corporation', row 1: value 'cr\\rend' holds a carriage return that does not end a line"
                  " (CR without LF)")


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("lone cr.csv", LONE_CR, LONE_CR_REASON),
    ("huge field.csv", HUGE, HUGE_REASON),
    ("tiny.csv", TINY, TINY_REASON),
    ("nearly twelve.csv", NEARLY, NEARLY_REASON),
])
def test_quarantined_with_its_reason(world, name, data, reason):
    write_delivery(world, name, text=data)
    write_delivery(world, "good.csv", text=good_file(1))
    result = ingestion.ingest(world)
    assert [(q["name"], q["reason"]) for q in result.quarantined] == [(name, reason)]
    assert [f["name"] for f in result.ingested] == ["good.csv"]


@pytest.mark.parametrize(("data", "status", "answer"), [
    (MAC, 200, None),
    (HUGE, 400, HUGE_REASON),
    (TINY, 400, TINY_REASON),
    (NEARLY, 400, NEARLY_REASON),
])
def test_prediction_csv_bodies(client, data, status, answer):
    resp = client.post("/prediction", data=data, content_type="text/csv")
    assert resp.status_code == status
    if answer is None:
        assert len(resp.get_json()["predictions"]) == 1
    else:
        assert resp.get_json() == {"error": answer}


@pytest.mark.parametrize(("value", "answer"), [
    ("1e-400", "column 'lastmonth_activity', row 1: value 1e-400 is not a whole number"),
    ("12.0000000000000001", "column 'lastmonth_activity', row 1: value 12.0000000000000001 is not a whole number"),
    ("-1e-400", "column 'lastmonth_activity', row 1: value -1e-400 is not a whole number"),
    ("1e400", "column 'lastmonth_activity', row 1: value Infinity is not a finite number"),
    ("2.5", "column 'lastmonth_activity', row 1: value 2.5 is not a whole number"),
])
def test_prediction_json_numbers_checked_as_text(client, value, answer):
    body = '{"records": [{"lastmonth_activity": %s, "lastyear_activity": 2, "number_of_employees": 3}]}' % value
    resp = client.post("/prediction", data=body, content_type="application/json")
    assert (resp.status_code, resp.get_json()) == (400, {"error": answer})


def test_prediction_json_whole_numbers_in_any_notation(client):
    body = '{"records": [%s]}' % ",".join(
        '{"lastmonth_activity": %s, "lastyear_activity": 70, "number_of_employees": 12}' % v
        for v in ("3", "3.0", "3.000", "0.3e1", "300e-2"))
    resp = client.post("/prediction", data=body, content_type="application/json")
    assert resp.status_code == 200, resp.get_json()
    assert len(set(resp.get_json()["predictions"])) == 1 and len(resp.get_json()["predictions"]) == 5


@pytest.mark.parametrize(("text", "whole"), [
    ("12", True), ("+12", True), ("-12", True), (" 12 ", True), ("12.", True), ("12.000", True),
    ("1e3", True), ("1E3", True), ("1.5e1", True), ("1200e-2", True), ("0e-5", True),
    ("12.5", False), ("12.0000000000000001", False), ("1e-400", False), ("1.25e1", False), (".5", False),
    ("", False), ("inf", False), ("nan", False), ("0x1A", False), ("\uff11\uff12", False), ("\u0661", False),
    ("1_000", False), ("1,000", False), ("1e", False), ("e3", False), ("1e1234567", False),
])
def test_whole_number_as_text(text, whole):
    assert delivery.is_whole_text(text) is whole


def test_file_replaced_between_hashing_and_reading(world, monkeypatch):
    """Replaced, after its hash was taken, by content already ingested: skipped like that content."""
    old = (HEADER + "abcd,1,2,3,0\n").encode()
    write_delivery(world, "old.csv", text=old)
    ingestion.ingest(world)
    write_delivery(world, "new.csv", text=(HEADER + "efgh,4,5,6,1\n").encode())
    hashed = ingestion.file_sha256

    def hash_then_replace(conn, path):
        digest = hashed(conn, path)
        if path.name == "new.csv":
            path.write_bytes(old)  # the delivery's sender puts the old content back, too late
        return digest

    monkeypatch.setattr(ingestion, "file_sha256", hash_then_replace)
    result = ingestion.ingest(world)
    assert (result.ingested, result.quarantined, result.skipped) == ([], [], ["old.csv", "new.csv"])
    assert ingestion.read_finaldata(world.finaldata).values.tolist() == [["abcd", 1, 2, 3, 0]]
    assert query(world, "SELECT name FROM ingested_files") == [("old.csv",)]
