"""A real PostgreSQL server for the tests: Debian's binaries (initdb, pg_ctl) on a free port in a
temporary folder, run as the `postgres` user when the tests run as root (PostgreSQL refuses root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile

from support.servers import free_port

POSTGRESQL_INDEX_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"


def _binaries() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda path: int(path.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (scripts/install-system-packages.sh installs it)")
    return os.path.dirname(found[-1])


class PostgresServer:
    def __init__(self, database: str = "orthanc"):
        self.bin = _binaries()
        self.port = free_port()
        self.database = database
        self.root = tempfile.mkdtemp(prefix="neuronova-pg-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "postgres.log")
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8")

    def _run(self, program: str, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [os.path.join(self.bin, program), *arguments]
        if self._user:
            command = ["runuser", "-u", self._user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=check, cwd=self.root)

    def start(self) -> "PostgresServer":
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200 "
                  "-c fsync=off", "start")
        if not self._has_database():
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database)
        return self

    def _has_database(self) -> bool:
        answer = self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-At", "-c",
                           f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'", check=False)
        return answer.stdout.strip() == "1"

    def stop(self, mode: str = "fast") -> None:
        """mode "immediate": PostgreSQL's own crash (no checkpoint, clients cut off at once)."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop", check=False)

    def sql(self, statement: str, database: str | None = None) -> str:
        return self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d",
                         database or self.database,
                         "-At", "-c", statement).stdout

    def create_database(self, name: str) -> str:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return name

    def orthanc_overrides(self, server_name: str, database: str | None = None) -> dict:
        """Orthanc's index in this server (Debian's orthanc-postgresql), shared by several Orthancs."""
        return {"DatabaseServerIdentifier": server_name,
                "PostgreSQL": {"EnableIndex": True, "EnableStorage": False, "Host": "127.0.0.1", "Port": self.port,
                               "Database": database or self.database, "Username": "postgres", "Password": "",
                               "Lock": False}}

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
