"""The patient record the EMR directory hands out, and its validation."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from ..errors import BadRequest

GENDERS = ("male", "female", "other", "unknown")
_DICOM_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "O"}
_MAX_ID_LENGTH = 64  # DICOM LO
_MAX_NAME_COMPONENT = 64  # DICOM PN component group


@dataclass(frozen=True)
class Identifier:
    """Another identifier of a patient: a scanner's local ID, a previous MRN after a merge."""

    value: str
    issuer: str = ""  # DICOM Issuer of Patient ID; empty when the identifier has none

    def to_json(self) -> dict:
        return {"id": self.value, "issuer": self.issuer}


@dataclass(frozen=True)
class Patient:
    patient_id: str  # the EMR's canonical ID (MRN)
    name: str  # DICOM PN: Family^Given[^Middle...]
    birth_date: str | None  # ISO YYYY-MM-DD; a FHIR EMR may give only YYYY or YYYY-MM
    gender: str  # one of GENDERS
    other_ids: tuple[Identifier, ...] = ()

    @property
    def dicom_birth_date(self) -> str:
        """DICOM DA YYYYMMDD; empty (unknown) for a partial date, rather than an invented day."""
        return self.birth_date.replace("-", "") if self.birth_date and len(self.birth_date) == 10 else ""

    @property
    def dicom_sex(self) -> str:
        """First letter of the EMR gender (M/F/O); 'unknown' maps to O as the predecessor did."""
        return _DICOM_SEX[self.gender]

    def to_json(self) -> dict:
        return {
            "patient_id": self.patient_id,
            "name": self.name,
            "birth_date": self.birth_date,
            "gender": self.gender,
            "other_ids": [identifier.to_json() for identifier in self.other_ids],
        }


def validate_patient_id(patient_id: str) -> str:
    if not isinstance(patient_id, str) or not patient_id.strip():
        raise BadRequest("patient_id: must be a non-empty string")
    if len(patient_id) > _MAX_ID_LENGTH:
        raise BadRequest(f"patient_id: at most {_MAX_ID_LENGTH} characters (DICOM LO)")
    if "\\" in patient_id or any(ord(c) < 32 for c in patient_id):
        raise BadRequest("patient_id: must not contain backslashes or control characters")
    return patient_id.strip()


def patient_from_json(patient_id: str, payload: object) -> Patient:
    """Validate an administrator's JSON record; every error names the field and the rule."""
    if not isinstance(payload, dict):
        raise BadRequest("body: must be a JSON object with name, birth_date and gender")
    unknown = set(payload) - {"patient_id", "name", "birth_date", "gender", "other_ids"}
    if unknown:
        raise BadRequest(f"{sorted(unknown)[0]}: unknown field")
    patient_id = validate_patient_id(patient_id)
    if "patient_id" in payload and payload["patient_id"] != patient_id:
        raise BadRequest("patient_id: differs from the ID in the URL")

    name = payload.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[^\^\\=]+\^[^\^\\=]*(\^[^\^\\=]*){0,3}", name.strip()):
        raise BadRequest("name: must be 'Family^Given' (DICOM PN, no backslash or '=')")
    name = name.strip()
    if any(len(part) > _MAX_NAME_COMPONENT for part in name.split("^")) or any(ord(c) < 32 for c in name):
        raise BadRequest(f"name: components are at most {_MAX_NAME_COMPONENT} characters, no control characters")

    birth_date = payload.get("birth_date")
    if birth_date in (None, ""):
        birth_date = None
    else:
        try:
            if not isinstance(birth_date, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", birth_date):
                raise ValueError
            parsed = datetime.date.fromisoformat(birth_date)
        except ValueError:
            raise BadRequest("birth_date: must be a date YYYY-MM-DD") from None
        if parsed > datetime.date.today():
            raise BadRequest("birth_date: must not be in the future")

    gender = payload.get("gender", "unknown")
    if gender not in GENDERS:
        raise BadRequest(f"gender: must be one of {', '.join(GENDERS)}")
    return Patient(patient_id, name, birth_date, gender, _other_ids(payload.get("other_ids", []), patient_id))


def _other_ids(raw: object, patient_id: str) -> tuple[Identifier, ...]:
    rule = "other_ids: must be a list of {\"id\": ..., \"issuer\": ...} objects"
    if not isinstance(raw, list):
        raise BadRequest(rule)
    identifiers = []
    for item in raw:
        if not isinstance(item, dict) or set(item) - {"id", "issuer"} or not isinstance(item.get("issuer", ""), str):
            raise BadRequest(rule)
        try:
            value = validate_patient_id(item.get("id"))
        except BadRequest as error:
            raise BadRequest(f"other_ids: {error}") from None
        identifier = Identifier(value, item.get("issuer", "").strip())
        if value == patient_id and not identifier.issuer:
            raise BadRequest("other_ids: must not repeat the patient's own ID without an issuer")
        identifiers.append(identifier)
    return tuple(dict.fromkeys(identifiers))
