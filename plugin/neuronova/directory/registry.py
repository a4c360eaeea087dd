"""The embedded EMR registry: SQLite under Orthanc's data folder, seeded once from JSON."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading

from ..errors import BadRequest, ConfigError, DirectoryUnavailable
from .model import Identifier, Patient, patient_from_json

log = logging.getLogger("neuronova.directory")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
    patient_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    birth_date TEXT,
    gender TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS identifiers (
    value TEXT NOT NULL,
    issuer TEXT NOT NULL DEFAULT '',
    patient_id TEXT NOT NULL REFERENCES patients(patient_id) ON DELETE CASCADE,
    PRIMARY KEY (value, issuer)
);
CREATE INDEX IF NOT EXISTS identifiers_by_patient ON identifiers(patient_id);
CREATE TABLE IF NOT EXISTS registry_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_PATIENT_COLUMNS = "patient_id, name, birth_date, gender"


def load_seed(seed_path: str) -> list[Patient]:
    try:
        with open(seed_path, encoding="utf-8") as seed_file:
            records = json.load(seed_file)
        return [patient_from_json(record.get("patient_id", ""), record) for record in records]
    except (OSError, ValueError, AttributeError, BadRequest) as error:
        raise ConfigError(f"NeuroNova.Directory.SeedFile: cannot load {seed_path}: {error}") from error


class EmbeddedRegistry:
    writable = True
    _SEARCH_WHERE = "WHERE instr(casefold(patient_id), ?) > 0 OR instr(casefold(name), ?) > 0"

    def __init__(self, database_path: str, seed_path: str | None = None):
        os.makedirs(os.path.dirname(os.path.abspath(database_path)), exist_ok=True)
        # One connection shared by Orthanc's threads; the lock serializes its use.
        self._db = sqlite3.connect(database_path, check_same_thread=False, timeout=5)  # a lookup runs in the serialized received-instance callback: never wait long
        self._lock = threading.Lock()
        # SQLite's LIKE folds ASCII case only; Python's casefold also covers accents, Hangul and the rest.
        self._db.create_function("casefold", 1, lambda value: value.casefold() if value else "", deterministic=True)
        with self._lock, self._db:
            self._db.executescript(_SCHEMA)
        if seed_path:
            self._seed_once(seed_path)

    def _seed_once(self, seed_path: str) -> None:
        """Load the seed file on first start only, so that later edits made by PUT survive restarts."""
        if self._read(self._seeded):
            return
        patients = load_seed(seed_path)
        with self._lock:
            # One write transaction from the check to the mark: two servers starting at once on one
            # file seed it once (the second waits, then finds the mark; it failed on the mark before).
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if not self._seeded(self._db):
                    for patient in patients:
                        self._upsert(self._db, patient)
                    self._db.execute("INSERT INTO registry_meta VALUES ('seeded', ?)", (seed_path,))
                    log.info("Embedded registry seeded with %d patients from %s", len(patients), seed_path)
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise

    @staticmethod
    def _seeded(db) -> bool:
        return db.execute("SELECT 1 FROM registry_meta WHERE key = 'seeded'").fetchone() is not None

    def _upsert(self, db, patient: Patient) -> None:
        """Write the patient and replace its other identifiers (an identifier moves to its new owner)."""
        db.execute(
            "INSERT INTO patients VALUES (?, ?, ?, ?) ON CONFLICT(patient_id) DO UPDATE SET "
            "name = excluded.name, birth_date = excluded.birth_date, gender = excluded.gender",
            (patient.patient_id, patient.name, patient.birth_date, patient.gender),
        )
        db.execute("DELETE FROM identifiers WHERE patient_id = ?", (patient.patient_id,))
        db.executemany(
            "INSERT INTO identifiers VALUES (?, ?, ?) "
            "ON CONFLICT(value, issuer) DO UPDATE SET patient_id = excluded.patient_id",
            [(identifier.value, identifier.issuer, patient.patient_id) for identifier in patient.other_ids],
        )

    def _read(self, work):
        """Run `work(connection)` under the lock; SQLite errors mean the directory is unavailable."""
        try:
            with self._lock:
                return work(self._db)
        except sqlite3.Error as error:
            raise DirectoryUnavailable(f"embedded registry: {error}") from error

    def _patients(self, sql: str, params: tuple) -> list[Patient]:
        def work(db):
            patients = []
            for row in db.execute(sql, params).fetchall():
                identifiers = db.execute("SELECT value, issuer FROM identifiers WHERE patient_id = ? "
                                         "ORDER BY value, issuer", (row[0],)).fetchall()
                patients.append(Patient(*row, other_ids=tuple(Identifier(v, i) for v, i in identifiers)))
            return patients
        return self._read(work)

    def get(self, patient_id: str) -> Patient | None:
        patients = self._patients(f"SELECT {_PATIENT_COLUMNS} FROM patients WHERE patient_id = ?",
                                  (patient_id,))
        return patients[0] if patients else None

    def resolve(self, identifier: str, issuer: str = "") -> Patient | None:
        patient = self.get(identifier)
        if patient is not None:
            return patient
        sql = ("SELECT DISTINCT p.patient_id, p.name, p.birth_date, p.gender FROM patients p "
               "JOIN identifiers i ON i.patient_id = p.patient_id "
               "WHERE i.value = ?")
        params: tuple = (identifier,)
        if issuer:  # an issuer narrows the match; without one, the identifier must name a single patient
            sql, params = sql + " AND i.issuer = ?", (identifier, issuer)
        patients = self._patients(sql, params)
        return patients[0] if len(patients) == 1 else None

    def search(self, text: str, limit: int) -> tuple[list[Patient], int]:
        needle = text.strip().casefold()
        where = self._SEARCH_WHERE
        patients = self._patients(f"SELECT {_PATIENT_COLUMNS} FROM patients {where} ORDER BY patient_id LIMIT ?",
                                  (needle, needle, limit))
        (total,) = self._read(lambda db: db.execute(f"SELECT COUNT(*) FROM patients {where}",
                                                    (needle, needle)).fetchone())
        return patients, total

    def put(self, patient: Patient) -> bool:
        def work(db):
            existed = db.execute("SELECT 1 FROM patients WHERE patient_id = ?", (patient.patient_id,)).fetchone()
            with db:  # one transaction: the patient and its identifiers, or nothing
                self._upsert(db, patient)
            return existed is None
        return self._read(work)
