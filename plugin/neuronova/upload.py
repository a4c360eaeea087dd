"""The upload pipeline: validate, assign the EMR patient, hand to Orthanc; one file, a ZIP of them, or
a NIfTI volume (converted by nifti/ into new series)."""

from __future__ import annotations

import logging
import zipfile
from io import BytesIO
from typing import Callable

from pydicom import dcmwrite

from .config import UploadSettings
from .dicom.assign import REASON_CORRECT, assign_patient, modifying_system, patient_tags
from .dicom.reading import read_dicom
from .directory import Patient, PatientDirectory
from .directory.model import validate_patient_id
from .ingest import Ingest
from .errors import NotDicom, NotReady, BadRequest, NeuroNovaError, PatientNotFound, PatientRejected, PayloadTooLarge
from .nifti.reading import looks_like_nifti
from .nifti.service import ImportOptions, NiftiImport, NiftiSettings
from .pacs import Pacs

log = logging.getLogger("neuronova.upload")

SUCCESS_MESSAGE = "Uploaded and converted successfully"
ORTHANC_RESPONSE_KEYS = ("ID", "ParentPatient", "ParentSeries", "ParentStudy", "Status")
_ZIP_MAGIC = b"PK\x03\x04"
_IGNORED_ZIP_PREFIXES = ("__MACOSX/",)
_PREAMBLE_AND_PREFIX = 132  # a Part 10 file: 128 bytes of preamble, then "DICM"

#: Stores one DICOM file in Orthanc (POST /instances) and returns Orthanc's JSON answer; raises StoreRejected.
StoreFunction = Callable[[bytes], dict]


def _member_failure(error: Exception) -> NeuroNovaError:
    """An unexpected failure of one member, answered without internals (the log has its type)."""
    log.error("ZIP member failed unexpectedly: %s", type(error).__name__)
    log.debug("ZIP member failure", exc_info=error)
    return BadRequest("this file could not be stored (an internal error: see Orthanc's log)")


_UTF8_NAMES = 0x800  # general purpose flag bit 11: the member's name is UTF-8


def _open_zip(body: bytes) -> zipfile.ZipFile:
    """The archive; one whose names say UTF-8 and are not (Python's zipfile then cannot read it at all)
    is read again with its names taken byte for byte, so that every member still gets its result."""
    try:
        return zipfile.ZipFile(BytesIO(body))
    except UnicodeDecodeError:
        relabelled = _without_utf8_flags(body)
    except Exception as error:  # zipfile raises many types for a damaged central directory
        raise BadRequest(f"unreadable ZIP archive: {error}") from None
    try:
        return zipfile.ZipFile(BytesIO(relabelled))
    except Exception as error:
        raise BadRequest(f"unreadable ZIP archive: {error}") from None


def _without_utf8_flags(body: bytes) -> bytes:
    """The ZIP with flag bit 11 cleared in its local and central headers (names then read as CP437)."""
    data = bytearray(body)
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        while at >= 0:
            if at + flags_at + 2 <= len(data):
                flags = int.from_bytes(data[at + flags_at:at + flags_at + 2], "little")
                data[at + flags_at:at + flags_at + 2] = (flags & ~_UTF8_NAMES).to_bytes(2, "little")
            at = data.find(signature, at + 4)
    return bytes(data)


