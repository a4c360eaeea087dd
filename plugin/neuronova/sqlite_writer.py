"""One background thread per SQLite file that writes batches of statements, so that Orthanc's
callbacks never wait for SQLite; readers call flush() first to see every pending write."""

from __future__ import annotations

import logging
import os
import sqlite3

from .batch_writer import BatchWriter, statement_runs

log = logging.getLogger("neuronova.sqlite")


class SqliteWriter(BatchWriter):
    def __init__(self, database_path: str, schema: str, name: str, migrations: tuple[str, ...] = ()):
        os.makedirs(os.path.dirname(os.path.abspath(database_path)), exist_ok=True)
        self.path = database_path
        with self.connect() as db:
            db.executescript(schema)
            for statement in migrations:  # ALTER TABLE ... ADD COLUMN for files of earlier versions
                try:
                    db.execute(statement)
                except sqlite3.OperationalError:
                    pass  # already applied
        self._db: sqlite3.Connection | None = None  # the writer thread's own connection
        super().__init__(name, flush_timeout=30.0)

    def connect(self) -> sqlite3.Connection:
        """WAL with synchronous NORMAL: a commit survives the process being killed (kill -9), and only
        an operating-system crash may lose the last ones; FULL cost an fsync per batch (measured)."""
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _write(self, batch: list[tuple]) -> bool:
        if self._db is None:
            self._db = self.connect()
        try:
            with self._db:
                for sql, rows in statement_runs(batch):
                    self._db.executemany(sql, rows)
        except sqlite3.Error:
            log.exception("Could not write %d rows to %s", len(batch), self.path)
        return True  # a local file that refuses a batch will refuse it again

    def _finish(self) -> None:
        if self._db is not None:
            self._db.close()

    def fetch(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of a query, once every pending statement is written."""
        self.flush()
        with self.connect() as db:
            return db.execute(sql, params).fetchall()
