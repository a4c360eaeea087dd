"""Moving a stored study to another patient: every instance rewritten to the patient's identity, its
UIDs kept, with the Original Attributes Sequence item (reason, who, when) and the old ID in Other
Patient IDs, one history row per instance; the study's claim moves first, so that instances still
arriving follow the new patient.

Not through Orthanc's modify: Orthanc 1.10 refuses a new PatientID at study, series and instance
level even with "Force" (1.11.3 loosened it), and a modify that keeps the Patient ID and the UIDs
fails ("Cannot store an instance": the result has the source's identifiers). So each instance's
received bytes (GET /instances/{id}/file: the storage area hands the core what it received) are
stored again through Orthanc (POST /instances, compressed again by the storage area), rewritten by the
received-instance callback as a Correction, and the old instance is deleted once the new one is
stored: a failure midway loses nothing (the study is then split until the move is asked again). With
the same Patient ID (other attributes corrected) the new instance has the old one's identifiers:
deleted first, then stored rewritten."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

from ..dicom.assign import REASON_CORRECT, modifying_system, patient_tags
from ..directory import PatientDirectory
from ..directory.model import validate_patient_id
from ..errors import NeuroNovaError, NotFound, NotReady, PatientNotFound, StoreRejected
from ..history import IngestHistory
from ..ingest import Correction, Ingest
from ..pacs import Pacs
from ..reconcile import MOVED, UNCHANGED, OwnersNotLoaded, StudyOwners, orthanc_study_id
from .listing import StoredStudy, get_json, settling_entry, stored_study

log = logging.getLogger("neuronova.worklist")

MAX_ROUNDS = 20  # instances decided before the claim moved may land in the old study meanwhile: moved next round


class StudyMover:
    def __init__(self, pacs: Pacs, directory: PatientDirectory, ingest: Ingest, owners: StudyOwners,
                 history: IngestHistory):
        self.pacs = pacs
        self.directory = directory
        self.ingest = ingest
        self.owners = owners
        self.history = history
        self._lock = threading.Lock()  # one correction at a time: two moves of a study must not interleave

    def move(self, orthanc_id: str, patient_id: str, user: str = "") -> dict:
        """A person's move of the study to the EMR patient `patient_id`. Raises PatientNotFound,
        DirectoryUnavailable (503), NotFound for a study Orthanc does not hold."""
        patient = self.directory.get(validate_patient_id(patient_id))
        if patient is None:
            raise PatientNotFound(patient_id)
        target = patient_tags(patient)
        return self.apply(orthanc_id, Correction(target, MOVED, REASON_CORRECT, modifying_system(user), "move", user))

    def apply(self, orthanc_id: str, correction: Correction) -> dict:
        with self._lock:
            study = self._stored(orthanc_id)
            try:
                with self.owners.moving(study.study_uid):  # and on no other server of a cluster
                    return self._apply(self._stored(orthanc_id), correction)
            except OwnersNotLoaded as error:
                raise NotReady(f"{error}: retry") from None

    def _stored(self, orthanc_id: str) -> StoredStudy:
        try:
            return stored_study(self.pacs, orthanc_id)
        except NotFound:
            raise NotFound(f"study {orthanc_id} is not stored in Orthanc") from None

    def _apply(self, study: StoredStudy, correction: Correction) -> dict:
        target, orthanc_id = correction.target, study.orthanc_id
        if study.patient == target:  # already this patient's: the person's word settles what was open
            settled = self._settle(study, correction)
            return self._answer(study.orthanc_id, study, target, 0, settled)
        self.owners.reassign(study.study_uid, target)  # instances arriving from now on follow the new patient
        # Another server of a cluster may follow the claim it cached until then: what it stores meanwhile
        # under the old patient is moved in the next rounds.
        cached_until = time.monotonic() + self.owners.CACHED_CLAIM_SECONDS
        new_id = orthanc_study_id(target["PatientID"], study.study_uid)
        if new_id == orthanc_id:  # the same Patient ID, other attributes: rewritten in place
            moved = self._rewrite_in_place(study, correction)
            # Orthanc keeps the main DICOM tags of a patient it did not create again: read them anew.
            parent = get_json(self.pacs, f"/studies/{orthanc_id}")["ParentPatient"]
            self.pacs.core_post(f"/patients/{parent}/reconstruct", b"")
            return self._answer(new_id, study, target, moved, 0)
        moved, left = 0, study
        for _ in range(MAX_ROUNDS):
            moved += self._move_instances(left, correction)
            left = self._left_under_old_patient(orthanc_id, cached_until)
            if left is None:
                break
        else:
            raise StoreRejected(f"study {orthanc_id} still receives instances under its old patient: move "
                                "it again once they stop")
        log.info("study %s moved to %s (%d instances) by %s", orthanc_id, new_id, moved,
                 correction.user or correction.path)
        return self._answer(new_id, study, target, moved, 0)

    def _left_under_old_patient(self, orthanc_id: str, cached_until: float) -> StoredStudy | None:
        """Instances decided before the claim moved may have been stored under the old patient: the old
        study again, or None once it is gone and no server can still follow the old claim."""
        while True:
            try:
                return stored_study(self.pacs, orthanc_id)
            except NotFound:
                if time.monotonic() >= cached_until:
                    return None
            time.sleep(0.2)

    def _move_instances(self, study: StoredStudy, correction: Correction) -> int:
        moved = 0
        for instance in study.instances:
            try:
                sop = get_json(self.pacs, f"/instances/{instance}")["MainDicomTags"].get("SOPInstanceUID", "")
                dicom = self.pacs.core_get(f"/instances/{instance}/file")
            except NotFound:
                continue  # deleted meanwhile
            self.ingest.expect_correction(sop, correction)
            try:
                answer = self.pacs.store(dicom)
            finally:
                self.ingest.forget_correction(sop)
            if answer.get("Status") not in ("Success", "AlreadyStored") or answer.get("ID") == instance:
                raise StoreRejected(f"instance {instance} could not be stored under the new patient "
                                    f"({answer.get('Status')}): the study is kept as it was for it")
            try:
                self.pacs.core_delete(f"/instances/{instance}")
            except NotFound:
                pass  # deleted meanwhile by someone else: its new copy is stored
            moved += 1
        return moved

    def _rewrite_in_place(self, study: StoredStudy, correction: Correction) -> int:
        """The same Patient ID and UIDs make the same Orthanc identifiers, which Orthanc will not store
        twice: each instance is deleted, then stored rewritten (stored back as it was if that fails)."""
        remaining = len(study.instances)
        for instance in study.instances:
            try:
                sop = get_json(self.pacs, f"/instances/{instance}")["MainDicomTags"].get("SOPInstanceUID", "")
                dicom = self.pacs.core_get(f"/instances/{instance}/file")
            except NotFound:
                continue
            if remaining == 1:
                self.owners.keep_through_deletion(study.orthanc_id)
            self.pacs.core_delete(f"/instances/{instance}")
            remaining -= 1
            self.ingest.expect_correction(sop, correction)
            try:
                self.pacs.store(dicom)
            except NeuroNovaError:
                self.ingest.expect_correction(sop, replace(correction, target=study.patient, action=UNCHANGED))
                self.pacs.store(dicom)
                raise
            finally:
                self.ingest.forget_correction(sop)
        return len(study.instances)

    def _settle(self, study: StoredStudy, correction: Correction) -> int:
        """One row per unsettled instance of the study: its patient confirmed, nothing rewritten."""
        rows = [row for row in self.history.unsettled() if row["study_instance_uid"] == study.study_uid]
        for row in rows:
            self.history.record(settling_entry(row, correction.path, correction.action, correction.target["PatientID"],
                                               user=correction.user))
        return len(rows)

    @staticmethod
    def _answer(new_id: str, study: StoredStudy, target: dict[str, str], moved: int, settled: int) -> dict:
        return {"success": True, "study": new_id, "previous_study": study.orthanc_id,
                "study_instance_uid": study.study_uid, "patient_id": target["PatientID"],
                "previous_patient_id": study.patient["PatientID"], "moved_instances": moved,
                "settled_instances": settled}

