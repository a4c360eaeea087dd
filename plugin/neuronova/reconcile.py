"""Automatic patient reconciliation: what the EMR says an incoming instance's patient is.

Pure decisions (no DICOM rewriting here): the ingest pipeline applies them. Lookups are cached
for the life of a study's arrival, so a 500-image series costs one EMR lookup, and no study is
ever split across patients: a study already stored under one patient keeps it.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .dicom.assign import patient_tags
from .directory import Patient, PatientDirectory
from .errors import DirectoryUnavailable

ASSIGNED, COERCED, UNCHANGED, UNMATCHED, UNVERIFIED, CONFLICT, REJECTED = (
    "assigned", "coerced", "unchanged", "unmatched", "unverified", "conflict", "rejected")
RECOVERED = "recovered"  # a row written at start for an instance stored just before a crash (history.py)
MOVED = "moved"  # a person moved the instance's study to a patient (worklist/move.py)
ACTIONS = (ASSIGNED, COERCED, UNCHANGED, UNMATCHED, UNVERIFIED, CONFLICT, REJECTED, RECOVERED, MOVED)
UNAVAILABLE_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class ReconcileSettings:
    enabled: bool = True
    unknown_patient: str = "accept"  # or "reject"
    study_conflict: str = "follow"  # follow the stored study's patient, or "reject"
    cache_seconds: float = 600.0  # how long a study's arrival keeps its lookups
    reject_status: int = 0xC000  # DIMSE status a modality receives for a rejected instance


@dataclass(frozen=True)
class Identity:
    """What an incoming instance says about its patient and study."""

    patient_id: str
    issuer: str
    name: str
    birth_date: str
    sex: str
    study_uid: str

    def tags(self) -> dict[str, str]:
        return {"PatientID": self.patient_id, "PatientName": self.name,
                "PatientBirthDate": self.birth_date, "PatientSex": self.sex}


@dataclass(frozen=True)
class Decision:
    action: str
    target: dict[str, str] | None  # the four patient tags to write; None leaves the instance as it is
    reason: str = ""

    def patient_after(self, identity: Identity) -> str:
        return self.target["PatientID"] if self.target else identity.patient_id




def orthanc_study_id(patient_id: str, study_uid: str) -> str:
    """Orthanc's identifier of a study: the SHA-1 of "PatientID|StudyInstanceUID", in groups of 8."""
    digest = hashlib.sha1(f"{patient_id}|{study_uid}".encode("utf-8", "replace")).hexdigest()
    return "-".join(digest[start:start + 8] for start in range(0, 40, 8))


OWNERS_LOAD_WAIT_SECONDS = 2.0  # short: the loader cannot finish while a received-instance callback waits for it


class OwnersNotLoaded(Exception):
    """Orthanc's stored studies are not read yet (the first moments after start): no decision."""


