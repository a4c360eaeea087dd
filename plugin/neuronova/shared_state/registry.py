"""The embedded registry on PostgreSQL: every server of a cluster reads and edits the same patients
(a PUT on one is what the next instance on another resolves to: no cache in between)."""

from __future__ import annotations

import logging
import threading

from ..directory.registry import EmbeddedRegistry, load_seed
from ..errors import DirectoryUnavailable
from ..directory.model import Patient
from .database import DATABASE_ERRORS, SCHEMA_LOCK, SharedDatabase, pg

log = logging.getLogger("neuronova.directory")

# Folded with Python's casefold when written: PostgreSQL's lower() depends on the database's locale
# (ASCII only under "C"), and the search must match the SQLite registry's (accents, Hangul...).
SCHEMA = ("CREATE TABLE IF NOT EXISTS patients (patient_id TEXT PRIMARY KEY, name TEXT NOT NULL, birth_date TEXT, "
          "gender TEXT NOT NULL, folded_id TEXT NOT NULL DEFAULT '', folded_name TEXT NOT NULL DEFAULT '')",
          "CREATE TABLE IF NOT EXISTS identifiers (value TEXT NOT NULL, issuer TEXT NOT NULL DEFAULT '', "
          "patient_id TEXT NOT NULL REFERENCES patients(patient_id) ON DELETE CASCADE, PRIMARY KEY (value, issuer))",
          "CREATE INDEX IF NOT EXISTS identifiers_by_patient ON identifiers(patient_id)",
          "CREATE TABLE IF NOT EXISTS registry_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


class _Connection:
    """A psycopg connection that takes the SQLite registry's SQL ("?" marks), inside _read's transaction."""

    def __init__(self, connection):
        self._connection = connection

    def execute(self, sql: str, params: tuple = ()):
        return self._connection.execute(pg(sql), params)

    def executemany(self, sql: str, rows) -> None:
        self._connection.cursor().executemany(pg(sql), list(rows))

    def __enter__(self):
        return self

    def __exit__(self, *exception) -> bool:
        return False


class SharedRegistry(EmbeddedRegistry):
    _SEARCH_WHERE = "WHERE strpos(folded_id, ?) > 0 OR strpos(folded_name, ?) > 0"

    def __init__(self, database: SharedDatabase, seed_path: str | None = None):
        self._database = database
        self._lock = threading.Lock()  # unused by the pool; kept for EmbeddedRegistry's contract
        if seed_path:
            self._seed_once(seed_path)

    def _seed_once(self, seed_path: str) -> None:
        """Seeded once for the cluster, under the schema's advisory lock (servers may start together)."""
        patients = load_seed(seed_path)

        def seed(connection):
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            db = _Connection(connection)
            if self._seeded(db):
                return
            for patient in patients:
                self._upsert(db, patient)
            db.execute("INSERT INTO registry_meta VALUES ('seeded', ?)", (seed_path,))
            log.info("Shared registry seeded with %d patients from %s", len(patients), seed_path)
        self._database.run(seed, timeout=30.0)

    def _upsert(self, db, patient: Patient) -> None:
        super()._upsert(db, patient)
        db.execute("UPDATE patients SET folded_id = ?, folded_name = ? WHERE patient_id = ?",
                   (patient.patient_id.casefold(), patient.name.casefold(), patient.patient_id))

    def _read(self, work):
        try:
            return self._database.run(lambda connection: work(_Connection(connection)))
        except DATABASE_ERRORS as error:
            raise DirectoryUnavailable(f"shared registry (PostgreSQL): {type(error).__name__}") from error
