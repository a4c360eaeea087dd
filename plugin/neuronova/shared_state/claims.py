"""Study claims for a cluster: one row per StudyInstanceUID in PostgreSQL, the first claim wins on
every server, and each server caches the claims it uses so that a series costs one round trip.

Claiming is one statement, INSERT ... ON CONFLICT (study_uid) DO UPDATE ... RETURNING: it answers
the row that won, whether this server made it or another did a microsecond before (PostgreSQL
serializes the two inserts on the unique index), so two servers deciding one new study agree.

A deleted study releases its claim for the cluster (the server whose Orthanc deleted it removes
the row and sends NOTIFY in the same transaction). The other servers must not go on following the
released claim from their cache, so a cached claim is used only
- while this server's LISTEN connection is up: each notification drops that study from the cache,
  and the whole cache is dropped whenever the connection is (re)made (notifications sent while it
  was down are lost); and
- for RECHECK_SECONDS after it was last read from the row: a study whose instances come after a
  gap is read again (also covers a notification still on its way).
A claim that cannot be read or made (PostgreSQL unreachable) raises ClaimsUnavailable: the
instance is refused with a status its sender retries (C-STORE 0xA700, HTTP 503), never stored blind.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from typing import Callable

import psycopg

from ..errors import StudyBusy
from ..reconcile import OWNERS_LOAD_WAIT_SECONDS, OwnersNotLoaded, orthanc_study_id
from .database import DATABASE_ERRORS, SharedDatabase

log = logging.getLogger("neuronova.shared")

CHANNEL = "neuronova_claims"
STALE_MINUTES = 10
_TAGS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
SCHEMA = ("CREATE TABLE IF NOT EXISTS study_claims (study_uid TEXT PRIMARY KEY, orthanc_study_id TEXT NOT NULL, "
          "patient_id TEXT NOT NULL, patient_name TEXT NOT NULL, birth_date TEXT NOT NULL, sex TEXT NOT NULL, "
          "server TEXT NOT NULL, claimed_at TIMESTAMPTZ NOT NULL DEFAULT now())",
          "CREATE INDEX IF NOT EXISTS study_claims_by_orthanc_id ON study_claims(orthanc_study_id)",
          # the Patient IDs a person moved each study away from: its later instances that still carry one follow it
          "CREATE TABLE IF NOT EXISTS study_moves (study_uid TEXT NOT NULL, patient_id TEXT NOT NULL, "
          "PRIMARY KEY (study_uid, patient_id))")
_CLAIM = ("INSERT INTO study_claims (study_uid, orthanc_study_id, patient_id, patient_name, birth_date, sex, "
          "server) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (study_uid) DO UPDATE SET study_uid = "
          "excluded.study_uid RETURNING patient_id, patient_name, birth_date, sex")
_BACKFILL = _CLAIM.replace("DO UPDATE SET study_uid = excluded.study_uid RETURNING patient_id, patient_name, "
                           "birth_date, sex", "DO NOTHING")
_RELEASE = "DELETE FROM study_claims WHERE orthanc_study_id = %s RETURNING study_uid"
_REASSIGN = _CLAIM.replace("DO UPDATE SET study_uid = excluded.study_uid", (
    "DO UPDATE SET orthanc_study_id = excluded.orthanc_study_id, patient_id = excluded.patient_id, "
    "patient_name = excluded.patient_name, birth_date = excluded.birth_date, sex = excluded.sex, "
    "server = excluded.server, claimed_at = now()"))
MOVE_LOCK = 0x4E4E4D56  # "NNMV": with hashtext(study_uid), the session advisory lock of a study's move


class ClaimsUnavailable(OwnersNotLoaded):
    """PostgreSQL does not answer: no decision (the sender retries)."""


class SharedStudyOwners:
    """reconcile.StudyOwners' contract (settle, claim, load, release) on PostgreSQL."""

    RECHECK_SECONDS = 5.0
    CACHED_CLAIM_SECONDS = RECHECK_SECONDS  # another server may follow a claim it cached this long: a move waits
    CLAIM_TIMEOUT_SECONDS = 2.0  # the received-instance callback waits at most this for a connection
    LOAD_WAIT_SECONDS = OWNERS_LOAD_WAIT_SECONDS  # its loader, too, waits for Orthanc to answer
    MAX_CACHED = 20000

    def __init__(self, database: SharedDatabase, server: str, clock: Callable[[], float] = time.monotonic):
        self._database = database
        self._server = server
        self._clock = clock
        self._cache: dict[str, tuple[dict[str, str], float]] = {}  # study_uid -> (owner, read at)
        self._lock = threading.Lock()
        self._loaded = threading.Event()
        self._listening = threading.Event()
        self._stopping = threading.Event()
        self._releases: collections.deque[str] = collections.deque()  # orthanc study IDs still to release
        self._kept: dict[str, int] = {}  # Orthanc study ID -> deletions to ignore (a study emptied to be stored again)
        self._listener = threading.Thread(target=self._listen_forever, name="neuronova-claims-listen", daemon=True)
        self._listener.start()

    def load(self, studies: dict[str, dict[str, str]]) -> None:
        """At each server's start: Orthanc's stored studies become claims where none exists (a cluster
        that ran before its claims moved to PostgreSQL; the first row of a study stays), and claims
        of studies that are not stored, made more than STALE_MINUTES ago, go: their instances were
        refused after the claim, or the study was deleted by a server that stopped before it could
        release it (what a single server's in-memory claims forget at its restart)."""
        rows = [self._row(uid, tags) for uid, tags in studies.items() if uid]
        for attempt in range(60):
            try:
                for start in range(0, len(rows), 1000):
                    self._database.run(lambda connection: connection.cursor().executemany(
                        _BACKFILL, rows[start:start + 1000]), timeout=10.0)
                pruned = self._database.run(lambda connection: connection.execute(
                    "DELETE FROM study_claims WHERE claimed_at < now() - make_interval(mins => %s) "
                    "AND NOT (study_uid = ANY(%s))", (STALE_MINUTES, list(studies))).rowcount, timeout=30.0)
                if pruned:
                    log.info("%d claims of studies no longer stored were released", pruned)
                break
            except DATABASE_ERRORS as error:
                log.warning("the stored studies cannot be claimed in PostgreSQL yet (%s): trying again",
                            type(error).__name__)
                time.sleep(1.0)
        self._loaded.set()

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    def _row(self, study_uid: str, tags: dict[str, str]) -> tuple:
        values = [tags.get(key, "") or "" for key in _TAGS]
        return (study_uid, orthanc_study_id(values[0], study_uid), *values, self._server)

    def _cached(self, study_uid: str) -> dict[str, str] | None:
        with self._lock:
            cached = self._cache.get(study_uid)
        if cached is None or not self._listening.is_set() or self._clock() - cached[1] > self.RECHECK_SECONDS:
            return None
        return cached[0]

    def settle(self, study_uid: str, tags: dict[str, str]) -> dict[str, str]:
        if not self._loaded.wait(self.LOAD_WAIT_SECONDS):
            raise OwnersNotLoaded("the patients of the stored studies are not read yet (Orthanc is starting)")
        if not study_uid:
            return tags
        owner = self._cached(study_uid)
        if owner is not None:
            return owner
        try:
            row = self._database.run(lambda connection: connection.execute(
                _CLAIM, self._row(study_uid, tags)).fetchone(), timeout=self.CLAIM_TIMEOUT_SECONDS)
        except DATABASE_ERRORS as error:
            raise ClaimsUnavailable(f"the study claims in PostgreSQL cannot be read ({type(error).__name__})") from None
        owner = dict(zip(_TAGS, row))
        self._remember(study_uid, owner)
        return owner

    def _remember(self, study_uid: str, owner: dict[str, str]) -> None:
        now = self._clock()
        with self._lock:
            if len(self._cache) >= self.MAX_CACHED:
                self._cache = {uid: entry for uid, entry in self._cache.items()
                               if now - entry[1] <= self.RECHECK_SECONDS}
            self._cache[study_uid] = (owner, now)

    def claim(self, study_uid: str, tags: dict[str, str]) -> None:
        """An instance stored as it came (Orthanc's own modify or anonymize): its study is its patient's."""
        try:
            self.settle(study_uid, tags)
        except OwnersNotLoaded as error:
            log.warning("a study stored as it came could not be claimed: %s", error)

    def release(self, orthanc_id: str) -> None:
        """Orthanc deleted this study: its row goes, and every server hears it (NOTIFY). Never waits:
        Orthanc's change callback calls it; the listening thread releases (again, until it worked).
        Orthanc signals a deletion to the server that made it: the deletions a move asked this server
        to ignore are counted here."""
        with self._lock:
            if self._kept.get(orthanc_id):
                self._kept[orthanc_id] -= 1
                return
        self._releases.append(orthanc_id)

    def _release_pending(self, connection: psycopg.Connection) -> None:
        while self._releases:
            orthanc_id = self._releases[0]
            with connection.transaction():
                for (study_uid,) in connection.execute(_RELEASE, (orthanc_id,)).fetchall():
                    connection.execute("DELETE FROM study_moves WHERE study_uid = %s", (study_uid,))
                    connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, study_uid))
                    self._forget(study_uid)
            self._releases.popleft()

    def _forget(self, study_uid: str) -> None:
        with self._lock:
            self._cache.pop(study_uid, None)

    def _listen_forever(self) -> None:
        """LISTEN on a connection of its own; releases go through it too (between notifications)."""
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._database.conninfo, **self._database.connection_options()) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    with self._lock:
                        self._cache.clear()  # what was released while nobody listened is not known
                    self._listening.set()
                    while not self._stopping.is_set():
                        self._release_pending(connection)
                        for notification in connection.notifies(timeout=0.2):
                            self._forget(notification.payload)
            except psycopg.Error as error:
                if self._listening.is_set() and not self._stopping.is_set():
                    log.warning("lost PostgreSQL's claim notifications (%s): claims are read from the database "
                                "until they are back", type(error).__name__)
            self._listening.clear()
            self._stopping.wait(0.5)

    # Moving a study to another patient (the worklist), for the whole cluster.

    def owner(self, study_uid: str) -> dict[str, str] | None:
        """The study's patient as this server knows it now (its cache), or None."""
        cached = self._cached(study_uid)
        return dict(cached) if cached is not None else None

    def moved_away_from(self, study_uid: str, patient_id: str) -> bool:
        """Asked only of an instance that disagrees with its study's patient: one round trip then."""
        try:
            row = self._database.run(lambda connection: connection.execute(
                "SELECT 1 FROM study_moves WHERE study_uid = %s AND patient_id = %s",
                (study_uid, patient_id)).fetchone(), timeout=self.CLAIM_TIMEOUT_SECONDS)
        except DATABASE_ERRORS as error:
            raise ClaimsUnavailable(f"the study moves in PostgreSQL cannot be read ({type(error).__name__})") from None
        return row is not None

    def reassign(self, study_uid: str, tags: dict[str, str]) -> None:
        """The study's claim becomes the new patient's, the old Patient ID is remembered as moved away
        from, and every server drops its cached claim (NOTIFY), in one transaction."""
        if not self._loaded.wait(self.LOAD_WAIT_SECONDS):
            raise OwnersNotLoaded("the patients of the stored studies are not read yet (Orthanc is starting)")

        def work(connection: psycopg.Connection) -> None:
            old = connection.execute("SELECT patient_id FROM study_claims WHERE study_uid = %s FOR UPDATE",
                                     (study_uid,)).fetchone()
            if old is not None and old[0] != tags.get("PatientID", ""):
                connection.execute("INSERT INTO study_moves (study_uid, patient_id) VALUES (%s, %s) "
                                   "ON CONFLICT DO NOTHING", (study_uid, old[0]))
            connection.execute(_REASSIGN, self._row(study_uid, tags))
            connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, study_uid))
        try:
            self._database.run(work, timeout=self.CLAIM_TIMEOUT_SECONDS)
        except DATABASE_ERRORS as error:
            raise ClaimsUnavailable(
                f"the study claims in PostgreSQL cannot be written ({type(error).__name__})") from None
        self._forget(study_uid)

    def keep_through_deletion(self, orthanc_id: str) -> None:
        with self._lock:
            self._kept[orthanc_id] = self._kept.get(orthanc_id, 0) + 1

    @contextlib.contextmanager
    def moving(self, study_uid: str):
        """One move of a study at a time in the cluster: a session advisory lock, held while it runs."""
        try:
            with self._database.pool.connection(timeout=self.CLAIM_TIMEOUT_SECONDS) as connection:
                (taken,) = connection.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                                              (MOVE_LOCK, study_uid)).fetchone()
                if not taken:
                    raise StudyBusy(f"study {study_uid} is being moved on another server: try again once "
                                          "that move has finished")
                try:
                    yield
                finally:
                    _unlock_move(connection, study_uid)
        except DATABASE_ERRORS as error:
            raise ClaimsUnavailable(
                f"the study's move cannot be locked in PostgreSQL ({type(error).__name__})") from None

    def stop(self) -> None:
        self._stopping.set()
        self._listener.join(timeout=2)


def _unlock_move(connection: psycopg.Connection, study_uid: str) -> None:
    """Failing to unlock loses nothing: PostgreSQL frees a session's locks with its connection."""
    try:
        connection.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (MOVE_LOCK, study_uid))
    except DATABASE_ERRORS as error:
        log.warning("a study's move lock could not be released (%s): it goes with the connection",
                    type(error).__name__)
