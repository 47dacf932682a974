"""finaldata.csv, appended: its one row format, the rows a delivery adds, and its recovery.

    ingesteddata/finaldata.csv          the course's file: a header, then each distinct row of the
                                        ingested deliveries once, in the order they arrived
    ingesteddata/index/rows-B0-B1.npy   the row-hash index of its bytes [B0, B1) (rowindex.py)
    ingesteddata/index/columns-L.npz    the column profile of its first L bytes (columnstats.py)

An ingestion formats only its deliveries' rows (`csv_lines`, the one home of the row format),
keeps the first of equal lines, looks them up in the index, appends the new ones, writes the
index file of the bytes it appended and the profile of the whole; then the history records the
ingestion with finaldata.csv's new length (`summaries.bytes`) in one transaction. The file is the
same, byte for byte, as one written whole from the deliveries (`rebuild`).

What the history records is the truth, and `open_store` makes the files agree with it first:
- finaldata.csv longer than recorded holds the rows of an ingestion killed before its record:
  it is cut back to the recorded length (the files are ingested again);
- shorter, or missing: it is rebuilt from the delivery archive (the recorded deliveries in order);
- an index or profile that does not describe the recorded bytes is rebuilt from finaldata.csv;
- a history from before incremental ingestion (no length recorded): finaldata.csv is indexed
  once and the lengths of the earlier ingestions are recorded.

numpy and pandas are imported inside the functions: the cycle's idle path imports this module.
"""
import io
import logging
import os
import re
import time
from dataclasses import dataclass

import archive
import atomicfiles
import delivery
import history
import rowindex
from columnstats import Profile
from settings import COLUMNS

logger = logging.getLogger(__name__)

INDEX = "index"
HEADER = (",".join(COLUMNS) + "\n").encode()
PROFILE = re.compile(r"columns-(\d+)\.npz")
# pandas' to_csv quotes a field holding the separator, a quote or a line feed (the csv module's
# minimal quoting with "\n" line ends); a carriage return must be quoted too, or reading the file
# back would end the row there.
NEEDS_QUOTES = re.compile(r'[,"\r\n]')


class Unrecoverable(Exception):
    """finaldata.csv is shorter than the history records and cannot be rebuilt from the deliveries."""


def index_folder(cfg):
    return cfg.output_folder_path / INDEX


def read(path, nrows=None):
    """Read finaldata.csv (its first `nrows` rows, if given) with the schema's dtypes (nullable integers keep missing values)."""
    import pandas as pd

    return pd.read_csv(path, dtype={"corporation": "str", **{c: "Int64" for c in delivery.NUMERIC}},
                       keep_default_na=False, na_values={c: [""] for c in COLUMNS}, nrows=nrows)


