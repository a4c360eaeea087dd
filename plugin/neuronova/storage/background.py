"""Background compression: files stored as received (Transcoding.When "background") are compressed
soon after by worker threads, and one job compresses what a PACS stored before it adopted the plugin.

Ingest goes first: the workers pause while files are being stored (until 0.3 s after the last one),
since Python's GIL is shared and Orthanc's ingest callbacks wait for it under their lock; and they run
at a lower scheduling priority than Orthanc's own threads. A file is replaced by its
verified container atomically (area.replace_with_container); reads meanwhile get the plain file.
The adoption job's state is kept in the ledger, so a restart resumes it.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

from . import container
from .area import StorageArea, StorageError
from .ledger import Ledger

log = logging.getLogger("neuronova.storage")

ADOPTION_JOB = "adopt-existing-storage"
_STALE_TEMPORARY_SECONDS = 3600
_INGEST_QUIET_SECONDS = 0.3  # how long after the last stored file the background work resumes


@dataclass(frozen=True)
class BackgroundSettings:
    threads: int = 2  # they wait while files are being stored: both cores of a small server once it is idle
    max_per_second: float = 0.0  # 0: as fast as the workers go
    nice: int = 10  # how much lower than Orthanc's threads the workers are scheduled


@dataclass
class JobProgress:
    state: str = "idle"  # idle | counting | running | done | failed
    total: int = 0
    scanned: int = 0
    compressed: int = 0
    already: int = 0  # containers already, or known to the ledger as compressed
    kept: int = 0  # stored as received (no pixels, compressed syntax, ...)
    failed: int = 0
    started: float = 0.0
    finished: float = 0.0
    error: str = ""

    def to_json(self) -> dict:
        elapsed = (self.finished or time.time()) - self.started if self.started else 0.0
        return {**self.__dict__, "percent": round(100.0 * self.scanned / self.total, 1) if self.total else 0.0,
                "elapsed_seconds": round(elapsed, 1),
                "files_per_second": round(self.scanned / elapsed, 1) if elapsed > 0 else 0.0}


class BackgroundCompressor:
    def __init__(self, area: StorageArea, ledger: Ledger, settings: BackgroundSettings,
                 compressed: Callable[[str, int, str], None] = lambda uuid, size, syntax: None):
        self.area = area
        self.ledger = ledger
        self.settings = settings
        self._compressed = compressed  # (uuid, stored bytes, syntax): the history learns the new size
        self._queue: queue.Queue[str] = queue.Queue()
        self._stopping = threading.Event()
        self._interval_lock = threading.Lock()
        self._next_slot = 0.0
        self.job = JobProgress()
        self._job_lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self.settings.threads):
            worker = threading.Thread(target=self._work, name=f"neuronova-background-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)
        for uuid in self.ledger.pending():  # left by a restart
            self.enqueue(uuid)
        if self.ledger.job_state(ADOPTION_JOB) == "running":
            log.info("resuming the compression of the existing storage")
            self.start_adoption()

    def stop(self) -> None:
        self._stopping.set()

    def enqueue(self, uuid: str) -> None:
        self._queue.put(uuid)

    def backlog(self) -> int:
        return self._queue.qsize()

    # -- the queue of files stored as received ------------------------------

    def _work(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.settings.nice)
        except (OSError, AttributeError):
            pass  # then the workers compete with ingest on equal terms
        while not self._stopping.is_set():
            try:
                uuid = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.compress(uuid)
            except Exception:
                log.exception("background compression of attachment %s failed; it stays as received", uuid)
            finally:
                self._queue.task_done()

    def _throttle(self) -> None:
        # Ingest first: Python's GIL is shared, and Orthanc's ingest callbacks wait for it under a lock
        while time.monotonic() - self.area.last_write < _INGEST_QUIET_SECONDS and not self._stopping.is_set():
            time.sleep(_INGEST_QUIET_SECONDS / 2)
        if self.settings.max_per_second <= 0:
            return
        with self._interval_lock:
            now = time.monotonic()
            wait = self._next_slot - now
            self._next_slot = max(now, self._next_slot) + 1.0 / self.settings.max_per_second
        if wait > 0:
            time.sleep(wait)

    def compress(self, uuid: str) -> str:
        """Compress one stored file if it is plain: 'compressed', 'already', 'kept' or 'gone'."""
        self._throttle()
        try:
            with open(self.area.path(uuid), "rb") as stored_file:
                stored = stored_file.read()
        except (FileNotFoundError, StorageError):
            self.ledger.forget(uuid)
            return "gone"
        if container.is_container(stored):
            recipe = container.read_recipe(stored)
            self.ledger.record(uuid, recipe.size, len(stored), recipe.syntax, "packed")
            return "already"
        packed = container.pack(stored, self.area.settings.pack)
        if packed.data is None:
            self.ledger.record(uuid, len(stored), len(stored), packed.syntax_before, "plain")
            return "kept"
        if not self.area.replace_with_container(uuid, packed.data):
            self.ledger.forget(uuid)
            return "gone"
        self.ledger.record(uuid, len(stored), len(packed.data), packed.syntax_after, "packed")
        self._compressed(uuid, len(packed.data), packed.syntax_after)
        return "compressed"

    # -- the job over the existing storage ----------------------------------

    def start_adoption(self) -> bool:
        """Start compressing every plain file of the storage folder; False when already running."""
        with self._job_lock:
            if self.job.state in ("counting", "running"):
                return False
            self.job = JobProgress(state="counting", started=time.time())
        self.ledger.set_job_state(ADOPTION_JOB, "running")
        threading.Thread(target=self._adopt, name="neuronova-adoption", daemon=True).start()
        return True

    def _adopt(self) -> None:
        job = self.job
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.settings.nice)
        except (OSError, AttributeError):
            pass
        try:
            job.total = sum(1 for _ in self._stored_files())
            job.state = "running"
            for uuid in self._stored_files():
                if self._stopping.is_set():
                    return  # the job stays "running" in the ledger: resumed at the next start
                job.scanned += 1
                if self.ledger.state(uuid) == "packed":
                    job.already += 1
                    continue
                try:
                    outcome = self.compress(uuid)
                except Exception as error:
                    job.failed += 1
                    log.warning("adoption: attachment %s stays as it is: %s", uuid, error)
                    continue
                if outcome == "compressed":
                    job.compressed += 1
                elif outcome == "already":
                    job.already += 1
                elif outcome == "kept":
                    job.kept += 1
            job.state = "done"
            log.info("existing storage compressed: %d files, %d compressed, %d already, %d kept, %d failed",
                     job.scanned, job.compressed, job.already, job.kept, job.failed)
        except Exception as error:
            job.state, job.error = "failed", str(error)
            log.exception("the compression of the existing storage stopped")
        finally:
            job.finished = time.time()
            if job.state in ("done", "failed"):
                self.ledger.set_job_state(ADOPTION_JOB, job.state)

    def _stored_files(self):
        """The attachment files in Orthanc's layout (ab/cd/uuid); stale temporary files are removed."""
        yield from stored_files(self.area.settings.root)


def stored_files(root: str):
    """uuid of every attachment file under root, in Orthanc's two-level layout."""
    for first in sorted(_hex_dirs(root)):
        for second in sorted(_hex_dirs(os.path.join(root, first))):
            folder = os.path.join(root, first, second)
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.name.endswith(".tmp"):
                    _remove_stale(entry)
                elif entry.is_file() and entry.name.startswith(first + second):
                    yield entry.name


def _hex_dirs(folder: str) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(folder)
                if entry.is_dir() and len(entry.name) == 2 and all(c in "0123456789abcdef" for c in entry.name)]
    except FileNotFoundError:
        return []


def _remove_stale(entry: os.DirEntry) -> None:
    """A temporary file left by a crash: never referenced, removed once surely abandoned."""
    try:
        if time.time() - entry.stat().st_mtime > _STALE_TEMPORARY_SECONDS:
            os.remove(entry.path)
    except OSError:
        pass
