"""The ingest history: one row per instance that passed through the plugin, by any path.

Rows are written by a background thread so that the received-instance callback, which runs one
instance at a time, never waits for the database (SQLite, or PostgreSQL for a cluster:
shared_state); a query first waits for pending rows.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
import uuid
from dataclasses import dataclass

from .batch_writer import ROUND_SECONDS
from .sqlite_writer import SqliteWriter

_COLUMNS = ("time", "path", "remote", "sop_instance_uid", "study_instance_uid", "patient_before", "patient_after",
            "action", "syntax_before", "syntax_after", "bytes_before", "bytes_after", "duration_ms", "error",
            "attachment", "user_name", "server")


def _column_types(real: str) -> str:
    def kind(column: str) -> str:
        return "BIGINT" if column.startswith("bytes") else real if column == "duration_ms" else "TEXT"
    return ", ".join(f"{column} {kind(column)}" for column in _COLUMNS)


_INDEXES = """
CREATE INDEX IF NOT EXISTS {table}_by_time ON {table}(time);
CREATE INDEX IF NOT EXISTS {table}_by_study ON {table}(study_instance_uid);
CREATE INDEX IF NOT EXISTS {table}_by_patient_after ON {table}(patient_after);
CREATE INDEX IF NOT EXISTS {table}_by_action ON {table}(action);
CREATE INDEX IF NOT EXISTS {table}_by_sop ON {table}(sop_instance_uid)"""
_SQLITE_SCHEMA = (f"CREATE TABLE IF NOT EXISTS history (id INTEGER PRIMARY KEY AUTOINCREMENT, {_column_types('REAL')});"
                  + _INDEXES.format(table="history") + ";")
_SQLITE_MIGRATIONS = ("ALTER TABLE history ADD COLUMN attachment TEXT", "ALTER TABLE history ADD COLUMN server TEXT",
                      "ALTER TABLE history ADD COLUMN user_name TEXT",
                      "CREATE INDEX IF NOT EXISTS history_by_attachment ON history(attachment)")
# PostgreSQL (schema "neuronova"): one table for the cluster, each row with its own key (a batch written again after
# PostgreSQL came back must not add its rows twice).
POSTGRES_SCHEMA = ("CREATE TABLE IF NOT EXISTS history (id BIGSERIAL PRIMARY KEY, entry_key UUID UNIQUE, "
                   f"{_column_types('DOUBLE PRECISION')})",
                   "ALTER TABLE history ADD COLUMN IF NOT EXISTS user_name TEXT",
                   *_INDEXES.format(table="history").strip().split(";\n"),
                   "CREATE INDEX IF NOT EXISTS history_by_attachment ON history(attachment)")
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
    """The rows of one server (SQLite under its storage folder), or of the whole cluster (PostgreSQL:
    every server writes its rows, named `server`, into one table; every query answers for all)."""

    def __init__(self, writer, server: str = "", table: str = "history", keyed: bool = False):
        self._writer = writer
        # Another server's rows are written by its own writer, within a round of its acknowledging the
        # instance: a cluster query waits two rounds, so that it includes whatever was acknowledged before it.
        self._others_seconds = 2 * ROUND_SECONDS if keyed else 0.0
        self.server = server
        self.table = table
        self._keyed = keyed
        columns = ("entry_key", *_COLUMNS) if keyed else _COLUMNS
        self._insert = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
                        + (" ON CONFLICT (entry_key) DO NOTHING" if keyed else ""))

    @classmethod
    def sqlite(cls, database_path: str, server: str = "") -> "IngestHistory":
        return cls(SqliteWriter(database_path, _SQLITE_SCHEMA, "neuronova-history", _SQLITE_MIGRATIONS), server)

    def record(self, entry: HistoryEntry) -> None:
        row = tuple(getattr(entry, column) for column in _COLUMNS[:-1]) + (self.server,)
        self._writer.submit(self._insert, (str(uuid.uuid4()), *row) if self._keyed else row)

    def set_stored(self, attachment: str, stored_bytes: int, syntax: str) -> None:
        """The background work compressed an instance's file after its row was written."""
        self._writer.submit(f"UPDATE {self.table} SET bytes_after = ?, syntax_after = ? WHERE attachment = ?",
                            (stored_bytes, syntax, attachment))

    def flush(self) -> None:
        self._writer.flush()

    def _fetch(self, sql: str, params: tuple) -> list[tuple]:
        if self._others_seconds:
            time.sleep(self._others_seconds)
        return self._writer.fetch(sql, params)

    def recorded_attachments(self, attachments: list[str]) -> set[str]:
        """Which of these storage-area files have a row (Orthanc's own instance IDs are not kept)."""
        found: set[str] = set()
        for start in range(0, len(attachments), 500):
            chunk = attachments[start:start + 500]
            found.update(row[0] for row in self._writer.fetch(
                f"SELECT attachment FROM {self.table} WHERE attachment IN ({', '.join('?' * len(chunk))})",
                tuple(chunk)))
        return found

    def close(self) -> None:
        self._writer.close()

    def query(self, since: str = "", study: str = "", patient: str = "", action: str = "", server: str = "",
              limit: int = 100, until: str = "", offset: int = 0) -> list[dict]:
        """Newest first. `patient` matches the patient before or after; `since` and `until` (excluded)
        are ISO dates or times (UTC); `offset` skips that many rows (paging)."""
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
        if server:
            where.append("server = ?")
            params.append(server)
        sql = (f"SELECT {', '.join(_COLUMNS)} FROM {self.table} {'WHERE ' + ' AND '.join(where) if where else ''} "
               "ORDER BY id DESC LIMIT ? OFFSET ?")
        rows = self._fetch(sql, (*params, limit, offset))
        return [dict(zip(_COLUMNS, row)) for row in rows]

    def unsettled(self) -> list[dict]:
        """The latest row of every instance whose identity is still unsettled (UNSETTLED), oldest first:
        a later row of the instance (moved, re-verified) settles it."""
        marks = ", ".join("?" * len(UNSETTLED))
        rows = self._fetch(
            f"SELECT {', '.join(_COLUMNS)} FROM {self.table} AS h WHERE action IN ({marks}) AND id = ("
            f"  SELECT MAX(id) FROM {self.table} WHERE sop_instance_uid = h.sop_instance_uid AND action != 'rejected')"
            " ORDER BY id",
            UNSETTLED)
        return [dict(zip(_COLUMNS, row)) for row in rows]

    def study_sizes(self, study_uids: list[str]) -> dict[str, tuple[int, int]]:
        """Bytes received and bytes stored per study, for the study list's saving column."""
        if not study_uids:
            return {}
        marks = ", ".join("?" * len(study_uids))
        # The latest row of each instance only: a file sent twice is stored once.
        rows = self._fetch(
            f"SELECT study_instance_uid, SUM(bytes_before), SUM(bytes_after) FROM {self.table} WHERE id IN ("
            f"  SELECT MAX(id) FROM {self.table} WHERE study_instance_uid IN ({marks}) AND action != 'rejected'"
            "   GROUP BY sop_instance_uid) GROUP BY study_instance_uid", tuple(study_uids))
        return {uid: (int(before or 0), int(after or 0)) for uid, before, after in rows}  # PostgreSQL sums: Decimal