def read_range(path, start, end):
    """The rows in bytes [start, end) of finaldata.csv, read as `read` reads the whole."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    return read(io.BytesIO(HEADER + data))


def csv_lines(df) -> list:
    """Each row of `df` (finaldata's columns) as its line of finaldata.csv, in bytes: what pandas'
    to_csv writes (missing values empty), and a field holding a carriage return quoted."""
    import pandas as pd

    names = df["corporation"].to_numpy(dtype=object)
    missing = pd.isna(names)
    if missing.any():
        names = names.copy()
        names[missing] = ""
    if NEEDS_QUOTES.search("".join(names)):  # one scan of them all: the usual names need no quotes
        names = ['"' + n.replace('"', '""') + '"' if NEEDS_QUOTES.search(n) else n for n in names]
    numbers = [df[c].to_numpy(dtype=object, na_value="") for c in COLUMNS[1:]]
    return [f"{n},{a},{b},{c},{e}\n".encode("utf-8") for n, a, b, c, e in zip(names, *numbers)]


def distinct(frames) -> tuple:
    """(lines, rows) of the first of each equal row of `frames` in order: what finaldata.csv holds
    of them, as lines and as a frame."""
    import pandas as pd

    if not frames:
        return [], pd.DataFrame({c: [] for c in COLUMNS})
    df = pd.concat(frames, ignore_index=True)
    lines = csv_lines(df)
    first = ~pd.Series(lines, dtype=object).duplicated().to_numpy()
    return [line for line, keep in zip(lines, first) if keep], df[first].reset_index(drop=True)


def _offsets(start, lines):
    import numpy as np

    lengths = np.fromiter((len(line) for line in lines), dtype=np.int64, count=len(lines))
    return start + np.concatenate(([0], np.cumsum(lengths)))


@dataclass
class Added:
    """What an ingestion appended: the rows and length of finaldata.csv after it, its profile."""
    rows: int
    bytes: int
    profile: Profile
    index_file: tuple = None  # (start, end, path) of the index file of the appended bytes


class Store:
    """finaldata.csv as the history records it (`open_store`), ready for rows to be added."""

    def __init__(self, path, folder, rows, length, chosen, profile):
        self.path, self.folder = path, folder
        self.rows, self.length, self.chosen, self.profile = rows, length, chosen, profile

    def add(self, frames) -> Added:
        """Append the rows of `frames` that finaldata.csv does not hold yet (the first of equal
        ones); write the index file of the appended bytes and the new profile. Nothing is recorded."""
        lines, rows = distinct(frames)
        hashes = rowindex.hash_lines(lines)
        known = rowindex.known(self.chosen, self.path, lines, hashes)
        new = [line for line, k in zip(lines, known) if not k]
        if not new:
            return Added(self.rows, self.length, self.profile)
        start = self.length or len(HEADER)
        offsets = _offsets(start, new)
        _append(self.path, self.length, (b"" if self.length else HEADER) + b"".join(new))
        end = int(offsets[-1])
        index_file = (start, end, rowindex.write(self.folder, start, end, hashes[~known], offsets[:-1]))
        profile = self.profile.plus(Profile.of_frame(rows[~known]))
        profile.save(self.folder / f"columns-{end}.npz")
        return Added(self.rows + len(new), end, profile, index_file)

    def settle(self, added):
        """After the history has recorded `added`: merge the index files as they grow, remove the
        files that describe other lengths."""
        if added.index_file is not None:
            self.chosen = rowindex.merge_tail(self.folder, self.chosen + [added.index_file])
        self.rows, self.length, self.profile = added.rows, added.bytes, added.profile
        _tidy(self.folder, self.chosen, self.length)


def _append(path, at, data):
    """Write `data` at byte `at` of `path` (created if needed) and make it durable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        view, pos = memoryview(data), at
        while view:
            done = os.pwrite(fd, view, pos)
            view, pos = view[done:], pos + done
        os.fsync(fd)
    finally:
        os.close(fd)
    if at == 0:
        atomicfiles._fsync_dir(path.parent)


def _tidy(folder, chosen, length):
    rowindex.remove_others(folder, chosen)
    for name in os.listdir(folder):
        m = PROFILE.fullmatch(name)
        if m and int(m[1]) != length:
            (folder / name).unlink(missing_ok=True)


def _recorded(conn):
    return conn.execute("SELECT id, rows, bytes FROM summaries ORDER BY id DESC LIMIT 1").fetchone()


def cut_back(cfg, conn) -> bool:
    """Cut finaldata.csv back to the length the history records, if it is longer (the rows of an
    ingestion killed before its record); return whether it did. Cheap: the cycle calls it first."""
    last = _recorded(conn)
    if last is None or last["bytes"] is None:
        return False
    try:
        size = cfg.finaldata.stat().st_size
    except FileNotFoundError:
        return False
    if size <= last["bytes"]:
        return False
    os.truncate(cfg.finaldata, last["bytes"])
    fd = os.open(cfg.finaldata, os.O_WRONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    logger.warning("cut %s back from %d to %d bytes, the length the history records: the rows of an "
                   "ingestion killed before it was recorded (its files are ingested again)",
                   cfg.finaldata, size, last["bytes"])
    return True


def open_store(cfg, conn) -> Store:
    """finaldata.csv, its index and its profile made to agree with the history (the module's
    docstring says how), as a Store. Raises Unrecoverable."""
    path, folder = cfg.finaldata, index_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    atomicfiles.remove_leftovers(folder)
    cut_back(cfg, conn)
    last = _recorded(conn)
    recorded = None if last is None else last["bytes"]
    size = path.stat().st_size if path.exists() else 0
    if recorded is not None and size == recorded:
        chosen = rowindex.tiling(folder, len(HEADER), recorded)
        profile = _load_profile(folder / f"columns-{recorded}.npz") if chosen is not None else None
        if profile is not None:
            _tidy(folder, chosen, recorded)
            return Store(path, folder, last["rows"], recorded, chosen, profile)
        logger.warning("indexing %s: its row index or column profile does not describe its %d bytes", path, size)
    elif last is None and not size:  # nothing ingested yet
        path.unlink(missing_ok=True)
        _tidy(folder, [], 0)
        return Store(path, folder, 0, 0, [], Profile())
    elif recorded is not None or not size:
        logger.warning("%s is %s: rebuilding it from the delivery archive", path,
                       f"{size} bytes, not the {recorded} the history records" if size else "missing")
        return _adopt(cfg, conn, *distinct(_recorded_deliveries(cfg, conn)))
    else:  # a file from before incremental ingestion (or one no ingestion recorded): taken as it is
        logger.info("indexing %s (%d bytes) for incremental ingestion", path, size)
    frame = read(path)
    return _adopt(cfg, conn, csv_lines(frame), frame)


def profile_of(cfg, length):
    """The column profile of finaldata.csv's first `length` bytes, or None when it is not kept."""
    return None if length is None else _load_profile(index_folder(cfg) / f"columns-{length}.npz")


def _load_profile(path):
    if not path.exists():
        return None
    try:
        return Profile.load(path)
    except (OSError, ValueError, KeyError):
        logger.warning("the column profile %s cannot be read: it is made again from finaldata.csv", path)
        return None


def _recorded_deliveries(cfg, conn) -> list:
    """The parsed rows of every recorded delivery, in order: from the archive, else from where it was ingested."""
    import hashlib

    frames = []
    for f in history.ingested_files(conn):
        try:
            data = archive.load(archive.folder_of(cfg), f["sha256"])
        except archive.ArchiveError as exc:
            source = os.path.join(f["folder"], f["name"])
            try:
                with open(source, "rb") as fh:
                    data = fh.read()
            except OSError:
                data = None
            if data is None or hashlib.sha256(data).hexdigest() != f["sha256"]:
                raise Unrecoverable(f"{cfg.finaldata} cannot be rebuilt: {exc}, and {source} no longer holds "
                                    "that delivery; restore finaldata.csv from a backup") from None
        frames.append(delivery.parse_delivery(data))
    return frames


def _adopt(cfg, conn, lines, frame) -> Store:
    """Make `lines` finaldata.csv (rewritten only if it differs), index them and profile them in
    one go, and record the length after each earlier ingestion (their rows are a prefix)."""
    path, folder = cfg.finaldata, index_folder(cfg)
    data = HEADER + b"".join(lines)
    if not path.exists() or path.stat().st_size != len(data) or path.read_bytes() != data:
        atomicfiles.write_bytes(path, data)
    offsets = _offsets(len(HEADER), lines)
    chosen = []
    if lines:
        index_path = rowindex.write(folder, len(HEADER), len(data), rowindex.hash_lines(lines), offsets[:-1])
        chosen = [(len(HEADER), len(data), index_path)]
    profile = Profile.of_frame(frame)
    profile.save(folder / f"columns-{len(data)}.npz")
    with history.transaction(conn):
        for row in conn.execute("SELECT id, rows FROM summaries").fetchall():
            if row["rows"] <= len(lines):
                conn.execute("UPDATE summaries SET bytes = ? WHERE id = ?", (int(offsets[row["rows"]]), row["id"]))
        last = _recorded(conn)
        if last is None or (last["rows"], last["bytes"]) != (len(lines), len(data)):
            stats, missing = profile.summary()
            history.record_json(conn, "summaries", at=time.time(), rows=len(lines), bytes=len(data),
                                stats=stats, missing=missing)
    _tidy(folder, chosen, len(data))
    return Store(path, folder, len(lines), len(data), chosen, profile)


def rebuild(frames) -> bytes:
    """finaldata.csv's bytes for the deliveries `frames` (parsed, in their order), written whole."""
    return HEADER + b"".join(distinct(frames)[0])
