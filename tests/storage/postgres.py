"""A throw-away PostgreSQL server for the tests: ``initdb`` into a temp folder, ``pg_ctl start`` on a free port
bound to 127.0.0.1 (socket in the same folder), one fresh database per test, ``pg_ctl stop`` at the end.

As root the server runs as the ``postgres`` user (PostgreSQL refuses to run as root). The binaries come from
Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``), which ``.ci/run`` installs; without them
``PostgresServer.start`` raises ``PostgresUnavailable`` with the install command, and the fixture fails the test.
Durability is switched off (``fsync=off``): these databases only live for one test session.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SERVER_USER = "postgres"
INSTALL_HINT = "install the Debian package `postgresql` (apt-get install -y postgresql; .ci/run does this)"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are missing or the server did not start."""


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has initdb and pg_ctl."""
    candidates = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bindir = Path(initdb).parent
        version = bindir.parent.name
        if (bindir / "pg_ctl").is_file() and version.isdigit():
            candidates.append((int(version), bindir))
    if not candidates:
        raise PostgresUnavailable(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {INSTALL_HINT}")
    return max(candidates)[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One server in a temp folder; ``url(dbname)`` gives SQLAlchemy URLs for the psycopg driver."""

    def __init__(self):
        self.bindir = find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="studio-pg-", dir="/tmp"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self.port = 0
        self._names = itertools.count(1)
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PostgresUnavailable(f"running as root but there is no {SERVER_USER!r} user: {INSTALL_HINT}")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as_user = ["runuser", "-u", SERVER_USER, "--"]

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self._as_user, *args], cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self) -> None:
        init = self._run(
            str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
        )
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        for _attempt in range(3):  # the free port can be taken by someone else before the server binds it
            self.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
            )
            started = self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile), "-o", options,
                "-w", "-t", "60", "start",
            )
            if started.returncode == 0:
                return
        log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
        raise PostgresUnavailable(f"pg_ctl start failed: {started.stderr.strip()}\n{log}")

    def stop(self) -> None:
        if self.datadir.exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres", password: str | None = None) -> str:
        auth = "postgres" if password is None else f"postgres:{password}"
        return f"postgresql+psycopg://{auth}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
