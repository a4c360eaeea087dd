"""A statement writer that never makes Orthanc's callbacks wait for a database: submit() is a deque
append (atomic, no lock, no wake-up per statement: a queue.Queue's notify was a tenth of the plugin's
GIL time under load), and one thread writes what was submitted in rounds of ROUND_SECONDS, at once for
a reader that flushes. SqliteWriter and shared_state's PostgresWriter differ only in how they write a
batch and what they do when it fails."""

from __future__ import annotations

import collections
import threading
import time

ROUND_SECONDS = 0.05  # rounds, not a wake-up per statement: each wake-up is a GIL hand-off under load
BATCH_ROWS = 2000
RETRY_SECONDS = (0.1, 0.2, 0.5, 1.0)
TRIES_WHEN_CLOSING = 3


class BatchWriter:
    """Subclasses write a batch in `_write(batch)`: True when it is done with (written, or given up),
    False to keep it and write it again after a pause (RETRY_SECONDS, growing); once close() was
    called, a batch that failed more than TRIES_WHEN_CLOSING times in a row is left unwritten."""

    def __init__(self, name: str, flush_timeout: float):
        self._flush_timeout = flush_timeout
        self._pending: collections.deque[tuple] = collections.deque()  # (sql, params) or (None, Event)
        self._closing = threading.Event()
        self._wake = threading.Event()  # flush() and close() do not wait for the next round
        self._thread = threading.Thread(target=self._write_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, sql: str, params: tuple) -> None:
        self._pending.append((sql, params))

    def _write(self, batch: list[tuple]) -> bool:
        raise NotImplementedError

    def _abandon(self, batch: list[tuple]) -> None:
        """Called once when close() gives up on a batch that cannot be written."""

    def _finish(self) -> None:
        """Called on the writer's thread after the last batch."""

    def _write_forever(self) -> None:
        batch: list[tuple] = []
        failures = 0
        while True:
            flushes = []
            while self._pending and len(batch) < BATCH_ROWS:
                sql, params = self._pending.popleft()
                if sql is None:
                    flushes.append(params)
                    break  # what came before it is written first
                batch.append((sql, params))
            if batch and not self._write(batch):
                failures += 1
                for done in flushes:  # the reader gets an error of its own from the database
                    done.set()
                if self._closing.is_set() and failures > TRIES_WHEN_CLOSING:
                    self._abandon(batch)
                    return
                time.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1])
                continue
            filled = len(batch) >= BATCH_ROWS
            batch, failures = [], 0
            for done in flushes:
                done.set()
            if self._closing.is_set() and not self._pending:
                self._finish()
                return
            if not flushes and not filled:  # a round every ROUND_SECONDS, at once for a reader waiting
                self._wake.wait(ROUND_SECONDS)
                self._wake.clear()

    def flush(self) -> None:
        """Wait until every statement submitted so far is written (or its write failed)."""
        done = threading.Event()
        self._pending.append((None, done))
        self._wake.set()
        done.wait(self._flush_timeout if self._thread.is_alive() else 0)

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout=10)


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
