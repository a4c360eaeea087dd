"""One PostgreSQL database for every Orthanc of a cluster: a connection pool, the schema created
under an advisory lock (servers may start together), and a writer that never loses a row.

psycopg 3 with psycopg-pool: connections in autocommit, each unit of work in its own transaction.
SQL is written with SQLite's "?" marks where it is shared with the SQLite backend (`pg`)."""

from __future__ import annotations

import logging
import time

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ..batch_writer import BatchWriter, statement_runs

log = logging.getLogger("neuronova.shared")

SCHEMA_LOCK = 0x4E4E5347  # "NNSG": pg_advisory_xact_lock key of the plugin's schema and seeding
DATABASE_ERRORS = (psycopg.Error, PoolTimeout)


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


class PostgresWriter(BatchWriter):
    """SqliteWriter's contract on PostgreSQL: submit() never waits, a thread writes batches every
    50 ms. A batch PostgreSQL refused for being unreachable is kept and written again once it
    answers (the rows of instances Orthanc acknowledged are never dropped); statements must
    therefore be idempotent (the history's rows carry their own key)."""

    def __init__(self, database: SharedDatabase, name: str):
        self.database = database
        self._failing = False
        super().__init__(name, flush_timeout=10.0)

    def submit(self, sql: str, params: tuple) -> None:
        super().submit(pg(sql), params)

    def fetch(self, sql: str, params: tuple = ()) -> list[tuple]:
        self.flush()
        return self.database.fetch(sql, params)

    def _write(self, batch: list[tuple]) -> bool:
        try:
            self.database.run(lambda connection: [connection.cursor().executemany(sql, rows)
                                                  for sql, rows in statement_runs(batch)], timeout=2.0)
        except DATABASE_ERRORS as error:
            if not self._failing:
                log.warning("PostgreSQL cannot be written (%s): %d rows kept, writing again until it "
                            "answers", type(error).__name__, len(batch))
            self._failing = True
            return False
        if self._failing:
            log.warning("PostgreSQL answers again: %d pending rows written", len(batch))
        self._failing = False
        return True

    def _abandon(self, batch: list[tuple]) -> None:
        log.error("%d rows could not be written to PostgreSQL before Orthanc stopped", len(batch))

