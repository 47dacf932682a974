"""Ingestion: find new delivery files, check each one, append the good ones' new rows to finaldata.csv.

Rules (README, "Ingestion rules"):
- a delivery file is a `*.csv` in the input folder; dotfiles, `*.tmp`/`*.part` and files modified
  in the last `ingest_settle_seconds` are still being written and are left for the next run;
- the checks are the delivery rules (delivery.py); a file that breaks one is bad;
- a file is known by the SHA-256 of its bytes: the same content is never ingested twice, whatever
  its name, and a changed file under an old name is a new delivery;
- a good file's bytes are kept in the archive (archive.py) before it is recorded as ingested;
- a bad file is moved to the quarantine folder with a `.reason.txt` beside it, never deleted;
- a missing value (empty cell, NA, NaN, null) keeps its row in finaldata.csv, so the
  missing-data diagnostic sees it; training drops such rows;
- only the rows finaldata.csv does not hold yet are appended, found by its row-hash index
  (finaldata.py): the cost of an ingestion is its files', not the history's.

pandas is imported inside the functions that read and write the data, so that looking for new
files (the monitoring cycle's frequent "nothing to do" path) stays fast.
"""
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import archive
import atomicfiles
import columnstats
import delivery
import finaldata
import history
import locks
import progress
from settings import ConfigError, load_config, setup_logging

logger = logging.getLogger(__name__)

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".swp")


@dataclass
class Candidate:
    path: Path
    sha256: str


@dataclass
class IngestResult:
    ingested: list = field(default_factory=list)      # dicts: name, sha256, rows
    quarantined: list = field(default_factory=list)   # dicts: name, reason, moved_to
    skipped: list = field(default_factory=list)       # names already ingested (same content)
    duplicates: list = field(default_factory=list)    # dicts: name, of (the name it was ingested under)
    waiting: list = field(default_factory=list)       # dicts: name, until, seconds (still settling)
    total_rows: int = 0
    seconds: float = 0.0
    frames: dict = field(default_factory=dict, repr=False)  # sha256 -> parsed rows of each ingested file

    def as_dict(self):
        return {"ingested": self.ingested, "quarantined": self.quarantined, "skipped": self.skipped,
                "total_rows": self.total_rows, "seconds": self.seconds}


@dataclass
class Found:
    """What a look at the input folder found: the new files, the copies of ingested ones, the settling ones."""

    candidates: list = field(default_factory=list)  # Candidates
    duplicates: list = field(default_factory=list)  # dicts: name, of
    waiting: list = field(default_factory=list)     # dicts: name, until, seconds
    seen: dict = field(default_factory=dict)        # name -> sha256 of each file whose content is ingested
    known: set = field(default_factory=set)         # the sha256 of every ingested content