class StudyOwners:
    """Whose each study is, kept by the plugin so that deciding never asks Orthanc: the received-
    instance callback holds Orthanc's plugin lock, and HTTP requests wait while it runs (measured),
    so a callback that waits for a REST answer deadlocks; and on orthanc-python 4.0 an in-process
    call holds the GIL that a storage-area removal under Orthanc's index lock waits for. Loaded from
    Orthanc's stored studies once Orthanc answers (load), claimed by each decision at once (the
    first claim of a study wins, under the reconciler's lock), released when Orthanc deletes the
    study (its change callback calls release). Until loaded, asking waits (LOAD_WAIT_SECONDS at most),
    then raises OwnersNotLoaded: the instance is refused with a status its sender retries, never stored
    blind. The wait is short: the loader cannot finish while a received-instance callback waits for it
    (an instance POSTed in the first moment after start waited the whole 30 s it was, then was refused:
    measured). One server's: several servers on one PostgreSQL share theirs
    (shared_state.claims.SharedStudyOwners)."""

    LOAD_WAIT_SECONDS = OWNERS_LOAD_WAIT_SECONDS
    CACHED_CLAIM_SECONDS = 0.0  # one server: no other server caches its claims

    def __init__(self, studies: dict[str, dict[str, str]] | None = None):
        self._owners: dict[str, dict[str, str]] = {}
        self._by_orthanc_id: dict[str, str] = {}
        self._early: list[tuple[str, dict[str, str]]] = []  # claims made before load (not decided ones)
        self._moved_from: dict[str, set[str]] = {}  # StudyInstanceUID -> Patient IDs a person moved it away from
        self._kept: dict[str, int] = {}  # Orthanc study ID -> deletions to ignore (a study emptied to be stored again)
        self._lock = threading.Lock()
        self._loaded = threading.Event()
        if studies is not None:
            self.load(studies)

    def load(self, studies: dict[str, dict[str, str]]) -> None:
        """The studies Orthanc holds, then the claims made meanwhile (the stored ones win)."""
        with self._lock:
            for study_uid, tags in [*studies.items(), *self._early]:
                self._claim(study_uid, tags)
            self._early.clear()
            self._loaded.set()

    @property
    def loaded(self) -> bool:
        """Have the stored studies' patients been read (until then instances are refused)?"""
        return self._loaded.is_set()

    def settle(self, study_uid: str, tags: dict[str, str]) -> dict[str, str]:
        """The study's patient once this claim is made: these tags if the study had none, else the
        first claim's. One step, so that two deciders of one new study agree."""
        self._loaded.wait(self.LOAD_WAIT_SECONDS)
        with self._lock:
            if not self._loaded.is_set():
                raise OwnersNotLoaded("the patients of the stored studies are not read yet (Orthanc is starting)")
            self._claim(study_uid, tags)
            return self._owners.get(study_uid, tags)

    def claim(self, study_uid: str, tags: dict[str, str]) -> None:
        """Claimed without a decision (an instance stored as it came): before load, kept for it."""
        with self._lock:
            if self._loaded.is_set():
                self._claim(study_uid, tags)
            else:
                self._early.append((study_uid, dict(tags)))

    def _claim(self, study_uid: str, tags: dict[str, str]) -> None:
        if study_uid and study_uid not in self._owners:
            self._owners[study_uid] = dict(tags)
            self._by_orthanc_id[orthanc_study_id(tags.get("PatientID", ""), study_uid)] = study_uid

    def owner(self, study_uid: str) -> dict[str, str] | None:
        """The study's patient as claimed now, or None (no waiting, no claim: what the worklist shows)."""
        with self._lock:
            owner = self._owners.get(study_uid)
            return dict(owner) if owner is not None else None

    def reassign(self, study_uid: str, tags: dict[str, str]) -> None:
        """The study moves to another patient (a correction): later instances follow the new one, and
        Orthanc deleting the study under its old patient no longer frees it."""
        self._loaded.wait(self.LOAD_WAIT_SECONDS)
        with self._lock:
            if not self._loaded.is_set():
                raise OwnersNotLoaded("the patients of the stored studies are not read yet (Orthanc is starting)")
            old = self._owners.get(study_uid)
            if old is not None:
                self._by_orthanc_id.pop(orthanc_study_id(old.get("PatientID", ""), study_uid), None)
                if old.get("PatientID") != tags.get("PatientID"):
                    self._moved_from.setdefault(study_uid, set()).add(old.get("PatientID", ""))
            self._owners[study_uid] = dict(tags)
            self._by_orthanc_id[orthanc_study_id(tags.get("PatientID", ""), study_uid)] = study_uid

    def moving(self, study_uid: str) -> contextlib.AbstractContextManager:
        """One move of a study at a time: the mover's own lock does it on one server."""
        return contextlib.nullcontext()

    def moved_away_from(self, study_uid: str, patient_id: str) -> bool:
        """Was the study moved away from this Patient ID (its later instances still carry it)?"""
        with self._lock:
            return patient_id in self._moved_from.get(study_uid, ())

    def keep_through_deletion(self, orthanc_id: str) -> None:
        """A correction empties this study to store it again at once under the same identifiers: the
        one deletion Orthanc signals for it must not free the study."""
        with self._lock:
            self._kept[orthanc_id] = self._kept.get(orthanc_id, 0) + 1

    def release(self, orthanc_id: str) -> None:
        """Orthanc deleted this study (its own identifier): its StudyInstanceUID is free again."""
        with self._lock:
            if self._kept.get(orthanc_id):
                self._kept[orthanc_id] -= 1
                return
            study_uid = self._by_orthanc_id.pop(orthanc_id, None)
            if study_uid is not None:
                self._owners.pop(study_uid, None)
                self._moved_from.pop(study_uid, None)


@dataclass
class _Arrival:
    expires: float
    patient: Patient | None
    unavailable: str  # why the EMR could not answer, or ""


