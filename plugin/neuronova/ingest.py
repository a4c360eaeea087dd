"""The ingest pipeline every instance goes through inside Orthanc, whatever its path: patient
identity before Orthanc stores it, the history row once it is stored. Compression is not here: it
happens in the storage area (storage/), where Orthanc's core never looks.

Orthanc 1.10 and 1.12 (measured) call, on the thread that stores one instance and in this order:
the received-instance callback (one instance at a time, under one plugin lock; it may modify the
instance), then for C-STORE the incoming C-STORE filter (same lock; it knows the calling AE title and
its answer other than 0 is the DIMSE status), then the storage area's create, then the
stored-instance callback (not called for AlreadyStored). So the received-instance callback
rewrites the identity on every path, the filter only refuses what reconciliation refused, and the
stored-instance callback writes the history row with what the storage area wrote. A thread-local
carries each instance's decision from one callback to the next.

What Orthanc itself makes at a user's request (modify, anonymize, merge, split: stored by its job
threads) is stored as asked: never reconciled. None of these callbacks calls Orthanc: study owners
are the plugin's own (reconcile.StudyOwners).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from dataclasses import dataclass, replace
from io import BytesIO
from typing import Callable

from pydicom import dcmread, dcmwrite
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from .dicom.assign import MODIFYING_SYSTEM, REASON_COERCE, assign_identity
from .history import HistoryEntry, IngestHistory
from .metrics import Metrics
from .per_thread import PerThread
from .reconcile import REJECTED, UNCHANGED, Decision, Identity, OwnersNotLoaded, Reconciler
from .storage.area import Written
from .storage.arrival import decode_htj2k_arrival
from .storage.layout import Meta, meta_or_none, text, top_level_values

log = logging.getLogger("neuronova.ingest")

_IDENTITY_TAGS = ["SOPInstanceUID", "StudyInstanceUID", "PatientID", "IssuerOfPatientID", "PatientName",
                  "PatientBirthDate", "PatientSex"]

CSTORE_ACCEPT = 0  # the incoming C-STORE filter's "store it"; other values are the DIMSE status
CSTORE_OUT_OF_RESOURCES = 0xA700  # PS3.4 "Refused: Out of Resources": the modality retries

KEEP, MODIFY, DISCARD = "keep", "modify", "discard"


_SOP_UID, _STUDY_UID = 0x00080018, 0x0020000D
_PATIENT_TAGS = {0x00100020: "patient_id", 0x00100021: "issuer", 0x00100010: "name", 0x00100030: "birth_date",
                 0x00100040: "sex"}
_WANTED = frozenset({_SOP_UID, _STUDY_UID, *_PATIENT_TAGS})


_DEFLATED_HEADER_BYTES = 8 * 1024 * 1024  # inflated to find the identity: a header is far smaller


def read_identity(dicom: bytes, meta: Meta | None) -> tuple[str, Identity]:
    """(SOP Instance UID, patient identity) from the header only. This runs in Orthanc's serialized
    received-instance callback: Explicit VR Little Endian ASCII headers are read by the storage
    walker, stopping after StudyInstanceUID; a deflated one the same way from the first 8 MB it
    inflates to (a 280 kB file can inflate to more than a gigabyte, its pixels after the identity);
    anything else by pydicom."""
    if meta is not None and meta.syntax == DeflatedExplicitVRLittleEndian:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        header = inflater.decompress(dicom[meta.end:], _DEFLATED_HEADER_BYTES)
        inflated = dicom[:meta.end] + header
        values = top_level_values(inflated, _WANTED, _STUDY_UID, replace(meta, syntax=ExplicitVRLittleEndian))
        if values is not None and _STUDY_UID not in values and len(header) == _DEFLATED_HEADER_BYTES:
            values = None  # an element before StudyInstanceUID runs past the first 8 MB: pydicom reads it all
    else:
        values = top_level_values(dicom, _WANTED, _STUDY_UID, meta)
    if values is not None and all(value.isascii() for value in values.values()):
        fields = {name: text(values.get(tag, b"")) for tag, name in _PATIENT_TAGS.items()}
        return text(values.get(_SOP_UID, b"")), Identity(study_uid=text(values.get(_STUDY_UID, b"")), **fields)
    dataset = dcmread(BytesIO(dicom), stop_before_pixels=True, specific_tags=_IDENTITY_TAGS)
    return str(dataset.get("SOPInstanceUID", "")), Identity(
        patient_id=str(dataset.get("PatientID", "") or ""),
        issuer=str(dataset.get("IssuerOfPatientID", "") or ""),
        name=str(dataset.get("PatientName", "") or ""),
        birth_date=str(dataset.get("PatientBirthDate", "") or ""),
        sex=str(dataset.get("PatientSex", "") or ""),
        study_uid=str(dataset.get("StudyInstanceUID", "") or ""),
    )


def rewrite_identity(dicom: bytes, tags: dict[str, str], reason: str = REASON_COERCE,
                     system: str = MODIFYING_SYSTEM) -> bytes:
    """Write the patient tags, with the audit item (COERCE when reconciled); pixels are copied untouched."""
    dataset = dcmread(BytesIO(dicom))
    assign_identity(dataset, tags, reason, system=system)
    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class Correction:
    """An instance stored again by a correction (worklist/move.py): written as `target` with this audit
    reason and system, recorded with `action`, `path` and `user`; never reconciled."""

    target: dict[str, str]
    action: str
    reason: str
    system: str
    path: str
    user: str = ""


@dataclass
class UploadOutcome:
    assigned: bool
    user: str = ""
    patient_id: str | None = None  # the stored Patient ID, once processed
    rejection: str | None = None  # why reconciliation refused it
    retry: bool = False  # refused for now: 503, the client retries


@dataclass
class _Pending:
    """One instance between the received-instance callback and the stored-instance callback."""

    sop: str
    entry: HistoryEntry
    rejection: str | None = None
    started: float = 0.0
    target: dict[str, str] | None = None  # the reconciled patient tags to write, when they change
    retry: bool = False  # refused for now (Orthanc is starting): the sender gets a status it retries
    by_filter: bool = False  # decided in the C-STORE filter (Orthanc calling it before the callback)
    awaiting_filter: bool = False  # decided by the received-instance callback for the filter that follows
    audit: tuple[str, str] = (REASON_COERCE, MODIFYING_SYSTEM)  # the audit item's reason and system

    def matches(self, dicom: bytes) -> bool:
        """Is this the instance decided? Its SOP Instance UID is in the file meta, near the start."""
        return bool(self.sop) and dicom.find(self.sop.encode("ascii", "replace"), 0, 4096) >= 0


class Ingest:
    def __init__(self, reconciler: Reconciler, history: IngestHistory, metrics: Metrics,
                 clock: Callable[[], float] = time.perf_counter):
        self.reconciler = reconciler
        self.history = history
        self.metrics = metrics
        self._clock = clock
        self._pending: PerThread[_Pending] = PerThread()
        self._lock = threading.Lock()
        self._uploads: dict[str, UploadOutcome] = {}  # SOP Instance UID -> what the upload route awaits
        self._corrections: dict[str, Correction] = {}  # SOP Instance UID -> the correction storing it again

    def expect_correction(self, sop_instance_uid: str, correction: Correction) -> None:
        """Called by a correction before it stores an instance again (see Correction)."""
        with self._lock:
            self._corrections[sop_instance_uid] = correction

    def forget_correction(self, sop_instance_uid: str) -> None:
        with self._lock:
            self._corrections.pop(sop_instance_uid, None)

    def expect_upload(self, sop_instance_uid: str, assigned: bool, user: str = "") -> "UploadOutcome":
        """Called by the upload route before it stores: the callback then records the instance as
        an upload (`assigned` when a person chose its patient) and fills in the outcome."""
        outcome = UploadOutcome(assigned, user)
        with self._lock:
            self._uploads[sop_instance_uid] = outcome
        return outcome

    def forget_upload(self, sop_instance_uid: str) -> None:
        with self._lock:
            self._uploads.pop(sop_instance_uid, None)

    def received(self, dicom: bytes, path: str, reconcile: bool = True) -> tuple[str, bytes | None]:
        """(KEEP / MODIFY / DISCARD, new bytes) for the received-instance callback; never raises.

        `reconcile` is False for what Orthanc made at a user's request (stored as asked)."""
        pending = self._pending.pop()
        started = self._clock()
        try:
            meta = meta_or_none(dicom)  # read once: this callback runs one instance at a time
            data = decode_htj2k_arrival(dicom, meta.syntax if meta else "")  # compressed again on disk
            if not (path == "dicom" and pending is not None and pending.by_filter and pending.matches(dicom)):
                pending = self._decide(data, path, reconcile, started, meta if data is dicom else meta_or_none(data))
            pending.awaiting_filter = path == "dicom" and not pending.by_filter
            rewritten = rewrite_identity(data, pending.target, *pending.audit) if pending.target else None
        except Exception:
            log.exception("Ingest of an instance received by %s failed; stored as received", path)
            return KEEP, None
        self._pending.set(pending)
        if pending.rejection is not None and path != "dicom":  # C-STORE: the filter answers the refusal
            self._finish(pending, None)
            return DISCARD, None
        if rewritten is not None:
            return MODIFY, rewritten
        return (MODIFY, data) if data is not dicom else (KEEP, None)

    def _decide(self, dicom: bytes, path: str, reconcile: bool, started: float, meta: Meta | None) -> _Pending:
        try:
            sop, identity = read_identity(dicom, meta)
        except Exception as error:  # Orthanc parsed it, pydicom cannot: store it as it came, say so
            entry = HistoryEntry(path, "", "", "", "", "", UNCHANGED, "", "", len(dicom), len(dicom), 0.0,
                                 f"header unreadable: {error}")
            return _Pending("", entry, started=started)
        with self._lock:
            upload = self._uploads.pop(sop, None)
            correction = self._corrections.pop(sop, None)
        if correction is not None:
            return self._corrected(sop, identity, correction, len(dicom), started)
        assigned = False
        if upload is not None:  # the upload route's own store (its token bypasses the HTTP filter)
            path, assigned, reconcile = "upload", upload.assigned, True
        action, reason, patient_after, decision, target = UNCHANGED, "", identity.patient_id, None, None
        retry = False
        try:
            if assigned:
                decision = self.reconciler.decide_assigned(identity)
            elif reconcile and self.reconciler.settings.enabled:
                decision = self.reconciler.decide(identity)
            else:  # stored as it came: its study is still its patient's from now on
                self.reconciler.study_owners.claim(identity.study_uid, identity.tags())
        except OwnersNotLoaded as error:  # refused with a status the sender retries: never stored blind
            decision, retry = Decision(REJECTED, None, f"{error}: retry"), True
        if decision is not None:
            action, reason, patient_after = decision.action, decision.reason, decision.patient_after(identity)
            if decision.action != REJECTED and decision.target and decision.target != identity.tags():
                log.info("SOP Instance %s: %s to the EMR patient (%s)", sop, decision.action, path)
                target = decision.target
        rejected = action == REJECTED
        entry = HistoryEntry(
            path=path, remote="", sop_instance_uid=sop, study_instance_uid=identity.study_uid,
            patient_before=identity.patient_id, patient_after="" if rejected else patient_after, action=action,
            syntax_before="", syntax_after="", bytes_before=len(dicom), bytes_after=0, duration_ms=0.0,
            error=reason if action in (REJECTED, "unverified") else "", user_name=upload.user if upload else "")
        if upload is not None:
            upload.patient_id, upload.rejection = entry.patient_after or None, reason if rejected else None
            upload.retry = retry
        return _Pending(sop, entry, reason if rejected else None, started, target, retry=retry)

    def _corrected(self, sop: str, identity: Identity, correction: Correction, size: int, started: float) -> _Pending:
        """An instance a correction stores again: its new identity, never reconciled (the correction
        moved the study's claim first)."""
        entry = HistoryEntry(
            path=correction.path, remote="", sop_instance_uid=sop, study_instance_uid=identity.study_uid,
            patient_before=identity.patient_id, patient_after=correction.target["PatientID"], action=correction.action,
            syntax_before="", syntax_after="", bytes_before=size, bytes_after=0, duration_ms=0.0,
            user_name=correction.user)
        target = correction.target if correction.target != identity.tags() else None
        return _Pending(sop, entry, started=started, target=target, audit=(correction.reason, correction.system))

    def cstore_filter(self, instance_data: Callable[[], bytes], calling_aet: str) -> int:
        """The DIMSE answer for one C-STORE instance: 0, or the refusal status. Orthanc 1.10 calls the
        received-instance callback first (its decision is used, the instance is not copied again);
        were the filter called first, it decides here and the callback uses that decision."""
        pending = self._pending.get()
        if pending is None or not pending.awaiting_filter:
            try:
                dicom = instance_data()
                pending = self._decide(dicom, "dicom", True, self._clock(), meta_or_none(dicom))
            except Exception:
                log.exception("Ingest of an instance from %s failed; stored as received", calling_aet)
                return CSTORE_ACCEPT
            pending.by_filter = True
            self._pending.set(pending)
        pending.awaiting_filter = False
        pending.entry = replace(pending.entry, remote=calling_aet)
        if pending.rejection is None:
            return CSTORE_ACCEPT
        log.warning("C-STORE of SOP Instance %s from %s refused (%s)", pending.sop, calling_aet,
                    "retry later" if pending.retry else "reconciliation")
        log.debug("refused: %s", pending.rejection)  # names the patient: DEBUG only
        self._pending.pop()
        self._finish(pending, None)
        return CSTORE_OUT_OF_RESOURCES if pending.retry else self.reconciler.settings.reject_status

    def stored(self, written: Written | None, remote_aet: Callable[[], str] = str) -> None:
        """The stored-instance callback: the history row, with what the storage area wrote. Orthanc is
        asked for the sender's AE title only for a C-STORE the filter has not named (an SDK call)."""
        pending = self._pending.pop()
        if pending is None:  # stored without the received-instance callback (cannot happen in 1.10 / 1.12)
            return
        if pending.entry.path == "dicom" and not pending.entry.remote:
            pending.entry = replace(pending.entry, remote=remote_aet())
        self._finish(pending, written)

    def _finish(self, pending: _Pending, written: Written | None) -> None:
        entry = pending.entry
        if written is not None:
            packed = written.packed
            entry = replace(entry, attachment=written.uuid, bytes_before=written.received_bytes,
                            bytes_after=written.stored_bytes, syntax_before=packed.syntax_before,
                            syntax_after=packed.syntax_after or packed.syntax_before,
                            error=entry.error or (packed.reason if packed.outcome == "failed" else ""))
        entry = replace(entry, duration_ms=round((self._clock() - pending.started) * 1000, 3))
        self.history.record(entry)
        self.metrics.count(written.packed.outcome if written else "", entry.action,
                           entry.bytes_before - entry.bytes_after if written else 0,
                           self.reconciler.lookups, self.reconciler.lookup_errors)
