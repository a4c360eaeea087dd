"""The ingest history: one row per instance that passed through the plugin, by any path.

Rows are written by a background thread so that the received-instance callback, which runs one
instance at a time, never waits for SQLite; a query first waits for pending rows.
"""

from __future__ import annotations

import dataclasses
import datetime
import sqlite3
from dataclasses import dataclass

from .sqlite_writer import SqliteWriter

_COLUMNS = ("time", "path", "remote", "sop_instance_uid", "study_instance_uid", "patient_before", "patient_after",
            "action", "syntax_before", "syntax_after", "bytes_before", "bytes_after", "duration_ms", "error",
            "attachment", "user_name")
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
_MIGRATIONS = ("ALTER TABLE history ADD COLUMN attachment TEXT",
               "CREATE INDEX IF NOT EXISTS history_by_attachment ON history(attachment)",
               "ALTER TABLE history ADD COLUMN user_name TEXT",
               "CREATE INDEX IF NOT EXISTS history_by_action ON history(action)",
               "CREATE INDEX IF NOT EXISTS history_by_sop ON history(sop_instance_uid)")
UNSETTLED = ("unmatched", "unverified", "conflict")  # identities nobody has settled yet: the worklist


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
    attachment: str = ""  # the uuid of the instance's DICOM file in the storage area
    user_name: str = ""  # who assigned or moved it (Orthanc's authenticated user), "" when nobody did
    time: str = dataclasses.field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"))


class IngestHistory:
    def __init__(self, database_path: str):
        self._writer = SqliteWriter(database_path, _SCHEMA, "neuronova-history", _MIGRATIONS)
        self._insert = f"INSERT INTO history ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"

    def _connect(self) -> sqlite3.Connection:
        return self._writer.connect()

    def record(self, entry: HistoryEntry) -> None:
        self._writer.submit(self._insert, tuple(getattr(entry, column) for column in _COLUMNS))

    def set_stored(self, attachment: str, stored_bytes: int, syntax: str) -> None:
        """The background work compressed an instance's file after its row was written."""
        self._writer.submit("UPDATE history SET bytes_after = ?, syntax_after = ? WHERE attachment = ?",
                            (stored_bytes, syntax, attachment))

    def flush(self) -> None:
        self._writer.flush()

    def recorded_attachments(self, attachments: list[str]) -> set[str]:
        """Which of these storage-area files have a row (Orthanc's own instance IDs are not kept)."""
        self.flush()
        found: set[str] = set()
        with self._connect() as db:
            for start in range(0, len(attachments), 500):
                chunk = attachments[start:start + 500]
                found.update(row[0] for row in db.execute(
                    f"SELECT attachment FROM history WHERE attachment IN ({', '.join('?' * len(chunk))})", chunk))
        return found

    def close(self) -> None:
        self._writer.close()

    def query(self, since: str = "", study: str = "", patient: str = "", action: str = "",
              limit: int = 100, until: str = "", offset: int = 0) -> list[dict]:
        """Newest first. `patient` matches the patient before or after; `since` and `until` (excluded)
        are ISO dates or times (UTC); `offset` skips that many rows (paging)."""
        self.flush()
        where, params = [], []
        if since:
            where.append("time >= ?")
            params.append(since)
        if until:
            where.append("time < ?")
            params.append(until)
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
               "ORDER BY id DESC LIMIT ? OFFSET ?")
        with self._connect() as db:
            rows = db.execute(sql, (*params, limit, offset)).fetchall()
        return [dict(zip(_COLUMNS, row)) for row in rows]

    def unsettled(self) -> list[dict]:
        """The latest row of every instance whose identity is still unsettled (UNSETTLED), oldest first:
        a later row of the instance (moved, re-verified) settles it."""
        self.flush()
        marks = ", ".join("?" * len(UNSETTLED))
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM history AS h WHERE action IN ({marks}) AND id = ("
                "  SELECT MAX(id) FROM history WHERE sop_instance_uid = h.sop_instance_uid AND action != 'rejected')"
                " ORDER BY id",
                UNSETTLED).fetchall()
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
