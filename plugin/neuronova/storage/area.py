"""Orthanc's storage area, kept by the plugin: Orthanc's usual folder layout under StorageDirectory,
DICOM attachments written as verified containers (HTJ2K), every read answering the received bytes.

Orthanc calls these methods from many threads at once, with no lock of its own; they never call the
SDK. A file appears under its final name only once complete (written aside, then renamed), so a
crash never leaves a half-written file where a read would find it. A per-file lock orders the
background replacement of a plain file with its container against the file's removal.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import uuid as uuid_module
from dataclasses import dataclass
from typing import Callable

from . import container
from .container import PackSettings, Packed
from ..per_thread import PerThread
from .layout import LayoutError, read_meta
from .ledger import Ledger

log = logging.getLogger("neuronova.storage")


class StorageError(Exception):
    """A storage operation that failed; Orthanc turns it into a refused instance or a failed read."""


@dataclass(frozen=True)
class StorageSettings:
    root: str  # Orthanc's StorageDirectory
    when: str = "ingest"  # "ingest": compressed before it reaches the disk; "background": soon after
    sync: bool = False  # "SyncStorageArea": fsync each file before it is renamed into place (Orthanc 1.10's
    # own storage does not: measured with strace); a rename never exposes a partial file in any case
    pack: PackSettings = PackSettings()


@dataclass(frozen=True)
class Written:
    """What the last create() of a DICOM attachment did, for the ingest history of its instance."""

    uuid: str
    received_bytes: int
    stored_bytes: int
    packed: Packed


class StorageArea:
    def __init__(self, settings: StorageSettings, ledger: Ledger):
        self.settings = settings
        self.ledger = ledger
        # background mode: hands the uuid to the workers, from the stored-instance callback (orthanc_adapter)
        self.enqueue: Callable[[str], None] | None = None
        self._locks = [threading.Lock() for _ in range(64)]
        self._written: PerThread[Written] = PerThread()
        self._folders: set[str] = set()
        self.last_write = 0.0
        self.full_at = -1e9  # when a write last failed for want of space (monotonic clock)

    def path(self, uuid: str) -> str:
        """Orthanc's own FilesystemStorage layout: ab/cd/abcd...; an administrator can switch back."""
        if len(uuid) < 4 or not all(c in "0123456789abcdef-" for c in uuid):
            raise StorageError(f"not an attachment uuid: {uuid!r}")
        return os.path.join(self.settings.root, uuid[0:2], uuid[2:4], uuid)

    def lock(self, uuid: str) -> threading.Lock:
        return self._locks[hash(uuid) % len(self._locks)]

    # -- the three callbacks ------------------------------------------------

    def create(self, uuid: str, is_dicom: bool, data: bytes) -> None:
        self.last_write = time.monotonic()  # the background work waits while ingest goes on
        packed = None
        stored = data
        # A received file that would read as a container (one copied out of a storage area) is never
        # written as it is, whatever the mode: pack wraps it in a container that gives it back verbatim.
        if is_dicom and self.settings.when == "ingest" or container.is_container(data):
            packed = container.pack(data, self.settings.pack)
            stored = packed.data if packed.data is not None else data
        self.write(uuid, stored)
        if is_dicom:
            if packed is None:
                syntax = received_syntax(data)
                packed = Packed(None, "pending", "", syntax, syntax, "")
                self.ledger.record(uuid, len(data), len(stored), "", "pending")  # enqueued once stored
            else:
                state = "packed" if packed.data is not None else "plain"
                self.ledger.record(uuid, len(data), len(stored), packed.syntax_after, state)
            self._written.set(Written(uuid, len(data), len(stored), packed))

    def read(self, uuid: str) -> bytes:
        try:
            with open(self.path(uuid), "rb") as stored_file:
                stored = stored_file.read()
        except FileNotFoundError:
            raise StorageError(f"attachment {uuid} is missing from the storage area") from None
        if not container.is_container(stored):
            return stored  # a plain file: written as received, or by Orthanc before the plugin
        try:
            return container.restore(stored)
        except container.ContainerError as error:
            log.error("attachment %s cannot be restored: %s", uuid, error)
            raise StorageError(f"attachment {uuid} cannot be restored: {error}") from None

    def remove(self, uuid: str) -> None:
        with self.lock(uuid):
            try:
                os.remove(self.path(uuid))
            except FileNotFoundError:
                pass
        self.ledger.forget(uuid)

    # -- shared with the background work ------------------------------------

    def write(self, uuid: str, data: bytes) -> None:
        """Write aside and rename into place: readers see the old file or the whole new one."""
        final = self.path(uuid)
        folder = os.path.dirname(final)
        if folder not in self._folders:  # 65536 folders at most: a set spares a mkdir per file
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        temporary = f"{final}.{uuid_module.uuid4().hex[:8]}.tmp"
        try:
            with open(temporary, "wb") as out:
                out.write(data)
                if self.settings.sync:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(temporary, final)
        except OSError as error:
            _remove_quietly(temporary)
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                self.full_at = time.monotonic()
                log.error("the storage area's disk is full (%s): instances are refused until space is freed",
                          self.settings.root)
            raise StorageError(f"cannot write attachment {uuid}: {error.strerror or error}") from None

    def disk_full(self, within_seconds: float = 10.0) -> bool:
        """Did a write fail for want of space just now? (the reason Orthanc does not tell its clients)"""
        return time.monotonic() - self.full_at < within_seconds

    def take_written(self) -> Written | None:
        """What this thread's last DICOM create() did (Orthanc stores an instance on one thread)."""
        return self._written.pop()

    def replace_with_container(self, uuid: str, data: bytes) -> bool:
        """Background: swap a plain file for its verified container, unless it was removed meanwhile."""
        final = self.path(uuid)
        with self.lock(uuid):
            if not os.path.exists(final):
                return False
            self.write(uuid, data)
        return True


def received_syntax(data: bytes) -> str:
    """The file's transfer syntax, for the history of a file compressed later ("" when unreadable)."""
    try:
        return read_meta(data).syntax
    except LayoutError:
        return ""


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
