"""Incremental ingestion: only a delivery's new distinct rows are appended to finaldata.csv, found by
the row-hash index; the file stays byte-identical to a full rebuild; the column profile gives the
summary and the drift reference; a killed or damaged state is put right from the history's record."""
import logging
import os

import numpy as np
import pandas as pd
import pytest
from conftest import HEADER, write_delivery
from helpers import query, reading, writing

import archive
import columnstats
import cycledata
import datagen
import delivery
import drift
import finaldata
import history
import ingestion
import rowindex

# Awkward but valid values: quoted separators, quotes, a line feed inside a field, missing values,
# the text "NA" as a name, non-ASCII; rows repeated within a file and across files.
AWKWARD = HEADER + ('"a,b",1,2,3,0\n"say ""hi""",1,2,3,1\n"two\nlines",4,5,6,0\nNA,1,2,3,0\n,1,2,3,0\n'
                    "\u00fcn\u00ef,7,8,9,1\nabcd,,2,3,0\nabcd,1,2,3,\n\"a,b\",1,2,3,0\n")
AGAIN = HEADER + '"two\nlines",4,5,6,0\nnew1,9,9,9,1\n,1,2,3,0\nNA,1,2,3,0\nnew1,9,9,9,1\n'


def deliveries():
    """Five deliveries: seeded rows overlapping each other, and the awkward ones."""
    a = datagen.generate(300, seed=1)
    b = pd.concat([datagen.generate(200, seed=2), a.iloc[10:60], datagen.generate(200, seed=2).iloc[:5]])
    c = pd.concat([a.iloc[:3], datagen.generate(150, seed=3, drift="covariate", strength=0.5)])
    return [("a.csv", a.to_csv(index=False)), ("b.csv", b.to_csv(index=False)), ("c.csv", AWKWARD),
            ("d.csv", c.to_csv(index=False)), ("e.csv", AGAIN)]


def archived_frames(cfg):
    with reading(cfg) as conn:
        return [delivery.parse_delivery(archive.load(archive.folder_of(cfg), f["sha256"]))
                for f in history.ingested_files(conn)]


def recorded(cfg):
    return query(cfg, "SELECT rows, bytes FROM summaries ORDER BY id DESC LIMIT 1")[0]


def test_incremental_ingestion_appends_and_is_byte_identical_to_a_full_rebuild(world):
    before, inode = b"", None
    for name, text in deliveries():
        write_delivery(world, name, text=text)
        ingestion.ingest(world)
        data = world.finaldata.read_bytes()
        frames = archived_frames(world)
        assert data == finaldata.rebuild(frames)
        # the course's way, whole: pandas' concat, drop_duplicates, to_csv
        assert data == pd.concat(frames, ignore_index=True).drop_duplicates().to_csv(index=False).encode()
        assert data.startswith(before)  # appended: what was there stays, byte for byte
        assert inode in (None, os.stat(world.finaldata).st_ino)  # the same file, never rewritten
        assert recorded(world) == (len(ingestion.read_finaldata(world.finaldata)), len(data))
        before, inode = data, os.stat(world.finaldata).st_ino
    assert recorded(world) == (300 + 200 + 8 + 150 + 1, len(before))


def test_ingestion_reads_none_of_the_rows_before(world, monkeypatch):
    write_delivery(world, "a.csv", rows=500, seed=1)
    ingestion.ingest(world)

    def refuse(*args, **kwargs):
        raise AssertionError("finaldata.csv read whole")

    monkeypatch.setattr(finaldata, "read", refuse)
    monkeypatch.setattr(ingestion, "read_finaldata", refuse)
    write_delivery(world, "b.csv", text=datagen.generate(500, seed=1).iloc[:20].to_csv(index=False)
                   + "zzzz,1,2,3,0\n")
    result = ingestion.ingest(world)
    assert (result.total_rows, recorded(world)[0]) == (501, 501)
    assert world.finaldata.read_text().endswith("\nzzzz,1,2,3,0\n")


