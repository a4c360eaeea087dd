"""The ingest pipeline every instance goes through inside Orthanc, whatever its path.

Where it runs is dictated by Orthanc 1.10 with orthanc-python 4.0, measured here:
- Orthanc runs the received-instance callback and the incoming C-STORE filter under one plugin
  lock, one instance at a time;
- orthanc-python 4.0 keeps the GIL during every SDK call. A Python thread that stores an instance
  with RestApiPost("/instances") waits for that plugin lock while holding the GIL, and a C-STORE or
  STOW-RS thread holding the lock waits for the GIL to enter the callback: Orthanc deadlocks
  (seen with REST uploads during a C-STORE).
So: REST, DICOMweb and upload-route instances are processed in the received-instance callback;
C-STORE instances in the C-STORE filter, which alone knows the calling AE title and can answer a
DIMSE failure status but cannot modify (a changed instance is stored by the filter's own thread,
which already holds the lock, and the original answered "success, discarded"). Routes store through
Orthanc's HTTP server on loopback, never with RestApiPost, so they wait without the GIL; and the
plugin publishes metrics only from those callbacks.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from io import BytesIO
from typing import Callable

from pydicom import dcmread, dcmwrite

from .dicom.assign import REASON_COERCE, assign_identity
from .errors import PatientRejected
from .history import HistoryEntry, IngestHistory
from .metrics import Metrics
from .reconcile import REJECTED, UNCHANGED, Identity, Reconciler
from .transcoder import TranscodeSettings, transcode

log = logging.getLogger("neuronova.ingest")

_IDENTITY_TAGS = ["SOPInstanceUID", "StudyInstanceUID", "PatientID", "IssuerOfPatientID", "PatientName",
                  "PatientBirthDate", "PatientSex"]

#: Answers of the incoming C-STORE filter, as Orthanc 1.10 reads them (other values are DIMSE statuses).
CSTORE_ACCEPT = 0
CSTORE_DISCARD_AS_SUCCESS = 1
CSTORE_OUT_OF_RESOURCES = 0xA700

KEEP, MODIFY, DISCARD = "keep", "modify", "discard"


def read_identity(dicom: bytes) -> tuple[str, Identity]:
    """(SOP Instance UID, patient identity) from the header only: the pixels are not read."""
    dataset = dcmread(BytesIO(dicom), stop_before_pixels=True, specific_tags=_IDENTITY_TAGS)
    return str(dataset.get("SOPInstanceUID", "")), Identity(
        patient_id=str(dataset.get("PatientID", "") or ""),
        issuer=str(dataset.get("IssuerOfPatientID", "") or ""),
        name=str(dataset.get("PatientName", "") or ""),
        birth_date=str(dataset.get("PatientBirthDate", "") or ""),
        sex=str(dataset.get("PatientSex", "") or ""),
        study_uid=str(dataset.get("StudyInstanceUID", "") or ""),
    )


def rewrite_identity(dicom: bytes, tags: dict[str, str]) -> bytes:
    """Write the reconciled patient tags, with the COERCE audit item; pixels are copied untouched."""
    dataset = dcmread(BytesIO(dicom))
    assign_identity(dataset, tags, REASON_COERCE)
    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class UploadOutcome:
    assigned: bool
    patient_id: str | None = None  # the stored Patient ID, once processed
    rejection: str | None = None  # why reconciliation refused it


@dataclass(frozen=True)
class Processed:
    data: bytes  # what to store (the original object when nothing changed)
    entry: HistoryEntry


class Ingest:
    def __init__(self, transcoding: TranscodeSettings, reconciler: Reconciler, history: IngestHistory,
                 metrics: Metrics, clock: Callable[[], float] = time.perf_counter):
        self.transcoding = transcoding
        self.reconciler = reconciler
        self.history = history
        self.metrics = metrics
        self._clock = clock
        self._thread = threading.local()
        self._lock = threading.Lock()
        self._uploads: dict[str, UploadOutcome] = {}  # SOP Instance UID -> what the upload route awaits

    def expect_upload(self, sop_instance_uid: str, assigned: bool) -> "UploadOutcome":
        """Called by the upload route before it stores: the callback then records the instance as
        an upload (`assigned` when a person chose its patient) and fills in the outcome."""
        outcome = UploadOutcome(assigned)
        with self._lock:
            self._uploads[sop_instance_uid] = outcome
        return outcome

    def forget_upload(self, sop_instance_uid: str) -> None:
        with self._lock:
            self._uploads.pop(sop_instance_uid, None)

    @contextlib.contextmanager
    def storing_processed(self):
        """Mark this thread while the C-STORE filter stores the instance it processed."""
        self._thread.processed = True
        try:
            yield
        finally:
            self._thread.processed = False

    def process(self, dicom: bytes, path: str, remote: str = "", assigned: bool = False) -> Processed:
        """Transcode and reconcile one instance. Raises PatientRejected; any other failure keeps the original."""
        started = self._clock()
        try:
            sop, identity = read_identity(dicom)
        except Exception as error:  # Orthanc parsed it, pydicom cannot: store it as it came, say so
            entry = HistoryEntry(path, remote, "", "", "", "", UNCHANGED, "", "", len(dicom), len(dicom),
                                 round((self._clock() - started) * 1000, 3), f"header unreadable: {error}")
            self.history.record(entry)
            return Processed(dicom, entry)
        with self._lock:
            upload = self._uploads.pop(sop, None)
        if upload is not None:
            path, assigned = "upload", upload.assigned
        result = transcode(dicom, self.transcoding)
        data, action, reason, patient_after = result.data, UNCHANGED, "", identity.patient_id
        decision = None
        if assigned:
            decision = self.reconciler.decide_assigned(identity)
        elif self.reconciler.settings.enabled and (path != "dicom" or self.reconciler.applies_to(remote)):
            decision = self.reconciler.decide(identity)
        if decision is not None:
            action, reason, patient_after = decision.action, decision.reason, decision.patient_after(identity)
            if decision.action != REJECTED and decision.target and decision.target != identity.tags():
                log.info("SOP Instance %s: %s to the EMR patient (%s)", sop, decision.action, path)
                data = rewrite_identity(data, decision.target)
        error = result.reason if result.outcome == "failed" else reason if action in (REJECTED, "unverified") else ""
        entry = HistoryEntry(
            path=path, remote=remote, sop_instance_uid=sop, study_instance_uid=identity.study_uid,
            patient_before=identity.patient_id, patient_after=patient_after if action != REJECTED else "",
            action=action, syntax_before=result.syntax_before,
            syntax_after=result.syntax_after if action != REJECTED else "", bytes_before=len(dicom),
            bytes_after=len(data) if action != REJECTED else 0,
            duration_ms=round((self._clock() - started) * 1000, 3), error=error)
        self.history.record(entry)
        self.metrics.count(result, action, entry.bytes_before - entry.bytes_after,
                           self.reconciler.lookups, self.reconciler.lookup_errors)
        if upload is not None:
            upload.patient_id, upload.rejection = entry.patient_after or None, reason if action == REJECTED else None
        if action == REJECTED:
            raise PatientRejected(reason)
        return Processed(data, entry)

    def received(self, dicom: bytes, path: str) -> tuple[str, bytes | None]:
        """(KEEP / MODIFY / DISCARD, new bytes); never raises."""
        if getattr(self._thread, "processed", False) or path == "dicom":
            return KEEP, None  # stored by the C-STORE filter after processing, or the filter will do it
        try:
            processed = self.process(dicom, path)
        except PatientRejected:
            return DISCARD, None
        except Exception:
            log.exception("Ingest of an instance received by %s failed; stored as received", path)
            return KEEP, None
        return (MODIFY, processed.data) if processed.data is not dicom else (KEEP, None)

    def cstore_filter(self, dicom: bytes, calling_aet: str, store: Callable[[bytes], dict]) -> int:
        """The DIMSE answer for one C-STORE instance; never raises, never drops an image silently."""
        try:
            processed = self.process(dicom, "dicom", remote=calling_aet)
        except PatientRejected as error:
            log.warning("C-STORE from %s rejected: %s", calling_aet, error)
            return self.reconciler.settings.reject_status
        except Exception:
            log.exception("Ingest of an instance from %s failed; stored as received", calling_aet)
            return CSTORE_ACCEPT
        if processed.data is dicom:
            return CSTORE_ACCEPT
        try:
            with self.storing_processed():
                store(processed.data)
        except Exception:
            log.exception("Could not store the processed instance %s from %s; the sender may retry",
                          processed.entry.sop_instance_uid, calling_aet)
            return CSTORE_OUT_OF_RESOURCES
        return CSTORE_DISCARD_AS_SUCCESS
