"""One background thread per SQLite file that writes batches of statements, so that Orthanc's
callbacks never wait for SQLite; readers call flush() first to see every pending write.

Submitting is a deque append (atomic, no lock, no wake-up per statement: a queue.Queue's notify was
a tenth of the plugin's GIL time under load); the writer drains the deque every 50 ms, or at once
for a reader that flushes."""

from __future__ import annotations

import collections
import logging
import os
import sqlite3
import threading

log = logging.getLogger("neuronova.sqlite")


class SqliteWriter:
    def __init__(self, database_path: str, schema: str, name: str, migrations: tuple[str, ...] = ()):
        os.makedirs(os.path.dirname(os.path.abspath(database_path)), exist_ok=True)
        self.path = database_path
        self._pending: collections.deque[tuple] = collections.deque()  # (sql, params) or (None, Event)
        self._closing = threading.Event()
        self._wake = threading.Event()  # flush() and close() do not wait for the next round
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
        """WAL with synchronous NORMAL: a commit survives the process being killed (kill -9), and only
        an operating-system crash may lose the last ones; FULL cost an fsync per batch (measured)."""
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def submit(self, sql: str, params: tuple) -> None:
        self._pending.append((sql, params))

    def _write_forever(self) -> None:
        db = self.connect()
        while True:
            batch, flushes = [], []
            while self._pending and len(batch) < 2000:
                sql, params = self._pending.popleft()
                if sql is None:
                    flushes.append(params)
                    break  # what came before it is written first
                batch.append((sql, params))
            if batch:
                try:
                    with db:
                        for sql, rows in statement_runs(batch):
                            db.executemany(sql, rows)
                except sqlite3.Error:
                    log.exception("Could not write %d rows to %s", len(batch), self.path)
            for done in flushes:
                done.set()
            if self._closing.is_set() and not self._pending:
                db.close()
                return
            if not flushes and len(batch) < 2000:  # a round every 50 ms, at once for a reader waiting
                self._wake.wait(ROUND_SECONDS)
                self._wake.clear()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every statement submitted so far is written."""
        done = threading.Event()
        self._pending.append((None, done))
        self._wake.set()
        done.wait(timeout if self._thread.is_alive() else 0)

    def fetch(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of a query, once every pending statement is written."""
        self.flush()
        with self.connect() as db:
            return db.execute(sql, params).fetchall()

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout=10)


ROUND_SECONDS = 0.05  # rounds, not a wake-up per statement: each wake-up is a GIL hand-off under load


def statement_runs(items):
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
