"""Writing the EMR's patient identity into a dataset, with the audit trail DICOM defines for it."""

from __future__ import annotations

import datetime
from copy import deepcopy

from pydicom import DataElement, Dataset, Sequence
from pydicom.datadict import dictionary_VR, tag_for_keyword

from ..directory.model import Patient

MODIFYING_SYSTEM = "NeuroNova ingest"
REASON_CORRECT = "CORRECT"  # a person's explicit assignment
REASON_COERCE = "COERCE"  # automatic reconciliation against the EMR

_UTF8 = "ISO_IR 192"
_LO_LENGTH = 64


def modifying_system(user: str = "") -> str:
    """Modifying System (0400,0563, LO): the plugin, and the person who asked when one did."""
    return f"{MODIFYING_SYSTEM} ({user})"[:_LO_LENGTH] if user else MODIFYING_SYSTEM


def patient_tags(patient: Patient) -> dict[str, str]:
    """The four patient attributes the EMR owns, as DICOM values."""
    return {
        "PatientID": patient.patient_id,
        "PatientName": patient.name,
        "PatientBirthDate": patient.dicom_birth_date,
        "PatientSex": patient.dicom_sex,
    }


def assign_patient(dataset: Dataset, patient: Patient, reason: str = REASON_CORRECT,
                   now: datetime.datetime | None = None, system: str = MODIFYING_SYSTEM) -> list[str]:
    """Make the dataset's patient identity the EMR's; return the keywords that changed."""
    return assign_identity(dataset, patient_tags(patient), reason, now, system)


def changed_tags(dataset: Dataset, wanted: dict[str, str]) -> list[str]:
    return [keyword for keyword, value in wanted.items() if str(dataset.get(keyword, "") or "") != value]


def assign_identity(dataset: Dataset, wanted: dict[str, str], reason: str = REASON_CORRECT,
                    now: datetime.datetime | None = None, system: str = MODIFYING_SYSTEM) -> list[str]:
    """Write the four patient tags; return the keywords that changed.

    Nothing changes (and no audit item is added) when the tags already hold these values,
    so that assigning twice is idempotent. Replaced values go into an Original Attributes
    Sequence item (0400,0561); a replaced Patient ID also into Other Patient IDs Sequence.
    """
    changed = changed_tags(dataset, wanted)
    if not changed:
        return []

    if not all(value.isascii() for value in wanted.values()) and _UTF8 not in _character_sets(dataset):
        # Decode every text element with the old character set first, so that pydicom re-encodes
        # them all in UTF-8 instead of writing old bytes under the new declaration.
        dataset.decode()
        dataset.SpecificCharacterSet = _UTF8

    _add_original_attributes(dataset, changed, reason, now or datetime.datetime.now().astimezone(), system)
    old_patient_id = str(dataset.get("PatientID", "") or "")
    if "PatientID" in changed and old_patient_id:
        other = Dataset()
        other.PatientID = old_patient_id
        if dataset.get("IssuerOfPatientID"):
            other.IssuerOfPatientID = dataset.IssuerOfPatientID
        other.TypeOfPatientID = "TEXT"
        if "OtherPatientIDsSequence" not in dataset:
            dataset.OtherPatientIDsSequence = Sequence()
        dataset.OtherPatientIDsSequence.append(other)
        # The issuer belonged to the old ID; the EMR's canonical ID has its own.
        if "IssuerOfPatientID" in dataset:
            del dataset.IssuerOfPatientID

    for keyword in changed:
        setattr(dataset, keyword, wanted[keyword])
    return changed


def _character_sets(dataset: Dataset) -> list[str]:
    value = dataset.get("SpecificCharacterSet", "")
    return [value] if isinstance(value, str) else list(value)


def _add_original_attributes(dataset: Dataset, keywords: list[str], reason: str, now: datetime.datetime,
                             system: str) -> None:
    previous = Dataset()
    for keyword in keywords:
        if keyword in dataset:
            previous[keyword] = deepcopy(dataset[keyword])
        else:  # the attribute was absent: record it empty, as the standard asks
            tag = tag_for_keyword(keyword)
            previous[keyword] = DataElement(tag, dictionary_VR(tag), None)
    item = Dataset()
    item.ModifiedAttributesSequence = Sequence([previous])
    item.AttributeModificationDateTime = now.strftime("%Y%m%d%H%M%S.%f%z")
    item.ModifyingSystem = system
    item.SourceOfPreviousValues = ""
    item.ReasonForTheAttributeModification = reason
    if "OriginalAttributesSequence" not in dataset:
        dataset.OriginalAttributesSequence = Sequence()
    dataset.OriginalAttributesSequence.append(item)
