"""A real PostgreSQL server for the tests: Debian's binaries, a data folder of its own, a loopback port.

    server = PostgresServer.start()     initdb in a temporary folder, then postgres on a free port
    server.new_database()               a fresh, empty database: its postgresql:// URL (no password)
    server.stop()                       the server stopped, its folder removed

The server never runs as root (PostgreSQL refuses to): as root, initdb and postgres run as the
`postgres` user that Debian's package makes (runuser), and the folder is theirs. Its unix socket is
in that folder, so it never meets a system server's. Durability is off (fsync, synchronous_commit):
nothing here must survive a power cut, and each world's database is made in milliseconds.

Connections as the user `dras` are trusted from 127.0.0.1; the user PASSWORD_USER needs its
password (scram-sha-256), which the tests give through PGPASSWORD or a PGPASSFILE, never the URL.
"""
import glob
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

USER = "dras"
PASSWORD_USER = "dras_pw"
HBA = f"""local all all trust
host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
"""


def bindir():
    """The folder of Debian's PostgreSQL binaries (the newest major version), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, folder, port, bin_dir, as_user):
        self.folder, self.port, self.bin, self.as_user = folder, port, bin_dir, as_user
        self._names = itertools.count(1)
        self.password = os.urandom(12).hex()

    @classmethod
    def start(cls, tries=3, listen=(), clients=()):
        """initdb and start a server; a port taken between choosing and binding is tried again.
        `listen`: addresses it listens on besides 127.0.0.1; `clients`: networks (CIDR) whose
        connections as `dras` it trusts besides 127.0.0.1 (tests/netns.py's test hosts)."""
        bin_dir = bindir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian's postgresql: `make setup` installs it)")
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        folder = Path(tempfile.mkdtemp(prefix="dras-pg-"))
        if as_user:
            shutil.chown(folder, "postgres", "postgres")
        server = cls(folder, None, bin_dir, as_user)
        server._run("initdb", "-D", str(folder / "data"), "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync",
                    "--no-instructions")
        hba = HBA + "".join(f"host all {USER} {net} trust\n" for net in clients)
        (folder / "data" / "pg_hba.conf").write_text(hba)  # root may write it; it stays the owner's file
        for attempt in range(tries):
            server.port = free_port()
            opts = (f"-p {server.port} -k {folder} -c listen_addresses={','.join(('127.0.0.1', *listen))} -c fsync=off"
                    " -c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
            done = server._run("pg_ctl", "-D", str(folder / "data"), "-o", opts, "-l", str(folder / "log"), "-w",
                               "-t", "30", "start", check=False)
            if done.returncode == 0:
                break
            if attempt == tries - 1:
                log = (folder / "log").read_text() if (folder / "log").exists() else ""
                server.remove()
                raise RuntimeError(f"postgres did not start: {done.stdout}{done.stderr}{log}")
        server.sql(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{server.password}'")
        return server

    def _run(self, program, *args, check=True):
        return subprocess.run([*self.as_user, str(self.bin / program), *args], capture_output=True, text=True,
                              check=check, timeout=60)

    def url(self, database="postgres", user=USER):
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement, database="postgres"):
        """Run one statement as the server's superuser; the rows it returns (none: [])."""
        from contextlib import closing

        import psycopg2

        with closing(psycopg2.connect(self.url(database))) as admin:
            admin.autocommit = True
            cur = admin.cursor()
            cur.execute(statement)
            return cur.fetchall() if cur.description else []

    def new_database(self, owner=USER):
        """A fresh, empty database (owned by `owner`); its URL for that user."""
        name = f"world_{os.getpid()}_{next(self._names)}"
        self.sql(f"CREATE DATABASE {name} OWNER {owner}")
        return self.url(name, owner)

    def copy_database(self, url):
        """A fresh database holding what the database of `url` holds (none may be connected to it); its URL."""
        name = f"world_{os.getpid()}_{next(self._names)}"
        self.sql(f"CREATE DATABASE {name} TEMPLATE {url.rsplit('/', 1)[1]} OWNER {USER}")
        return self.url(name)

    def stop(self):
        """Stop at once (connections dropped) and remove the folder."""
        done = self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop", check=False)
        if done.returncode != 0:  # never leave a server behind: the postmaster's pid is in its pid file
            try:
                pid = int((self.folder / "data" / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)
            except (OSError, ValueError, IndexError):
                pass
        self.remove()

    def remove(self):
        shutil.rmtree(self.folder, ignore_errors=True)
