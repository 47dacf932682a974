"""Large deliveries go through whole: a 50 MB file is ingested, not refused or truncated."""
from conftest import HEADER, write_delivery

import datagen
import ingestion


def test_a_50_mb_delivery_is_ingested_whole(world):
    block = datagen.generate(1000, seed=11).to_csv(index=False, header=False).encode()
    repeats = 50 * 1024 * 1024 // len(block) + 1
    data = HEADER.encode() + block * repeats
    assert len(data) > 50 * 1024 * 1024
    write_delivery(world, "big delivery.csv", text=data)
    write_delivery(world, "small.csv", text=HEADER + "abcd,1,2,3,0\n")

    result = ingestion.ingest(world)

    assert [(f["name"], f["rows"]) for f in result.ingested] == [("big delivery.csv", 1000 * repeats), ("small.csv", 1)]
    assert result.total_rows == 1001  # the repeats are duplicates of the 1,000 distinct rows