def _iso_after(t):
    """UTC ISO 8601 of the first whole second at or after `t` (a settling file's wait ends then)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(-(-t // 1)))


def waiting_text(w) -> str:
    """A settling file in words: which, until when, and why."""
    return (f"{w['name']} until {w['until']}: modified less than {w['seconds']:g}s ago "
            "(ingest_settle_seconds), so it may still be being written")


def duplicate_text(d) -> str:
    """A copy of an ingested file in words, naming the file it duplicates."""
    return f"{d['name']}: a duplicate of {d['of']}, already ingested"


def duplicates_of(names, seen) -> list:
    """The files of `seen` ({name: sha256}, content already ingested) ingested under another name,
    by `names` (history.ingested_names): [{"name", "of"}]. The same name again is the ingested file
    itself, not a copy."""
    return [{"name": name, "of": names[digest]} for name, digest in seen.items()
            if digest in names and names[digest] != name]


def delivery_files(folder, settle_seconds=0.0, now=None, waiting=None) -> list:
    """The finished `*.csv` files in `folder`, sorted by name; the settling ones are appended to the
    list `waiting`, if given, as {"name", "until", "seconds"}."""
    folder = Path(folder)
    now = time.time() if now is None else now
    found = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES) or not name.lower().endswith(".csv"):
            continue
        if not entry.is_file(follow_symlinks=False):
            continue
        mtime = entry.stat().st_mtime
        if settle_seconds > 0 and now - mtime < settle_seconds:
            w = {"name": name, "until": _iso_after(mtime + settle_seconds), "seconds": settle_seconds}
            logger.info("waiting: %s", waiting_text(w))
            if waiting is not None:
                waiting.append(w)
            continue
        found.append(Path(entry.path))
    return sorted(found, key=lambda p: p.name)


def file_sha256(conn, path: Path) -> str:
    """SHA-256 of a file's bytes, cached in the history database by path, size, mtime, inode and
    ctime. A rewrite that keeps the size and restores the mtime (`cp -p`, `tar x`, `rsync -t`) still
    changes the ctime, which no `utime` call can set, so it is hashed again."""
    st = path.stat()
    key = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    row = conn.execute("SELECT size, mtime_ns, inode, ctime_ns, sha256 FROM file_hashes WHERE path = ?",
                       (str(path),)).fetchone()
    if row is not None and tuple(row)[:4] == key:
        return row["sha256"]
    digest = atomicfiles.sha256_file(path)
    # The ctime ticks coarsely (a jiffy): a file changed within a second of hashing could change again
    # under the same ctime, so its hash is not cached (as git does with its "racy" index entries).
    if time.time_ns() - st.st_ctime_ns > 1_000_000_000:
        conn.execute(history.upsert_sql("file_hashes", ("path",), ("path", "size", "mtime_ns", "inode", "ctime_ns",
                                                                  "sha256")), (str(path), *key, digest))
    else:
        conn.execute("DELETE FROM file_hashes WHERE path = ?", (str(path),))
    return digest


def look(conn, folder, settle_seconds=0.0) -> Found:
    """The delivery files in `folder` whose content has not been ingested yet (new_files), the
    copies of ingested files under other names, and the files still settling."""
    names = history.ingested_names(conn)  # one query for both: what is ingested, and under which name
    found = Found(known=set(names))
    for path in delivery_files(folder, settle_seconds, waiting=found.waiting):
        digest = file_sha256(conn, path)
        if digest in names:
            found.seen[path.name] = digest
        else:
            found.candidates.append(Candidate(path, digest))
    found.duplicates = duplicates_of(names, found.seen)
    return found


def new_files(conn, folder, settle_seconds=0.0) -> list:
    """Delivery files in `folder` whose content has not been ingested yet. Every such file, copies of
    one new content included: ingest() takes the first copy and reports the others as duplicates of
    it, or quarantines each copy of a bad content, so that no file is left unaccounted for."""
    return look(conn, folder, settle_seconds).candidates


read_finaldata = finaldata.read
summarize = columnstats.summarize  # per-feature statistics and per-column missing percentages of a frame


def quarantine_target(path: Path, digest: str, qdir: Path) -> Path:
    """Where a bad file goes: qdir/TIMESTAMP-HASH-NAME."""
    return qdir / f"{time.strftime('%Y%m%dT%H%M%S')}-{digest[:8]}-{path.name}"


def quarantine(path: Path, reason: str, digest: str, qdir: Path, target=None) -> Path:
    """Move `path` into `qdir` (as `target`, if given) with its reason beside it. Never deletes anything."""
    qdir.mkdir(parents=True, exist_ok=True)
    target = Path(target) if target is not None else quarantine_target(path, digest, qdir)
    atomicfiles.write_text(target.with_name(target.name + ".reason.txt"), f"{path.name}: {reason}\n")
    try:
        os.replace(path, target)
    except OSError:  # another filesystem: copy then remove the original
        import shutil

        shutil.move(str(path), str(target))
    return target


def write_ingested_list(conn, path) -> bool:
    """Write ingestedfiles.txt from the history database, unless it already says the same; return
    whether it wrote. The history is the record: a process killed between recording its files and
    writing this list leaves the list behind, and the next call brings it up to date."""
    names = list(dict.fromkeys(f["name"] for f in history.ingested_files(conn)))
    text = "".join(n + "\n" for n in names)
    try:
        if Path(path).read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        if not names:
            return False
    atomicfiles.write_text(path, text)
    return True


def keep_in_archive(cfg, digest, data):
    """Archive a good delivery's bytes (archive.py) before anything records it as ingested: a
    recorded delivery can always be read back, whatever happens to the input folder."""
    archive.store(archive.folder_of(cfg), digest, data)


def ingest(cfg, folder=None, conn=None, candidates=None) -> IngestResult:
    """Ingest the new files of `folder` (default: the config's input folder) into finaldata.csv.

    Good files are merged with what was ingested before and deduplicated; bad files are
    quarantined. Returns what happened to each file. Holds the writer lock throughout (locks.py);
    raises locks.Busy when another writer keeps it past writer_wait_seconds.
    """
    with locks.writer(cfg.writer_lock, "ingestion.py", cfg.writer_wait_seconds):
        return _ingest(cfg, folder, conn, candidates)


def _ingest(cfg, folder, conn, candidates) -> IngestResult:
    import hashlib  # here, not at the top: the cycle's idle path imports this module

    started = time.perf_counter()
    folder = Path(folder) if folder is not None else cfg.input_folder_path
    own_conn = conn is None
    conn = conn or history.connect(cfg.history)
    result = IngestResult()
    try:
        if candidates is None:
            found = look(conn, folder, cfg.ingest_settle_seconds)
            candidates, known, seen = found.candidates, found.known, dict(found.seen)
            result.waiting, result.skipped = found.waiting, list(found.seen)
        else:
            known, seen = history.ingested_hashes(conn), {}  # seen: name -> sha256 of each file skipped
        good, read = [], 0
        for i, cand in enumerate(candidates, 1):
            # Read once; hash, judge and record those same bytes. The cached hash only chose the
            # candidate: a file replaced since by content already ingested (or taken earlier in this
            # run) is that content, and is skipped like it.
            where = f"file {i} of {len(candidates)}, {progress.megabytes(read)} read before it"
            progress.show(f"ingestion: reading {cand.path.name} ({where})")
            try:
                data = cand.path.read_bytes()
            except FileNotFoundError:  # removed since it was listed: nothing left to judge
                logger.warning("%s disappeared before it could be read; nothing ingested from it", cand.path.name)
                continue
            read += len(data)
            progress.show(f"ingestion: checking {cand.path.name}, {progress.megabytes(len(data))} ({where})")
            digest = hashlib.sha256(data).hexdigest()
            if digest in known:
                seen[cand.path.name] = digest
                result.skipped.append(cand.path.name)
                continue
            try:
                df = delivery.parse_delivery(data)
            except delivery.BadFile as exc:
                # Recorded first, moved second: a process killed in between leaves the file where it
                # was and its record naming the target, and the next run moves it there. (Moved
                # first, a kill would leave it quarantined with no record of it.)
                row = conn.execute("SELECT moved_to FROM quarantined_files WHERE sha256 = ? AND name = ?"
                                   " ORDER BY id DESC LIMIT 1", (digest, cand.path.name)).fetchone()
                if row is not None and not Path(row["moved_to"]).exists():
                    target = Path(row["moved_to"])  # recorded by a run that was killed before the move
                else:
                    target = quarantine_target(cand.path, digest, cfg.quarantine_folder_path)
                    with history.transaction(conn):
                        history.record_json(conn, "quarantined_files", name=cand.path.name, sha256=digest,
                                            reason=str(exc), moved_to=str(target), at=time.time())
                moved = quarantine(cand.path, str(exc), digest, cfg.quarantine_folder_path, target)
                logger.warning("quarantined %s: %s (moved to %s)", cand.path.name, exc, moved)
                result.quarantined.append({"name": cand.path.name, "reason": str(exc), "moved_to": str(moved)})
                continue
            known.add(digest)
            keep_in_archive(cfg, digest, data)
            good.append((cand.path, digest, df))
        if good:
            progress.show(f"ingestion: appending the new rows of {len(good)} file(s) to {cfg.finaldata.name}")
            # Only the new distinct rows are appended (finaldata.py). finaldata.csv first, the history
            # second: a crash in between leaves rows no ingestion recorded, which the next run cuts
            # off before it ingests the same files again.
            store = finaldata.open_store(cfg, conn)
            added = store.add([df for _, _, df in good])
            stats, missing = added.profile.summary()
            now = time.time()
            with history.transaction(conn):
                for path, digest, df in good:
                    history.record_json(conn, "ingested_files", name=path.name, sha256=digest,
                                        rows=len(df), folder=str(path.parent), at=now)
                    result.ingested.append({"name": path.name, "sha256": digest, "rows": len(df)})
                    result.frames[digest] = df
                history.record_json(conn, "summaries", at=now, rows=added.rows, bytes=added.bytes, stats=stats,
                                    missing=missing)
                history.record_timing(conn, "ingestion", time.perf_counter() - started, now)
            store.settle(added)
            write_ingested_list(conn, cfg.ingested_list)
            result.total_rows = added.rows
            logger.info("ingested %d file(s) from %s; finaldata.csv now has %d distinct rows",
                        len(good), folder, added.rows)
        else:
            summary = history.latest_summary(conn)
            result.total_rows = summary["rows"] if summary else 0
        result.duplicates = duplicates_of(history.ingested_names(conn), seen) if seen else []
    finally:
        progress.clear()
        if own_conn:
            conn.close()
    result.seconds = time.perf_counter() - started
    return result


def main(argv=None):
    import argparse  # here, not at the top: the cycle's idle path imports this module

    parser = argparse.ArgumentParser(description="Ingest new delivery files into finaldata.csv.")
    parser.add_argument("--config", help="path to config.json (default: the one beside this script)")
    parser.add_argument("--input-folder", help="ingest from this folder instead of input_folder_path")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folder = Path(args.input_folder) if args.input_folder else cfg.input_folder_path
    if not folder.is_dir():
        named_by = "given by --input-folder" if args.input_folder else f"config key input_folder_path in {cfg.path}"
        print(f"error: input folder {folder} does not exist ({named_by})", file=sys.stderr)
        return 2
    try:
        result = ingest(cfg, folder)
    except locks.Busy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return locks.EXIT_BUSY
    except finaldata.Unrecoverable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for f in result.ingested:
        print(f"ingested    {f['name']} ({f['rows']} rows)")
    copies = {d["name"] for d in result.duplicates}
    for name in result.skipped:
        if name not in copies:
            print(f"already in  {name}")
    for d in result.duplicates:
        print(f"duplicate   {duplicate_text(d)}")
    for w in result.waiting:
        print(f"waiting     {waiting_text(w)}")
    for f in result.quarantined:
        print(f"quarantined {f['name']}: {f['reason']}")
    if cfg.finaldata.exists():
        print(f"{cfg.finaldata}: {result.total_rows} distinct rows")
    else:
        print(f"nothing ingested yet: no {cfg.finaldata}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
