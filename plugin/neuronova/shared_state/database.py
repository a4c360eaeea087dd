"""One PostgreSQL database for every Orthanc of a cluster: a connection pool, the schema created
under an advisory lock (servers may start together), and a writer that never loses a row.

psycopg 3 with psycopg-pool: connections in autocommit, each unit of work in its own transaction.
SQL is written with SQLite's "?" marks where it is shared with the SQLite backend (`pg`)."""

from __future__ import annotations

import collections
import logging
import threading
import time

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ..sqlite_writer import ROUND_SECONDS, statement_runs

log = logging.getLogger("neuronova.shared")

SCHEMA_LOCK = 0x4E4E5347  # "NNSG": pg_advisory_xact_lock key of the plugin's schema and seeding
DATABASE_ERRORS = (psycopg.Error, PoolTimeout)
RETRY_SECONDS = (0.1, 0.2, 0.5, 1.0)


def pg(sql: str) -> str:
    """SQLite's "?" placeholders as psycopg's "%s" (the plugin's SQL has no other "?")."""
    return sql.replace("?", "%s")


class SharedDatabase:
    def __init__(self, conninfo: str, pool_size: int, connect_timeout: float = 3.0):
        self.conninfo = conninfo
        self._connect_timeout = connect_timeout
        self.pool = ConnectionPool(conninfo, min_size=1, max_size=pool_size, open=False, name="neuronova",
                                   kwargs=self.connection_options(), reconnect_timeout=0, timeout=5.0,
                                   check=ConnectionPool.check_connection)

    def connection_options(self) -> dict:
        return {"autocommit": True, "connect_timeout": int(self._connect_timeout), "application_name": "neuronova"}

    def open(self, timeout: float = 60.0) -> None:
        """Wait for PostgreSQL at start (it may start with the servers): raise if it never answers."""
        self.pool.open(wait=False)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.pool.connection(timeout=5.0) as connection:
                    connection.execute("SELECT 1")
                return
            except DATABASE_ERRORS as error:
                if time.monotonic() > deadline:
                    raise
                log.warning("PostgreSQL does not answer yet (%s): trying again", type(error).__name__)
                time.sleep(1.0)

    def migrate(self, statements: tuple[str, ...]) -> None:
        """Create or update tables under one advisory lock: two servers starting at once on an empty
        database would otherwise collide in CREATE TABLE IF NOT EXISTS (a unique violation)."""
        with self.pool.connection() as connection, connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for statement in statements:
                connection.execute(statement)

    def run(self, work, timeout: float = 5.0):
        """work(connection) in one transaction."""
        with self.pool.connection(timeout=timeout) as connection, connection.transaction():
            return work(connection)

    def fetch(self, sql: str, params: tuple = (), timeout: float = 5.0) -> list[tuple]:
        return self.run(lambda connection: connection.execute(pg(sql), params).fetchall(), timeout)

    def close(self) -> None:
        self.pool.close(timeout=5.0)


class PostgresWriter:
    """SqliteWriter's contract on PostgreSQL: submit() never waits, a thread writes batches every
    50 ms. A batch PostgreSQL refused for being unreachable is kept and written again once it
    answers (the rows of instances Orthanc acknowledged are never dropped); statements must
    therefore be idempotent (the history's rows carry their own key)."""

    def __init__(self, database: SharedDatabase, name: str):
        self.database = database
        self._pending: collections.deque[tuple] = collections.deque()
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._write_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, sql: str, params: tuple) -> None:
        self._pending.append((pg(sql), params))

    def fetch(self, sql: str, params: tuple = ()) -> list[tuple]:
        self.flush()
        return self.database.fetch(sql, params)

    def _write_forever(self) -> None:
        failures = 0
        batch: list[tuple] = []
        while True:
            flushes = []
            while self._pending and len(batch) < 2000:
                sql, params = self._pending.popleft()
                if sql is None:
                    flushes.append(params)
                    break
                batch.append((sql, params))
            if batch:
                try:
                    self.database.run(lambda connection: [connection.cursor().executemany(sql, rows)
                                                          for sql, rows in statement_runs(batch)], timeout=2.0)
                    if failures:
                        log.warning("PostgreSQL answers again: %d pending rows written", len(batch))
                    batch, failures = [], 0
                except DATABASE_ERRORS as error:
                    if not failures:
                        log.warning("PostgreSQL cannot be written (%s): %d rows kept, writing again until it "
                                    "answers", type(error).__name__, len(batch))
                    failures += 1
                    for done in flushes:  # the reader gets an error of its own from PostgreSQL
                        done.set()
                    if self._closing.is_set() and failures > 3:
                        log.error("%d rows could not be written to PostgreSQL before Orthanc stopped", len(batch))
                        return
                    time.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1])
                    continue
            for done in flushes:
                done.set()
            if self._closing.is_set() and not self._pending:
                return
            if not flushes and len(batch) < 2000:
                self._wake.wait(ROUND_SECONDS)
                self._wake.clear()

    def flush(self, timeout: float = 10.0) -> None:
        done = threading.Event()
        self._pending.append((None, done))
        self._wake.set()
        done.wait(timeout if self._thread.is_alive() else 0)

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout=10)