@pytest.mark.parametrize("value", ["a\rb", "\r", "a\r\nb", "x\r", '"\r"'])
def test_a_value_holding_a_carriage_return_is_quoted_and_reads_back(tmp_path, value):
    df = pd.DataFrame({"corporation": [value, "plain"], "lastmonth_activity": pd.array([1, None], dtype="Int64"),
                       "lastyear_activity": pd.array([2, 3], dtype="Int64"),
                       "number_of_employees": pd.array([3, 4], dtype="Int64"),
                       "exited": pd.array([0, 1], dtype="Int64")})
    lines = finaldata.csv_lines(df)
    assert lines == [('"' + value.replace('"', '""') + '",1,2,3,0\n').encode(), b"plain,,3,4,1\n"]
    path = tmp_path / "finaldata.csv"
    path.write_bytes(finaldata.HEADER + b"".join(lines))
    back = finaldata.read(path)
    assert back["corporation"].tolist() == [value, "plain"]
    assert finaldata.csv_lines(back) == lines


@pytest.mark.parametrize("value", ["a,b", 'q"q', "l\nf", " lead", "trail ", "NA", "", "\u00e9\u00e8", "'", "\t"])
def test_the_row_format_is_pandas_to_csv_for_every_other_value(value):
    df = pd.DataFrame({"corporation": [value or None], "lastmonth_activity": pd.array([None], dtype="Int64"),
                       "lastyear_activity": pd.array([2**53 - 1], dtype="Int64"),
                       "number_of_employees": pd.array([0], dtype="Int64"), "exited": pd.array([1], dtype="Int64")})
    assert finaldata.HEADER + b"".join(finaldata.csv_lines(df)) == df.to_csv(index=False).encode()


@pytest.mark.backends
def test_summary_after_each_ingestion_is_the_whole_datas(world):
    for name, text in deliveries():
        write_delivery(world, name, text=text)
        ingestion.ingest(world)
        final = ingestion.read_finaldata(world.finaldata)
        with reading(world) as conn:
            summary = history.latest_summary(conn)
        assert (summary["stats"], summary["missing"]) == columnstats.summarize(final)
        for col, got in summary["stats"].items():
            s = final[col].dropna().astype("float64")
            assert (got["count"], got["min"], got["max"], got["median"]) == (len(s), s.min(), s.max(), s.median())
            assert (got["mean"], got["std"]) == (pytest.approx(s.mean(), rel=1e-13), pytest.approx(s.std(), rel=1e-12))
        assert summary["missing"] == {c: float(final[c].isna().sum()) * 100.0 / len(final) for c in final.columns}


def test_a_hash_collision_never_hides_a_new_row(world, monkeypatch):
    monkeypatch.setattr(rowindex, "hash_lines", lambda lines: np.zeros(len(lines), dtype=np.uint64))
    for name, text in deliveries()[:3]:
        write_delivery(world, name, text=text)
        ingestion.ingest(world)
    assert world.finaldata.read_bytes() == finaldata.rebuild(archived_frames(world))


def test_index_files_stay_few_and_describe_the_data_exactly(world):
    write_delivery(world, "base.csv", rows=2000, seed=1)
    ingestion.ingest(world)
    counts = []
    for i in range(12):
        write_delivery(world, f"d{i:02d}.csv", rows=50, seed=10 + i)
        ingestion.ingest(world)
        rows, length = recorded(world)
        folder = finaldata.index_folder(world)
        tiles = rowindex.tiling(folder, len(finaldata.HEADER), length)
        assert [p for _, _, p in tiles] == [p for _, _, p in rowindex.files(folder)]  # nothing else left
        assert sorted(p.name for p in folder.glob("columns-*")) == [f"columns-{length}.npz"]
        sizes = [rowindex.rows_in(p) for _, _, p in tiles]
        assert sum(sizes) == rows and sizes == sorted(sizes, reverse=True)
        counts.append(len(tiles))
    # merged two by two: 2,000 rows, then the 50-row deliveries as a binary counter
    assert counts == [2, 2, 3, 2, 3, 3, 4, 2, 3, 3, 4, 3]


def ingest_one_more(cfg, name="more.csv"):
    write_delivery(cfg, name, text=HEADER + "more,1,2,3,0\nabcd,,2,3,0\n")
    return ingestion.ingest(cfg)


def damage_tail(cfg):
    with open(cfg.finaldata, "ab") as f:  # an ingestion killed after its append, before its record
        f.write(b"half,1,2,3,0\nwritten,4,")


def lose_index(cfg):
    for p in finaldata.index_folder(cfg).iterdir():
        p.unlink()


def damage_profile(cfg):
    next(finaldata.index_folder(cfg).glob("columns-*.npz")).write_bytes(b"torn")


