"""A throwaway PostgreSQL cluster for the test suite, when no trusted server answers.

The suite needs a server where ``postgres`` may connect from 127.0.0.1 without a password. A
machine's own cluster often refuses that (Debian's default ``pg_hba.conf`` says ``peer`` and
``scram-sha-256``), so instead of depending on its configuration, the suite then runs a cluster
of its own: ``initdb --auth=trust`` in a temporary folder, ``pg_ctl start`` on a free port of
127.0.0.1 (its socket in that folder too), stopped and removed when the test run ends. As root,
the server runs as the ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl`` (Debian keeps them out of PATH), newest first."""
    found = shutil.which("initdb")
    if found and Path(found).resolve().with_name("pg_ctl").is_file():
        return Path(found).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(versions[-1]).parent if versions else None


class ThrowawayCluster:
    """``initdb`` + ``pg_ctl start`` on ``port``; :meth:`start` says why it could not."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.folder: Path | None = None
        self.problem: str | None = None

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> bool:
        if self.folder is not None:
            return self.problem is None
        bindir = server_binaries()
        if bindir is None:
            self.problem = "no PostgreSQL server binaries (apt-get install postgresql)"
            self.folder = Path()
            return False
        self.folder = Path(tempfile.mkdtemp(prefix="tocsin-pg-"))
        data = self.folder / "data"
        run_as: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                self.problem = "running as root and there is no postgres user"
                return False
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            run_as = ["runuser", "-u", "postgres", "--"]
        atexit.register(self.stop)
        initdb = ["-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
        pg_ctl = ["-D", str(data), "-l", str(self.folder / "server.log"), "-w", "-t", "60"]
        commands = [
            [str(bindir / "initdb"), *initdb, "--no-instructions"],
            [str(bindir / "pg_ctl"), *pg_ctl, "-o", self._options(), "start"],
        ]
        for command in commands:
            done = subprocess.run(
                run_as + command, capture_output=True, text=True, timeout=120, check=False
            )
            if done.returncode != 0:
                self.problem = f"{Path(command[0]).name} failed: {done.stderr.strip()[-300:]}"
                return False
        return True

    def _options(self) -> str:
        assert self.folder is not None
        # Durability is not what the suite tests here: fsync off keeps it fast on a busy disk.
        return (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=200"
        )

    def stop(self) -> None:
        if self.folder is None or not (self.folder / "data").is_dir():
            return
        bindir = server_binaries()
        if bindir is not None:
            run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
            stop = ["-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop"]
            subprocess.run(
                [*run_as, str(bindir / "pg_ctl"), *stop],
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(self.folder, ignore_errors=True)
