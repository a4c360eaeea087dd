"""What is on disk, file by file: received and stored sizes, and which files still wait for the
background work. Orthanc's /statistics counts received sizes; this is where the saving is known.

Written by a background thread (storage callbacks never wait for SQLite); the totals are kept in
memory as well, so `GET /neuronova/storage` never scans the disk.
"""

from __future__ import annotations

import threading

from ..sqlite_writer import SqliteWriter

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    uuid TEXT PRIMARY KEY,
    received INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    syntax TEXT NOT NULL,
    state TEXT NOT NULL  -- packed | plain (stored as received) | pending (background work to do)
);
CREATE INDEX IF NOT EXISTS files_by_state ON files(state);
CREATE TABLE IF NOT EXISTS jobs (name TEXT PRIMARY KEY, state TEXT NOT NULL);
"""
STATES = ("packed", "plain", "pending")


class Ledger:
    def __init__(self, database_path: str):
        self._writer = SqliteWriter(database_path, _SCHEMA, "neuronova-ledger")
        self._lock = threading.Lock()
        self._files: dict[str, tuple[int, int, str]] = {}
        self._received = self._stored = 0
        self._counts = dict.fromkeys(STATES, 0)
        with self._writer.connect() as db:
            for uuid, received, stored, state in db.execute("SELECT uuid, received, stored, state FROM files"):
                self._add(uuid, (received, stored, state))

    def _add(self, uuid: str, entry: tuple[int, int, str] | None) -> None:
        """Replace (or with None remove) one file's entry, keeping the totals; under self._lock."""
        old = self._files.pop(uuid, None) if entry is None else self._files.get(uuid)
        if old is not None:
            self._received, self._stored = self._received - old[0], self._stored - old[1]
            self._counts[old[2]] -= 1
        if entry is not None:
            self._files[uuid] = entry
            self._received, self._stored = self._received + entry[0], self._stored + entry[1]
            self._counts[entry[2]] += 1

    def record(self, uuid: str, received: int, stored: int, syntax: str, state: str) -> None:
        with self._lock:
            self._add(uuid, (received, stored, state))
        self._writer.submit("INSERT OR REPLACE INTO files (uuid, received, stored, syntax, state) "
                            "VALUES (?, ?, ?, ?, ?)", (uuid, received, stored, syntax, state))

    def forget(self, uuid: str) -> None:
        with self._lock:
            known = uuid in self._files
            self._add(uuid, None)
        if known:
            self._writer.submit("DELETE FROM files WHERE uuid = ?", (uuid,))

    def state(self, uuid: str) -> str | None:
        with self._lock:
            known = self._files.get(uuid)
        return known[2] if known else None

    def sizes(self, uuid: str) -> tuple[int, int]:
        """(received, stored) bytes of one file, (0, 0) when unknown."""
        with self._lock:
            known = self._files.get(uuid)
        return (known[0], known[1]) if known else (0, 0)

    def pending(self) -> list[str]:
        with self._lock:
            return [uuid for uuid, (_, _, state) in self._files.items() if state == "pending"]

    def totals(self) -> dict:
        with self._lock:
            received, stored, counts, files = self._received, self._stored, dict(self._counts), len(self._files)
        return {"files": files, "compressed_files": counts["packed"], "plain_files": counts["plain"],
                "pending": counts["pending"], "received_bytes": received, "stored_bytes": stored,
                "saved_bytes": received - stored,
                "saving_percent": round(100.0 * (received - stored) / received, 1) if received else 0.0}

    def job_state(self, name: str) -> str | None:
        self._writer.flush()
        with self._writer.connect() as db:
            row = db.execute("SELECT state FROM jobs WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_job_state(self, name: str, state: str) -> None:
        self._writer.submit("INSERT OR REPLACE INTO jobs (name, state) VALUES (?, ?)", (name, state))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