class Reconciler:
    def __init__(self, directory: PatientDirectory, settings: ReconcileSettings, study_owners: StudyOwners,
                 clock: Callable[[], float] = time.monotonic):
        self.directory = directory
        self.settings = settings
        self.study_owners = study_owners
        self._clock = clock
        self._lock = threading.Lock()
        self._arrivals: dict[tuple[str, str, str], _Arrival] = {}
        self.lookups = 0
        self.lookup_errors = 0
        self._directory_down = False
        # Told when the EMR stops answering (False) and answers again (True); must not block: called under the lock.
        self.on_directory_state: Callable[[bool], None] = lambda available: None

    def decide(self, identity: Identity) -> Decision:
        with self._lock:  # decisions about one study must not interleave
            return self._decide(identity)

    def decide_assigned(self, identity: Identity) -> Decision:
        """A person chose this instance's patient: accepted, unless its study is stored under another
        patient (following would overrule the person, storing would split the study)."""
        with self._lock:
            owner = self.study_owners.settle(identity.study_uid, identity.tags())
            if owner["PatientID"] != identity.patient_id:
                return Decision(REJECTED, None, (
                    f"study {identity.study_uid} is already stored under patient {owner['PatientID']}: "
                    "assign the whole study to one patient (delete the stored study first to move it)"))
            return Decision(ASSIGNED, None)

    def _decide(self, identity: Identity) -> Decision:
        arrival = self._arrival(identity)
        if arrival.patient is not None:
            target = patient_tags(arrival.patient)
            decision = Decision(COERCED if target != identity.tags() else UNCHANGED, target,
                                f"EMR patient {arrival.patient.patient_id}")
        elif arrival.unavailable:
            decision = Decision(UNVERIFIED, None, f"EMR unavailable: {arrival.unavailable}")
        elif self.settings.unknown_patient == "reject":
            return Decision(REJECTED, None, f"patient {identity.patient_id!r} is not known to the EMR directory")
        else:
            decision = Decision(UNMATCHED, None, f"patient {identity.patient_id!r} is not known to the EMR directory")

        # Claimed with this decision's patient: the study's first claim wins (on every server of a cluster).
        owner = self.study_owners.settle(identity.study_uid, decision.target or identity.tags())
        if owner["PatientID"] == decision.patient_after(identity):
            return decision
        if self.study_owners.moved_away_from(identity.study_uid, decision.patient_after(identity)):
            return Decision(MOVED, owner, f"follows its study, moved to patient {owner['PatientID']}")
        if decision.action == UNVERIFIED:  # not a conflict: the EMR cannot say, the stored study can
            return Decision(UNVERIFIED, owner, f"{decision.reason}; follows the study's patient {owner['PatientID']}")
        reason = (f"study {identity.study_uid} is already stored under patient {owner['PatientID']}, "
                  f"this instance resolves to {decision.patient_after(identity)}")
        if self.settings.study_conflict == "reject":
            return Decision(REJECTED, None, reason)
        return Decision(CONFLICT, owner, reason)

    def _arrival(self, identity: Identity) -> _Arrival:
        key = (identity.study_uid, identity.patient_id, identity.issuer)
        now = self._clock()
        cached = self._arrivals.get(key)
        if cached is not None and cached.expires > now:
            if not cached.unavailable:
                cached.expires = now + self.settings.cache_seconds  # the arrival goes on
            return cached
        self.lookups += 1
        try:
            arrival = _Arrival(now + self.settings.cache_seconds,
                               self.directory.resolve(identity.patient_id, identity.issuer), "")
            if self._directory_down:  # the EMR answers again: what it could not verify is checked now
                self._directory_down = False
                self.on_directory_state(True)
        except DirectoryUnavailable as error:
            self.lookup_errors += 1
            if not self._directory_down:
                self._directory_down = True
                self.on_directory_state(False)
            # Remembered briefly only: a down EMR is not asked (and waited for) once per image,
            # and the series goes back to verified reconciliation soon after the EMR returns.
            arrival = _Arrival(now + min(self.settings.cache_seconds, UNAVAILABLE_RETRY_SECONDS), None, str(error))
        self._forget_expired(now)
        self._arrivals[key] = arrival
        return arrival

    def _forget_expired(self, now: float) -> None:
        for key in [key for key, arrival in self._arrivals.items() if arrival.expires <= now]:
            del self._arrivals[key]
