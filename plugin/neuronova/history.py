"""The ingest history: one row per instance that passed through the plugin, by any path.

Rows are written by a background thread so that the received-instance callback, which runs one
instance at a time, never waits for SQLite; a query first waits for pending rows.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import queue
import sqlite3
import threading
from dataclasses import dataclass

log = logging.getLogger("neuronova.history")

_COLUMNS = ("time", "path", "remote", "sop_instance_uid", "study_instance_uid", "patient_before", "patient_after",
            "action", "syntax_before", "syntax_after", "bytes_before", "bytes_after", "duration_ms", "error")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(f"{column} {'INTEGER' if column.startswith('bytes') else 'REAL' if column == 'duration_ms' else 'TEXT'}"
               for column in _COLUMNS)}
);
CREATE INDEX IF NOT EXISTS history_by_time ON history(time);
CREATE INDEX IF NOT EXISTS history_by_study ON history(study_instance_uid);
CREATE INDEX IF NOT EXISTS history_by_patient_after ON history(patient_after);
"""


@dataclass(frozen=True)
class HistoryEntry:
    path: str  # rest, dicom, plugin (the upload route), dicomweb...
    remote: str  # calling AE title, or "" when Orthanc does not say
    sop_instance_uid: str
    study_instance_uid: str
    patient_before: str
    patient_after: str
    action: str
    syntax_before: str
    syntax_after: str
    bytes_before: int
    bytes_after: int
    duration_ms: float
    error: str = ""
    time: str = dataclasses.field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"))


class IngestHistory:
    def __init__(self, database_path: str):
        os.makedirs(os.path.dirname(os.path.abspath(database_path)), exist_ok=True)
        self._path = database_path
        self._queue: queue.Queue[HistoryEntry | None] = queue.Queue()
        with self._connect() as db:
            db.executescript(_SCHEMA)
        self._writer = threading.Thread(target=self._write_forever, name="neuronova-history", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def record(self, entry: HistoryEntry) -> None:
        self._queue.put(entry)

    def _write_forever(self) -> None:
        db = self._connect()
        insert = f"INSERT INTO history ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
        while True:
            batch = [self._queue.get()]
            while not self._queue.empty() and len(batch) < 500:
                batch.append(self._queue.get_nowait())
            entries = [entry for entry in batch if entry is not None]
            try:
                with db:
                    db.executemany(insert, [tuple(getattr(e, c) for c in _COLUMNS) for e in entries])
            except sqlite3.Error:
                log.exception("Could not write %d ingest history rows", len(entries))
            finally:
                for _ in batch:
                    self._queue.task_done()
            if None in batch:
                db.close()
                return

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join(timeout=10)

    def query(self, since: str = "", study: str = "", patient: str = "", action: str = "",
              limit: int = 100) -> list[dict]:
        """Newest first. `patient` matches the patient before or after; `since` is an ISO date or time (UTC)."""
        self.flush()
        where, params = [], []
        if since:
            where.append("time >= ?")
            params.append(since)
        if study:
            where.append("study_instance_uid = ?")
            params.append(study)
        if patient:
            where.append("(patient_before = ? OR patient_after = ?)")
            params += [patient, patient]
        if action:
            where.append("action = ?")
            params.append(action)
        sql = (f"SELECT {', '.join(_COLUMNS)} FROM history {'WHERE ' + ' AND '.join(where) if where else ''} "
               "ORDER BY id DESC LIMIT ?")
        with self._connect() as db:
            rows = db.execute(sql, (*params, limit)).fetchall()
        return [dict(zip(_COLUMNS, row)) for row in rows]

    def study_sizes(self, study_uids: list[str]) -> dict[str, tuple[int, int]]:
        """Bytes received and bytes stored per study, for the study list's saving column."""
        self.flush()
        if not study_uids:
            return {}
        marks = ", ".join("?" * len(study_uids))
        with self._connect() as db:
            # The latest row of each instance only: a file sent twice is stored once.
            rows = db.execute(
                "SELECT study_instance_uid, SUM(bytes_before), SUM(bytes_after) FROM history WHERE id IN ("
                f"  SELECT MAX(id) FROM history WHERE study_instance_uid IN ({marks}) AND action != 'rejected'"
                "   GROUP BY sop_instance_uid) GROUP BY study_instance_uid", study_uids).fetchall()
        return {uid: (before or 0, after or 0) for uid, before, after in rows}
