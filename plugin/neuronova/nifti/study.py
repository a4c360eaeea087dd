"""Where an import goes: a new study for an EMR patient, or an existing study of the PACS (its patient,
its study attributes, its Frame of Reference where the geometry allows, its series as SEG sources)."""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from io import BytesIO

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from ..errors import BadRequest, NotFound
from ..pacs import Pacs
from .geometry import Geometry
from .objects import Study

_ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
_STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
               "StudyDescription")
_PATIENT_KEYS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
#: Same plane within this much: positions (mm), and orientation cosines.
POSITION_TOLERANCE_MM, ORIENTATION_TOLERANCE = 1e-3, 1e-4


@dataclass(frozen=True)
class StoredSeries:
    orthanc_id: str
    uid: str
    number: int
    frame_of_reference: str
    instances: tuple[str, ...]  # Orthanc IDs
    first_tags: dict = field(default_factory=dict, repr=False)


@dataclass
class Target:
    study: Study
    orthanc_id: str | None  # None: a new study
    series: list[StoredSeries]

    def next_series_number(self) -> int:
        return max((series.number for series in self.series), default=0) + 1

    def frames_of_reference(self) -> set[str]:
        return {series.frame_of_reference for series in self.series if series.frame_of_reference}


def new_study(patient_tags: dict[str, str], description: str, now: datetime.datetime) -> Target:
    attributes = {"StudyInstanceUID": generate_uid(), "StudyDate": now.strftime("%Y%m%d"),
                  "StudyTime": now.strftime("%H%M%S"), "StudyID": "", "AccessionNumber": "",
                  "ReferringPhysicianName": "", "StudyDescription": description or "NIfTI import"}
    return Target(Study(dict(patient_tags), attributes), None, [])


def existing_study(pacs: Pacs, reference: str) -> Target:
    """The study named by an Orthanc study ID or a StudyInstanceUID; raises NotFound."""
    orthanc_id = reference if _ORTHANC_ID.match(reference) else _lookup(pacs, reference)
    study = _get_json(pacs, f"/studies/{orthanc_id}", f"study {reference!r} is not stored in this PACS")
    tags, patient = study.get("MainDicomTags", {}), study.get("PatientMainDicomTags", {})
    attributes = {key: str(tags.get(key, "")) for key in _STUDY_KEYS}
    series = [_stored_series(pacs, series_id) for series_id in study.get("Series", [])]
    return Target(Study({key: str(patient.get(key, "")) for key in _PATIENT_KEYS}, attributes), orthanc_id,
                  [s for s in series if s is not None])


def _lookup(pacs: Pacs, uid: str) -> str:
    if not re.fullmatch(r"[0-9.]{1,64}", uid):
        raise BadRequest(f"study: {uid!r} is neither an Orthanc study ID nor a StudyInstanceUID")
    matches = json.loads(pacs.core_post("/tools/lookup", uid.encode("ascii")))
    for match in matches:
        if match.get("Type") == "Study":
            return match["ID"]
    raise NotFound(f"study {uid!r} is not stored in this PACS")


def _get_json(pacs: Pacs, uri: str, missing: str):
    try:
        return json.loads(pacs.core_get(uri))
    except NotFound:
        raise NotFound(missing) from None


def _stored_series(pacs: Pacs, series_id: str) -> StoredSeries | None:
    series = _get_json(pacs, f"/series/{series_id}", f"series {series_id} vanished")
    instances = tuple(series.get("Instances", []))
    if not instances:
        return None
    first = _get_json(pacs, f"/instances/{instances[0]}/tags?simplify", "instance vanished")
    try:
        number = int(str(series.get("MainDicomTags", {}).get("SeriesNumber", "0")).strip() or 0)
    except ValueError:
        number = 0
    return StoredSeries(series_id, str(series.get("MainDicomTags", {}).get("SeriesInstanceUID", "")), number,
                        str(first.get("FrameOfReferenceUID", "")), instances, first)


def _floats(value) -> list[float]:
    try:
        return [float(part) for part in str(value).split("\\")]
    except ValueError:
        return []


def matches_geometry(pacs: Pacs, series: StoredSeries, geometry: Geometry) -> bool:
    """Does this stored single-frame series have exactly the volume's planes (same grid, same places)?"""
    tags = series.first_tags
    if "ImagePositionPatient" not in tags or int(tags.get("NumberOfFrames", "1") or 1) != 1:
        return False
    if (int(tags.get("Rows", 0)), int(tags.get("Columns", 0))) != (geometry.shape[1], geometry.shape[0]):
        return False
    if len(series.instances) != geometry.shape[2]:
        return False
    spacing = _floats(tags.get("PixelSpacing", ""))
    if len(spacing) != 2 or not np.allclose(spacing, geometry.pixel_spacing, atol=POSITION_TOLERANCE_MM):
        return False
    orientation = _floats(tags.get("ImageOrientationPatient", ""))
    if len(orientation) != 6 or not np.allclose(orientation, geometry.orientation, atol=ORIENTATION_TOLERANCE):
        return False
    listed = json.loads(pacs.core_get(f"/series/{series.orthanc_id}/instances"))
    stored = sorted(tuple(_floats(item.get("MainDicomTags", {}).get("ImagePositionPatient", ""))) for item in listed)
    wanted = sorted(tuple(position) for position in geometry.positions())
    return all(len(a) == 3 and np.allclose(a, b, atol=POSITION_TOLERANCE_MM) for a, b in zip(stored, wanted))


def source_datasets(pacs: Pacs, series: StoredSeries) -> list[Dataset]:
    """The series' instances, headers only (what a Segmentation needs to reference them)."""
    return [dcmread(BytesIO(pacs.core_get(f"/instances/{instance}/file")), stop_before_pixels=True)
            for instance in series.instances]
