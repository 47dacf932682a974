"""Writing files so that a reader, or a crash, never sees one half-written.

hashlib is imported where used: the monitoring cycle's idle path imports this
module and must stay fast.
"""
import os
from pathlib import Path


def _fsync_dir(folder: Path):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_prefix(path: Path) -> str:
    # The writer's pid in the name: remove_leftovers can tell a dead writer's file from a live one's.
    return f".{path.name}.{os.getpid()}."


def _create_tmp(path: Path):
    """Create and open a new temporary file beside `path`; return (fd, its path). Unlike mkstemp's
    0600, the file gets 0666 less the umask, as any program's output does (0644 under the usual 022)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.parent / f"{_tmp_prefix(path)}{os.urandom(6).hex()}.tmp"
        try:
            return os.open(tmp, flags, 0o666), str(tmp)
        except FileExistsError:
            continue


def remove_leftovers(folder) -> list:
    """Delete the temporary files of writers that died mid-write (SIGKILL, power loss) in `folder`;
    return their names. A live writer's file is left alone: its pid is in the name."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(".") and name.endswith(".tmp")):
            continue
        parts = name[:-4].rsplit(".", 2)  # ".NAME", "PID", "RANDOM"
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
            continue  # alive (or reused by another process: left for a later run)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        try:
            os.unlink(entry.path)
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def write_bytes(path, data: bytes):
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_tmp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text(path, text: str):
    write_bytes(path, text.encode("utf-8"))


def write_with(path, writer):
    """Call `writer(tmp_path)` to produce the file, then move it into place atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_tmp(path)
    os.close(fd)
    try:
        writer(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def sha256_file(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
