"""Automatic patient reconciliation: what the EMR says an incoming instance's patient is.

Pure decisions (no DICOM rewriting here): the ingest pipeline applies them. Lookups are cached
for the life of a study's arrival, so a 500-image series costs one EMR lookup, and no study is
ever split across patients: a study already stored under one patient keeps it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from .dicom.assign import patient_tags
from .directory import Patient, PatientDirectory
from .errors import DirectoryUnavailable

ASSIGNED, COERCED, UNCHANGED, UNMATCHED, UNVERIFIED, CONFLICT, REJECTED = (
    "assigned", "coerced", "unchanged", "unmatched", "unverified", "conflict", "rejected")
ACTIONS = (ASSIGNED, COERCED, UNCHANGED, UNMATCHED, UNVERIFIED, CONFLICT, REJECTED)
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


#: The patient tags of the study already stored in the PACS under this StudyInstanceUID, or None.
StudyOwnerLookup = Callable[[str], "dict[str, str] | None"]


class StudyOwners:
    """Whose each study is: asked of the PACS once (two REST calls), then remembered. Every decision
    claims its study at once, under the reconciler's lock, so the next instance of a new study follows
    it without asking; a study Orthanc deletes is forgotten (its change callback calls forget_all)."""

    def __init__(self, lookup: StudyOwnerLookup):
        self._lookup = lookup
        self._owners: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def __call__(self, study_uid: str) -> dict[str, str] | None:
        with self._lock:
            owner = self._owners.get(study_uid)
        if owner is not None:
            return owner
        owner = self._lookup(study_uid)
        if owner is not None:
            with self._lock:
                self._owners.setdefault(study_uid, owner)
        return owner

    def claim(self, study_uid: str, tags: dict[str, str]) -> None:
        if study_uid:
            with self._lock:
                self._owners.setdefault(study_uid, dict(tags))

    def forget_all(self) -> None:
        with self._lock:
            self._owners.clear()


@dataclass
class _Arrival:
    expires: float
    patient: Patient | None
    unavailable: str  # why the EMR could not answer, or ""


class Reconciler:
    def __init__(self, directory: PatientDirectory, settings: ReconcileSettings, study_owner: StudyOwnerLookup,
                 clock: Callable[[], float] = time.monotonic):
        self.directory = directory
        self.settings = settings
        self.study_owners = StudyOwners(study_owner)
        self._study_owner = self.study_owners
        self._clock = clock
        self._lock = threading.Lock()
        self._arrivals: dict[tuple[str, str, str], _Arrival] = {}
        self.lookups = 0
        self.lookup_errors = 0

    def decide(self, identity: Identity) -> Decision:
        with self._lock:  # decisions about one study must not interleave
            decision = self._decide(identity)
            self._claim(identity, decision)
            return decision

    def _claim(self, identity: Identity, decision: Decision) -> None:
        """The study is this decision's patient's from now on (StudyOwners remembers the first claim)."""
        if decision.action != REJECTED:
            self.study_owners.claim(identity.study_uid, decision.target or identity.tags())

    def decide_assigned(self, identity: Identity) -> Decision:
        """A person chose this instance's patient: accepted, unless its study is stored under another
        patient (following would overrule the person, storing would split the study)."""
        with self._lock:
            owner = self._study_owner(identity.study_uid)
            if owner is not None and owner["PatientID"] != identity.patient_id:
                return Decision(REJECTED, None, (
                    f"study {identity.study_uid} is already stored under patient {owner['PatientID']}: "
                    "assign the whole study to one patient (delete the stored study first to move it)"))
            decision = Decision(ASSIGNED, None)
            self._claim(identity, decision)
            return decision

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

        # The PACS is the truth: a study deleted there has no owner any more (StudyOwners forgets it).
        owner = self._study_owner(identity.study_uid)
        if owner is None or owner["PatientID"] == decision.patient_after(identity):
            return decision
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
        except DirectoryUnavailable as error:
            self.lookup_errors += 1
            # Remembered briefly only: a down EMR is not asked (and waited for) once per image,
            # and the series goes back to verified reconciliation soon after the EMR returns.
            arrival = _Arrival(now + min(self.settings.cache_seconds, UNAVAILABLE_RETRY_SECONDS), None, str(error))
        self._forget_expired(now)
        self._arrivals[key] = arrival
        return arrival

    def _forget_expired(self, now: float) -> None:
        for key in [key for key, arrival in self._arrivals.items() if arrival.expires <= now]:
            del self._arrivals[key]
