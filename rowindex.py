"""The row-hash index of finaldata.csv: whether a row is in it, found without reading it.

    ingesteddata/index/rows-B0-B1.npy    the lines of finaldata.csv's bytes [B0, B1): a 2 x n uint64
                                         array, their hashes (sorted) over each line's byte offset

A row is known by its line as finaldata.csv holds it (finaldata.csv_lines). Its hash (BLAKE2b,
8 bytes) is looked up in each file by binary search, and every hash found is confirmed by reading
the line back at its offset: a collision can never hide a new row.

Each ingestion adds one file for the bytes it appended. Files are never changed: two are merged
into a new one when the older holds no more rows than the newer, and the two are removed after
the merged one is in place, so the sizes fall geometrically (a lookup reads about
log2(rows / delivery rows) files, and a row is rewritten about as often). `tiling` picks, for the
bytes the history records, the files that cover them exactly, longest first: a file written by an
ingestion killed before it was recorded, or one a merge left behind, is never used and is removed.

numpy is imported inside the functions: the cycle's idle path imports this module.
"""
import os
import re
from pathlib import Path

import atomicfiles

NAME = re.compile(r"rows-(\d+)-(\d+)\.npy")


def hash_lines(lines):
    """The 64-bit hashes (uint64) of `lines` (bytes, each a whole line)."""
    import hashlib

    import numpy as np

    blake2b = hashlib.blake2b
    return np.frombuffer(b"".join([blake2b(line, digest_size=8).digest() for line in lines]), dtype="<u8")


def file_name(start, end) -> str:
    return f"rows-{start:015d}-{end:015d}.npy"


def files(folder) -> list:
    """(start, end, path) of every index file in `folder`, by start then end."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [(int(m[1]), int(m[2]), Path(folder) / name) for name in names if (m := NAME.fullmatch(name))]
    return sorted(found)


def tiling(folder, start, end):
    """The index files that cover bytes [start, end) exactly, longest first; None when they do not."""
    by_start = {}
    for b0, b1, path in files(folder):
        if b1 <= end and b1 > by_start.get(b0, (b0, None))[0]:
            by_start[b0] = (b1, path)
    chosen, at = [], start
    while at < end:
        if at not in by_start:
            return None
        b1, path = by_start[at]
        chosen.append((at, b1, path))
        at = b1
    return chosen


def remove_others(folder, keep):
    """Remove the index files of `folder` that are not in `keep`; return their names."""
    kept = {p for _, _, p in keep}
    removed = []
    for _, _, path in files(folder):
        if path not in kept:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def write(folder, start, end, hashes, offsets):
    """Write the index file of bytes [start, end): `hashes` with their lines' `offsets`. Returns its path."""
    import numpy as np

    order = np.argsort(hashes, kind="stable")
    return _save(folder, start, end, np.stack([np.asarray(hashes, dtype=np.uint64)[order],
                                                np.asarray(offsets, dtype=np.uint64)[order]]))


def _save(folder, start, end, table):
    import numpy as np

    path = Path(folder) / file_name(start, end)

    def save(tmp):
        with open(tmp, "wb") as f:
            np.save(f, table, allow_pickle=False)

    atomicfiles.write_with(path, save)
    return path


def _write_merged(folder, start, end, table):
    """The index file of two merged ones (a function of its own: the kill-9 suite stops a process right after it)."""
    return _save(folder, start, end, table)


def _load(path):
    import numpy as np

    return np.load(path, mmap_mode="r", allow_pickle=False)


def known(chosen, data_path, lines, hashes):
    """Which of `lines` (with their `hashes`) finaldata.csv at `data_path` already holds, as bools.
    `chosen`: the tiling of its recorded bytes."""
    import numpy as np

    found = np.zeros(len(lines), dtype=bool)
    if not chosen or not len(lines):
        return found
    with open(data_path, "rb") as f:
        fd = f.fileno()
        for _, _, path in chosen:
            table = _load(path)
            if table.shape[1] == 0:
                continue
            keys = table[0]
            lo = np.searchsorted(keys, hashes, side="left")
            hi = np.searchsorted(keys, hashes, side="right")
            for i in np.flatnonzero(hi > lo):
                if found[i]:
                    continue
                line = lines[i]
                found[i] = any(os.pread(fd, len(line), int(off)) == line for off in table[1, lo[i]:hi[i]])
    return found


def rows_in(path) -> int:
    return int(_load(path).shape[1])


def merge_tail(folder, chosen) -> list:
    """Merge the newest files of the tiling `chosen` while the older of the last two holds no more
    rows than the newer; return the new tiling. The merged file is written before the two are
    removed: a process killed in between leaves both, and `tiling` prefers the merged one."""
    import numpy as np

    chosen = list(chosen)
    while len(chosen) >= 2 and rows_in(chosen[-2][2]) <= rows_in(chosen[-1][2]):
        (a0, _, older), (_, b1, newer) = chosen[-2], chosen[-1]
        a, b = np.asarray(_load(older)), np.asarray(_load(newer))
        # b's entries go after a's equal hashes: positions in the merged array, in one pass
        at = np.searchsorted(a[0], b[0], side="right") + np.arange(b.shape[1])
        merged = np.empty((2, a.shape[1] + b.shape[1]), dtype=np.uint64)
        into_b = np.zeros(merged.shape[1], dtype=bool)
        into_b[at] = True
        merged[:, into_b] = b
        merged[:, ~into_b] = a
        path = _write_merged(folder, a0, b1, merged)
        older.unlink(missing_ok=True)
        newer.unlink(missing_ok=True)
        chosen[-2:] = [(a0, b1, path)]
    return chosen
