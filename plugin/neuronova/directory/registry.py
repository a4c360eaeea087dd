"""The embedded EMR registry: SQLite under Orthanc's data folder, seeded once from JSON."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading

from ..errors import BadRequest, ConfigError, DirectoryUnavailable
from .model import Patient, patient_from_json

log = logging.getLogger("neuronova.directory")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
    patient_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    birth_date TEXT,
    gender TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS registry_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class EmbeddedRegistry:
    writable = True

    def __init__(self, database_path: str, seed_path: str | None = None):
        os.makedirs(os.path.dirname(os.path.abspath(database_path)), exist_ok=True)
        # One connection shared by Orthanc's REST threads; the lock serializes its use.
        self._db = sqlite3.connect(database_path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        # SQLite's LIKE folds ASCII case only; Python's casefold also covers accents, Hangul and the rest.
        self._db.create_function("casefold", 1, lambda value: value.casefold() if value else "", deterministic=True)
        with self._lock:
            self._db.executescript(_SCHEMA)
        if seed_path:
            self._seed_once(seed_path)

    def _seed_once(self, seed_path: str) -> None:
        """Load the seed file on first start only, so that later edits made by PUT survive restarts."""
        with self._lock:
            if self._db.execute("SELECT 1 FROM registry_meta WHERE key = 'seeded'").fetchone():
                return
        try:
            with open(seed_path, encoding="utf-8") as seed_file:
                records = json.load(seed_file)
            patients = [patient_from_json(record.get("patient_id", ""), record) for record in records]
        except (OSError, ValueError, AttributeError, BadRequest) as error:
            raise ConfigError(f"NeuroNova.Directory.SeedFile: cannot load {seed_path}: {error}") from error
        with self._lock:
            self._db.execute("BEGIN")
            for patient in patients:
                self._upsert(patient)
            self._db.execute("INSERT INTO registry_meta VALUES ('seeded', ?)", (seed_path,))
            self._db.execute("COMMIT")
        log.info("Embedded registry seeded with %d patients from %s", len(patients), seed_path)

    def _upsert(self, patient: Patient) -> None:
        self._db.execute(
            "INSERT INTO patients VALUES (?, ?, ?, ?) ON CONFLICT(patient_id) DO UPDATE SET "
            "name = excluded.name, birth_date = excluded.birth_date, gender = excluded.gender",
            (patient.patient_id, patient.name, patient.birth_date, patient.gender),
        )

    def _query(self, sql: str, params: tuple) -> list[tuple]:
        try:
            with self._lock:
                return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as error:
            raise DirectoryUnavailable(f"embedded registry: {error}") from error

    def get(self, patient_id: str) -> Patient | None:
        rows = self._query("SELECT * FROM patients WHERE patient_id = ?", (patient_id,))
        return Patient(*rows[0]) if rows else None

    def search(self, text: str, limit: int) -> tuple[list[Patient], int]:
        needle = text.strip().casefold()
        where = "WHERE instr(casefold(patient_id), ?) > 0 OR instr(casefold(name), ?) > 0"
        rows = self._query(f"SELECT * FROM patients {where} ORDER BY patient_id LIMIT ?", (needle, needle, limit))
        (total,) = self._query(f"SELECT COUNT(*) FROM patients {where}", (needle, needle))[0]
        return [Patient(*row) for row in rows], total

    def put(self, patient: Patient) -> bool:
        try:
            with self._lock:
                existed = self._db.execute("SELECT 1 FROM patients WHERE patient_id = ?", (patient.patient_id,)).fetchone()
                self._upsert(patient)
        except sqlite3.Error as error:
            raise DirectoryUnavailable(f"embedded registry: {error}") from error
        return existed is None
