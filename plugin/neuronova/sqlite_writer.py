"""One background thread per SQLite file that writes batches of statements, so that Orthanc's
callbacks never wait for SQLite; readers call flush() first to see every pending write."""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading

log = logging.getLogger("neuronova.sqlite")


class SqliteWriter:
    def __init__(self, database_path: str, schema: str, name: str, migrations: tuple[str, ...] = ()):
        os.makedirs(os.path.dirname(os.path.abspath(database_path)), exist_ok=True)
        self.path = database_path
        self._queue: queue.Queue[tuple[str, tuple] | None] = queue.Queue()
        with self.connect() as db:
            db.executescript(schema)
            for statement in migrations:  # ALTER TABLE ... ADD COLUMN for files of earlier versions
                try:
                    db.execute(statement)
                except sqlite3.OperationalError:
                    pass  # already applied
        self._thread = threading.Thread(target=self._write_forever, name=name, daemon=True)
        self._thread.start()

    def connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def submit(self, sql: str, params: tuple) -> None:
        self._queue.put((sql, params))

    def _write_forever(self) -> None:
        db = self.connect()
        while True:
            batch = [self._queue.get()]
            while not self._queue.empty() and len(batch) < 500:
                batch.append(self._queue.get_nowait())
            try:
                with db:
                    for sql, rows in _runs(item for item in batch if item is not None):
                        db.executemany(sql, rows)
            except sqlite3.Error:
                log.exception("Could not write %d rows to %s", len(batch), self.path)
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
        self._thread.join(timeout=10)


def _runs(items):
    """Consecutive statements with the same SQL, grouped for executemany (order kept)."""
    sql, rows = None, []
    for statement, params in items:
        if statement != sql and rows:
            yield sql, rows
            rows = []
        sql = statement
        rows.append(params)
    if rows:
        yield sql, rows
