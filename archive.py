"""The delivery archive: each ingested file's bytes kept once, gzip-compressed, under their SHA-256.

    ingesteddata/deliveries/<sha256>.csv.gz

A file is written (atomically) before its delivery is recorded as ingested, so every recorded
delivery is in the archive; it is checked on every read: the SHA-256 of the decompressed bytes
must be its name. gzip and hashlib are imported where used: the cycle's idle path imports this
module and must stay fast.
"""
from pathlib import Path

import atomicfiles

FOLDER = "deliveries"
SUFFIX = ".csv.gz"


class ArchiveError(Exception):
    """A delivery is missing from the archive, or its archived bytes do not match its hash."""


def folder_of(cfg) -> Path:
    """The archive folder of a config: deliveries/ in the output folder."""
    return cfg.output_folder_path / FOLDER


def path_for(folder, sha256: str) -> Path:
    return Path(folder) / f"{sha256}{SUFFIX}"


def _read(path: Path, sha256: str) -> bytes:
    import gzip
    import hashlib
    import zlib

    try:
        data = gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise ArchiveError(f"delivery {sha256[:12]} is not in the archive ({path})") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"archive file {path.name} is not readable gzip: {exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ArchiveError(f"archive file {path.name} refused: its content has sha256 {digest[:12]}, "
                           f"not {sha256[:12]}")
    return data


def store(folder, sha256: str, data: bytes) -> Path:
    """Keep `data` (whose SHA-256 is `sha256`) in the archive, once; return its path.

    An archived copy that already checks out is left alone; one that does not (a torn or tampered
    file) is replaced.
    """
    import gzip
    import hashlib

    if hashlib.sha256(data).hexdigest() != sha256:
        raise ArchiveError(f"not archived: the bytes given do not have sha256 {sha256[:12]}")
    path = path_for(folder, sha256)
    if path.exists():
        try:
            _read(path, sha256)
            return path
        except ArchiveError:
            pass
    # mtime=0: the same bytes always give the same archive file
    atomicfiles.write_bytes(path, gzip.compress(data, compresslevel=6, mtime=0))
    return path


def load(folder, sha256: str) -> bytes:
    """The archived bytes of delivery `sha256`, checked against their hash. Raises ArchiveError."""
    return _read(path_for(folder, sha256), sha256)


def contents(folder) -> dict:
    """sha256 -> compressed size in bytes of every archived delivery (not checked)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {p.name[:-len(SUFFIX)]: p.stat().st_size for p in folder.glob("*" + SUFFIX)
            if not p.name.startswith(".")}