class UploadService:
    def __init__(self, directory: PatientDirectory, ingest: Ingest, store: StoreFunction, settings: UploadSettings,
                 pacs: Pacs | None = None, nifti_settings: NiftiSettings | None = None):
        self.directory = directory
        self.ingest = ingest
        self.store = store
        self.settings = settings
        self.nifti = (NiftiImport(pacs, self.store_prepared, nifti_settings or NiftiSettings())
                      if pacs is not None else None)

    def upload(self, body: bytes, patient_id: str | None, headers: dict[str, str] | None = None,
               user: str = "") -> tuple[int, dict]:
        """Answer (HTTP status, JSON) for one request body; raises NeuroNovaError for whole-request failures.
        `user` is who uploads (Orthanc's authenticated user), recorded with an assignment."""
        self._check_size(body)
        if self.nifti is not None and looks_like_nifti(body):
            if patient_id is None:
                raise BadRequest("a NIfTI file carries no patient: upload it to /neuronova/upload/{patient_id} (a new "
                                 "study of that EMR patient) or to /neuronova/studies/{study}/nifti (an existing study)")
            patient = self._lookup(patient_id)
            return 200, self.nifti.to_new_study(body, patient_tags(patient), ImportOptions.from_headers(headers or {}))
        patient = self._lookup(patient_id) if patient_id is not None else None
        if body.startswith(_ZIP_MAGIC):
            return self._upload_zip(body, patient, user)
        patient_id, stored = self._store_one(body, patient, user)
        return 200, {
            "success": True,
            "message": SUCCESS_MESSAGE,
            "patient_id": patient_id,
            "orthanc_response": stored,
        }

    def upload_nifti_to_study(self, body: bytes, study: str, headers: dict[str, str]) -> tuple[int, dict]:
        """New series from a NIfTI file in a stored study (Orthanc study ID or StudyInstanceUID)."""
        self._check_size(body)
        if not looks_like_nifti(body):
            raise BadRequest("not a NIfTI file: no NIfTI-1 or NIfTI-2 header, plain or gzip-compressed "
                             "(DICOM files go to /neuronova/upload)")
        return 200, self.nifti.to_study(body, study, ImportOptions.from_headers(headers))

    def _check_size(self, body: bytes) -> None:
        if len(body) > self.settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"upload of {len(body)} bytes is over the limit of {self.settings.max_upload_bytes} bytes "
                "(NeuroNova.Upload.MaxUploadSizeMB)")

    def _lookup(self, patient_id: str) -> Patient:
        patient = self.directory.get(validate_patient_id(patient_id))
        if patient is None:
            raise PatientNotFound(patient_id)
        return patient

    def _store_one(self, data: bytes, patient: Patient | None, user: str = "") -> tuple[str, dict]:
        """(the instance's patient ID, Orthanc's answer) for one validated, assigned and stored file."""
        dataset = read_dicom(data, self.settings.max_inflated_bytes)
        sop_instance_uid = dataset.SOPInstanceUID
        if patient is not None:
            changed = assign_patient(dataset, patient, REASON_CORRECT, system=modifying_system(user))
            if changed:
                buffer = BytesIO()
                dcmwrite(buffer, dataset, enforce_file_format=True)
                data = buffer.getvalue()
                log.info("Instance %s assigned to the EMR patient (changed %s)", sop_instance_uid, ", ".join(changed))
        patient_id_in_file = str(dataset.get("PatientID", ""))
        del dataset  # its copy of the pixels goes before Orthanc receives the file (the peak of an upload)
        stored_patient_id, stored = self._store(data, sop_instance_uid, assigned=patient is not None, user=user)
        return stored_patient_id or patient_id_in_file, stored

    def store_prepared(self, data: bytes, sop_instance_uid: str) -> dict:
        """Store a file the plugin built itself (patient already set, as a person chose it): Orthanc's answer."""
        return self._store(data, sop_instance_uid, assigned=True)[1]

    def _store(self, data: bytes, sop_instance_uid: str, assigned: bool, user: str = "") -> tuple[str | None, dict]:
        """(the patient ID it was stored under, Orthanc's answer) for one file, through the ordinary ingest."""
        # The received-instance callback transcodes and records it; it learns from this expectation
        # that a person chose the patient, and tells back under which patient it was stored.
        outcome = self.ingest.expect_upload(sop_instance_uid, assigned=assigned, user=user)
        try:
            answer = self.store(data)
        finally:
            self.ingest.forget_upload(sop_instance_uid)
        if answer.get("Status") == "FilteredOut":
            if outcome.retry:
                raise NotReady(outcome.rejection or "Orthanc is starting: retry")
            raise PatientRejected(outcome.rejection or "refused by patient reconciliation")
        stored = {key: answer.get(key) for key in ORTHANC_RESPONSE_KEYS}
        log.info("Instance %s stored as %s (%s)", sop_instance_uid, stored["ID"], stored["Status"])
        return outcome.patient_id, stored

    def _upload_zip(self, body: bytes, patient: Patient | None, user: str = "") -> tuple[int, dict]:
        archive = _open_zip(body)
        members = [info for info in archive.infolist()  # (ZipInfo.is_dir fails on an empty name)
                   if not info.filename.endswith("/") and not info.filename.startswith(_IGNORED_ZIP_PREFIXES)]
        self._check_archive(members)

        results, first_error = [], None
        unzipped = 0
        for info in members:
            try:
                data = self._read_member(archive, info)
                unzipped += len(data)
                if unzipped > self.settings.max_unzipped_bytes:
                    raise PayloadTooLarge("ZIP archive inflates beyond NeuroNova.Upload.MaxUnzippedSizeMB")
                patient_id, stored = self._store_one(data, patient, user)
                results.append({"file": info.filename, "success": True, "patient_id": patient_id,
                                "orthanc_response": stored})
            except Exception as error:  # one member's failure is its own result: the others go on
                refusal = error if isinstance(error, NeuroNovaError) else _member_failure(error)
                first_error = first_error or refusal
                results.append({"file": info.filename, "success": False, "error": str(refusal)})
                log.warning("ZIP member %d of %d refused (%s)", len(results), len(members), type(refusal).__name__)
                log.debug("ZIP member %r refused: %s", info.filename, refusal)  # names may hold patient data

        stored_count = sum(result["success"] for result in results)
        failed_count = len(results) - stored_count
        answer = {
            "success": failed_count == 0,
            "message": (SUCCESS_MESSAGE if failed_count == 0
                        else f"{stored_count} of {len(results)} files stored, {failed_count} failed"),
            "patient_id": patient.patient_id if patient else None,
            "total": len(results),
            "stored": stored_count,
            "failed": failed_count,
            "results": results,
        }
        if failed_count:
            answer["error"] = f"{failed_count} of {len(results)} files failed; see results"
        return (200 if stored_count else first_error.http_status), answer

    def _check_archive(self, members: list[zipfile.ZipInfo]) -> None:
        if not members:
            raise BadRequest("ZIP archive holds no files")
        if len(members) > self.settings.max_zip_members:
            raise PayloadTooLarge(f"ZIP archive holds {len(members)} files, over the limit of "
                                  f"{self.settings.max_zip_members} (NeuroNova.Upload.MaxZipMembers)")
        declared = sum(info.file_size for info in members)
        if declared > self.settings.max_unzipped_bytes:
            raise PayloadTooLarge(f"ZIP archive would inflate to {declared} bytes, over the limit of "
                                  f"{self.settings.max_unzipped_bytes} (NeuroNova.Upload.MaxUnzippedSizeMB)")

    def _read_member(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
        """Read one member without trusting its declared size: a forged header cannot inflate past the limit.
        Refused before it is inflated when it declares too much, and after 132 bytes when it is no DICOM
        file (a 1 GB member of zeros in a 1 MB ZIP costs nothing)."""
        if info.file_size > self.settings.max_member_bytes:
            raise PayloadTooLarge(f"member of {info.file_size} bytes is over the limit of "
                                  f"{self.settings.max_member_bytes} (NeuroNova.Upload.MaxMemberSizeMB)")
        limit = info.file_size
        try:
            with archive.open(info) as member:
                head = member.read(_PREAMBLE_AND_PREFIX)
                if len(head) == _PREAMBLE_AND_PREFIX and head[128:] != b"DICM":
                    raise NotDicom("not a DICOM file: no 'DICM' prefix at byte 128 (DICOM Part 10 file expected)")
                data = head + member.read(limit + 1 - len(head))
        except NeuroNovaError:
            raise
        except Exception as error:  # corrupt deflate or LZMA streams, unsupported methods, encryption, bad CRC
            raise BadRequest(f"cannot extract from the ZIP archive: {error}") from None
        if len(data) > limit:
            raise PayloadTooLarge(f"member inflates beyond its declared {limit} bytes")
        return data