def lose_finaldata_and_sources(cfg):
    cfg.finaldata.unlink()
    for p in cfg.input_folder_path.iterdir():
        p.unlink()


def from_before_incremental_ingestion(cfg):
    lose_index(cfg)
    with writing(cfg) as conn:
        conn.execute("UPDATE summaries SET bytes = NULL")


RECOVERIES = [
    (damage_tail, "cut {path} back from {big} to {size} bytes, the length the history records: the rows of an "
                  "ingestion killed before it was recorded (its files are ingested again)"),
    (lose_index, "indexing {path}: its row index or column profile does not describe its {size} bytes"),
    (damage_profile, "the column profile {profile} cannot be read: it is made again from finaldata.csv"),
    (lose_finaldata_and_sources, "{path} is missing: rebuilding it from the delivery archive"),
    (from_before_incremental_ingestion, "indexing {path} ({size} bytes) for incremental ingestion"),
]


@pytest.mark.backends
@pytest.mark.parametrize(("damage", "message"), RECOVERIES, ids=[r[0].__name__ for r in RECOVERIES])
def test_a_damaged_state_is_put_right_from_the_history(world, caplog, damage, message):
    for name, text in deliveries()[:3]:
        write_delivery(world, name, text=text)
        ingestion.ingest(world)
    size = world.finaldata.stat().st_size
    profile = finaldata.index_folder(world) / f"columns-{size}.npz"
    lengths = [r[0] for r in query(world, "SELECT bytes FROM summaries ORDER BY id")]
    damage(world)
    big = world.finaldata.stat().st_size if world.finaldata.exists() else None
    caplog.set_level(logging.INFO, logger="finaldata")
    ingest_one_more(world)
    assert message.format(path=world.finaldata, size=size, big=big, profile=str(profile)) in caplog.messages
    data = world.finaldata.read_bytes()
    assert data == finaldata.rebuild(archived_frames(world))
    assert data.endswith(b"\nmore,1,2,3,0\n")  # "abcd,,2,3,0" was there already: not appended again
    assert [r[0] for r in query(world, "SELECT bytes FROM summaries ORDER BY id")] == lengths + [len(data)]
    assert recorded(world) == (len(ingestion.read_finaldata(world.finaldata)), len(data))


def test_a_finaldata_that_cannot_be_rebuilt_is_said_in_one_line(world, capsys):
    write_delivery(world, "a.csv", text=AWKWARD)
    ingestion.ingest(world)
    digest = next(iter(archive.contents(archive.folder_of(world))))
    lose_finaldata_and_sources(world)
    archive.path_for(archive.folder_of(world), digest).unlink()
    write_delivery(world, "b.csv", text=AGAIN)
    assert ingestion.main(["--config", str(world.path)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {world.finaldata} cannot be rebuilt: delivery {digest[:12]} is not in the archive "
        f"({archive.path_for(archive.folder_of(world), digest)}), and {world.input_folder_path / 'a.csv'} no longer "
        "holds that delivery; restore finaldata.csv from a backup")


def test_the_drift_reference_is_the_rows_before_without_reading_them(world, monkeypatch):
    write_delivery(world, "a.csv", rows=3000, seed=1)
    write_delivery(world, "b.csv", text=AWKWARD)
    ingestion.ingest(world)
    write_delivery(world, "c.csv", text=datagen.generate(400, seed=5, drift="covariate", strength=0.4)
                   .to_csv(index=False))
    write_delivery(world, "d.csv", text=AGAIN)
    ingestion.ingest(world)
    conn = history.connect(world.history)
    pending = [dict(r) for r in conn.execute("SELECT * FROM ingested_files WHERE name IN ('c.csv', 'd.csv') ORDER BY id")]
    prefix = ingestion.read_finaldata(world.finaldata, nrows=3000 + 8)
    new = pd.concat([delivery.parse_delivery((world.input_folder_path / n).read_bytes()) for n in ("c.csv", "d.csv")])
    expected = drift.feature_drift(prefix, new)
    read = []
    real = finaldata.read
    monkeypatch.setattr(finaldata, "read", lambda source, nrows=None: read.append(source) or real(source, nrows))
    reference = cycledata.reference_rows(world, conn, pending)
    conn.close()
    assert drift.feature_drift(reference, new) == expected
    assert expected["any"] and expected["drifted"]  # a real result, not two empty ones
    assert len(read) == 1 and not isinstance(read[0], (str, os.PathLike))  # the appended bytes only
