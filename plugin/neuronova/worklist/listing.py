"""The worklist: every stored study with instances whose identity is unsettled (unmatched, unverified,
conflict), grouped by study, from the ingest history's latest row per instance. A later row of an
instance (moved, re-verified) settles it; deleted studies leave the list."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from ..directory import Patient, PatientDirectory
from ..errors import DirectoryUnavailable, NotFound
from ..history import HistoryEntry, IngestHistory
from ..pacs import Pacs
from ..reconcile import StudyOwners, orthanc_study_id

log = logging.getLogger("neuronova.worklist")

PATIENT_KEYS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
NAME_SEARCH_LIMIT = 50


@dataclass(frozen=True)
class StoredStudy:
    """A study as Orthanc stores it now."""

    orthanc_id: str
    study_uid: str
    patient: dict[str, str]  # the four patient tags
    issuer: str  # Issuer of Patient ID of its first instance
    instances: list[str]  # Orthanc's instance IDs
    tags: dict[str, str]  # the study's main DICOM tags


def settling_entry(row: dict, path: str, action: str, patient_after: str, error: str = "",
                   user: str = "") -> HistoryEntry:
    """A new history row for an instance settled without being stored again (what is on disk stays)."""
    return HistoryEntry(
        path=path, remote=row["remote"], sop_instance_uid=row["sop_instance_uid"],
        study_instance_uid=row["study_instance_uid"], patient_before=row["patient_after"], patient_after=patient_after,
        action=action, syntax_before=row["syntax_after"], syntax_after=row["syntax_after"],
        bytes_before=row["bytes_after"], bytes_after=row["bytes_after"], duration_ms=0.0, error=error,
        attachment=row["attachment"] or "", user_name=user)


def get_json(pacs: Pacs, uri: str):
    return json.loads(pacs.core_get(uri))


def stored_study(pacs: Pacs, orthanc_id: str) -> StoredStudy:
    """Raises NotFound when Orthanc does not hold this study."""
    study = get_json(pacs, f"/studies/{orthanc_id}")
    instances = [instance["ID"] for instance in get_json(pacs, f"/studies/{orthanc_id}/instances")]
    issuer = ""
    if instances:
        issuer = str(get_json(pacs, f"/instances/{instances[0]}/tags?simplify").get("IssuerOfPatientID", "") or "")
    patient = study.get("PatientMainDicomTags", {})
    return StoredStudy(orthanc_id, study.get("MainDicomTags", {}).get("StudyInstanceUID", ""),
                       {key: patient.get(key, "") for key in PATIENT_KEYS}, issuer, instances,
                       study.get("MainDicomTags", {}))


def locate(pacs: Pacs, owners: StudyOwners, study_uid: str, patient_ids: list[str]) -> StoredStudy | None:
    """Where the study is stored now: under its claimed patient, else under one its rows name."""
    owner = owners.owner(study_uid)
    for patient_id in ([owner["PatientID"]] if owner else []) + patient_ids:
        try:
            return stored_study(pacs, orthanc_study_id(patient_id, study_uid))
        except NotFound:
            continue
    return None


def candidates(directory: PatientDirectory, patient_id: str, name: str, birth_date: str,
               received_ids: list[str]) -> list[dict]:
    """EMR patients the study may belong to: the same ID under any issuer, the IDs its instances
    arrived with, the same name (with the same birth date when one is known). Raises
    DirectoryUnavailable."""
    found: dict[str, dict] = {}

    def add(patient: Patient | None, why: str) -> None:
        if patient is not None:
            found.setdefault(patient.patient_id, {**patient.to_json(), "why": []})["why"].append(why)

    add(directory.resolve(patient_id, ""), "same_id")
    for received in received_ids:
        if received != patient_id:
            add(directory.resolve(received, ""), "received_id")
    family = name.split("^")[0].strip()
    if family:
        wanted = _normal_name(name)
        matches, _ = directory.search(family, NAME_SEARCH_LIMIT)
        for patient in matches:
            same_name = _normal_name(patient.name) == wanted
            same_birth = bool(birth_date) and patient.dicom_birth_date == birth_date
            if same_name and same_birth:
                add(patient, "same_name_and_birth_date")
            elif same_name:
                add(patient, "same_name")
            elif same_birth and _normal_name(patient.name).split("^")[0] == wanted.split("^")[0]:
                add(patient, "same_family_name_and_birth_date")
    return list(found.values())


def _normal_name(name: str) -> str:
    return "^".join(part.strip() for part in name.casefold().split("^")).rstrip("^")


class Worklist:
    def __init__(self, history: IngestHistory, pacs: Pacs, directory: PatientDirectory, owners: StudyOwners):
        self.history = history
        self.pacs = pacs
        self.directory = directory
        self.owners = owners

    def unsettled_studies(self, having: str = "") -> list[tuple[StoredStudy, list[dict]]]:
        """(the stored study, its unsettled rows) for every study still stored, oldest arrival first;
        with `having`, only the studies with rows of that action (Orthanc is asked about those only)."""
        by_study: dict[str, list[dict]] = {}
        for row in self.history.unsettled():
            by_study.setdefault(row["study_instance_uid"], []).append(row)
        studies = []
        for study_uid, rows in by_study.items():
            if having and not any(row["action"] == having for row in rows):
                continue
            study = locate(self.pacs, self.owners, study_uid,
                           list(dict.fromkeys(row["patient_after"] for row in rows if row["patient_after"])))
            if study is not None:
                studies.append((study, rows))
        return studies

    def items(self, limit: int, offset: int = 0) -> dict:
        """A page of the unsettled studies, newest first; the EMR is asked for the page's candidates only."""
        studies = self.unsettled_studies()
        studies.reverse()  # newest first
        items, emr_available = [], True
        for study, rows in studies[offset:offset + limit]:
            item = _item(study, rows)
            if emr_available:
                try:
                    item["candidates"] = candidates(self.directory, study.patient["PatientID"],
                                                    study.patient["PatientName"], study.patient["PatientBirthDate"],
                                                    item["received_patient_ids"])
                except DirectoryUnavailable as error:
                    log.info("worklist without candidates: the EMR is unavailable")
                    log.debug("EMR unavailable: %s", error)
                    emr_available = False
            items.append(item)
        return {"success": True, "emr_available": emr_available, "total": len(studies), "offset": offset,
                "limit": limit, "studies": items}


def _item(study: StoredStudy, rows: list[dict]) -> dict:
    actions: dict[str, int] = {}
    for row in rows:
        actions[row["action"]] = actions.get(row["action"], 0) + 1
    return {
        "study": study.orthanc_id,
        "study_instance_uid": study.study_uid,
        "study_date": study.tags.get("StudyDate", ""),
        "study_description": study.tags.get("StudyDescription", ""),
        "accession_number": study.tags.get("AccessionNumber", ""),
        "patient": {"patient_id": study.patient["PatientID"], "issuer": study.issuer,
                    "name": study.patient["PatientName"], "birth_date": study.patient["PatientBirthDate"],
                    "sex": study.patient["PatientSex"]},
        "received_patient_ids": list(dict.fromkeys(row["patient_before"] for row in rows if row["patient_before"])),
        "senders": sorted({row["remote"] or row["path"] for row in rows}),
        "first_received": rows[0]["time"],
        "last_received": rows[-1]["time"],
        "unsettled_instances": len(rows),
        "instances": len(study.instances),
        "actions": actions,
        "reasons": list(dict.fromkeys(row["error"] for row in rows if row["error"]))[:5],
        "candidates": [],
    }
