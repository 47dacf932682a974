"""The delivery archive: every ingested file's bytes kept once under their SHA-256, checked on read."""
import gzip
import hashlib

import pytest
from conftest import HEADER, write_delivery

import archive
import ingestion

GOOD = HEADER + "abcd,10,120,5,0\nefgh,0,3,2000,1\n"
BAD = HEADER + "abcd,10,120,lots,0\n"


def sha(data):
    return hashlib.sha256(data).hexdigest()


def test_ingestion_archives_each_good_file_once_and_no_bad_one(world):
    write_delivery(world, "a.csv", text=GOOD)
    write_delivery(world, "b.csv", text=BAD)
    ingestion.ingest(world)
    write_delivery(world, "a copy.csv", text=GOOD)  # the same content under another name
    ingestion.ingest(world)

    folder = archive.folder_of(world)
    assert folder == world.output_folder_path / "deliveries"
    digest = sha(GOOD.encode())
    assert sorted(p.name for p in folder.iterdir()) == [f"{digest}.csv.gz"]
    assert gzip.decompress((folder / f"{digest}.csv.gz").read_bytes()) == GOOD.encode()
    assert archive.load(folder, digest) == GOOD.encode()
    assert [p.name.split("-", 2)[2] for p in world.quarantine_folder_path.glob("*.csv")] == ["b.csv"]


def test_the_archive_file_is_the_same_bytes_for_the_same_content(tmp_path):
    data = GOOD.encode()
    a = archive.store(tmp_path / "one", sha(data), data).read_bytes()
    b = archive.store(tmp_path / "two", sha(data), data).read_bytes()
    assert a == b  # no timestamp in the gzip header


@pytest.mark.parametrize(("damage", "message"), [
    (lambda p: p.write_bytes(gzip.compress(b"corporation,x\n", mtime=0)),
     "archive file {name} refused: its content has sha256 {got}, not {want}"),
    (lambda p: p.write_bytes(b"not gzip at all"),
     "archive file {name} is not readable gzip: Not a gzipped file (b'no')"),
    (lambda p: p.unlink(),
     "delivery {want} is not in the archive ({path})"),
])
def test_a_damaged_archive_file_is_refused(tmp_path, damage, message):
    data = GOOD.encode()
    path = archive.store(tmp_path, sha(data), data)
    damage(path)
    with pytest.raises(archive.ArchiveError) as exc:
        archive.load(tmp_path, sha(data))
    assert str(exc.value) == message.format(name=path.name, got=sha(b"corporation,x\n")[:12],
                                            want=sha(data)[:12], path=path)


def test_store_replaces_a_damaged_copy_and_refuses_bytes_that_are_not_their_hash(tmp_path):
    data = GOOD.encode()
    path = archive.store(tmp_path, sha(data), data)
    path.write_bytes(b"torn")
    archive.store(tmp_path, sha(data), data)
    assert archive.load(tmp_path, sha(data)) == data
    with pytest.raises(archive.ArchiveError) as exc:
        archive.store(tmp_path, sha(b"other"), data)
    assert str(exc.value) == f"not archived: the bytes given do not have sha256 {sha(b'other')[:12]}"
