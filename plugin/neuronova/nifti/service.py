"""One NIfTI upload: read and check the whole file, decide the objects, build every one of them,
and only then store them through Orthanc's ordinary ingest (deleting what was stored if a store
fails), so that a refusal leaves nothing behind."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from urllib.parse import unquote

import numpy as np
from pydicom import Dataset, dcmwrite
from pydicom.uid import generate_uid

from ..errors import BadRequest, NeuroNovaError
from ..pacs import Pacs
from .geometry import Geometry, volume_geometry
from .objects import SeriesSpec, mr_slices, parametric_map, segmentation
from .reading import NiftiLimits, read_nifti
from .study import Target, existing_study, matches_geometry, new_study, source_datasets
from .volumes import IMAGE, LABELS, MAP, Volume, classify, scaling, split_volumes

log = logging.getLogger("neuronova.nifti")

#: Stores one prepared DICOM file through the ordinary ingest path; Orthanc's answer (ID, ParentSeries, ...).
StoreInstance = Callable[[bytes, str], dict]

HEADER_VOLUMES = "x-neuronova-nifti-volumes"  # "separate": a 4-D file becomes one series per volume
HEADER_CONTENT = "x-neuronova-nifti-content"  # "labels": an integer volume is a label map
HEADER_SEGMENTATION = "x-neuronova-nifti-segmentation"  # "binary" (default) or "labelmap"
HEADER_SOURCE = "x-neuronova-nifti-source-series"  # a label map's source series (UID or Orthanc ID)
HEADER_DESCRIPTION = "x-neuronova-series-description"  # percent-encoded UTF-8
HEADER_FILENAME = "x-neuronova-filename"  # percent-encoded UTF-8: the default description


@dataclass(frozen=True)
class NiftiSettings:
    """NeuroNova.Nifti."""

    float_companion: bool = False  # a float map also gets a viewable int16 MR series (Rescale Slope/Intercept)
    max_dimension: int = 2048
    max_voxels: int = 256 * 1024 * 1024
    max_inflated_bytes: int = 4096 * 1024 * 1024

    @property
    def limits(self) -> NiftiLimits:
        return NiftiLimits(self.max_dimension, self.max_voxels, self.max_inflated_bytes)


@dataclass(frozen=True)
class ImportOptions:
    separate_volumes: bool = False
    labels: bool = False
    labelmap: bool = False
    source_series: str = ""
    description: str = ""

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> ImportOptions:
        def choice(name: str, allowed: tuple[str, ...]) -> str:
            value = headers.get(name, "").strip().lower()
            if value and value not in allowed:
                raise BadRequest(f"{name}: must be {' or '.join(allowed)}, got {value!r}")
            return value
        volumes = choice(HEADER_VOLUMES, ("separate",))
        content = choice(HEADER_CONTENT, ("image", "labels"))
        kind = choice(HEADER_SEGMENTATION, ("binary", "labelmap"))
        description = unquote(headers.get(HEADER_DESCRIPTION, "")).strip()
        if not description:
            name = unquote(headers.get(HEADER_FILENAME, "")).strip().rsplit("/", 1)[-1]
            description = name.removesuffix(".gz").removesuffix(".nii")
        return cls(volumes == "separate", content == "labels", kind == "labelmap",
                   headers.get(HEADER_SOURCE, "").strip(), description[:64])


@dataclass
class _Planned:
    kind: str  # mr, parametric-map, segmentation, companion
    series: SeriesSpec
    datasets: list[Dataset]


class NiftiImport:
    def __init__(self, pacs: Pacs, store: StoreInstance, settings: NiftiSettings,
                 clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now().astimezone()):
        self.pacs = pacs
        self.store = store
        self.settings = settings
        self._clock = clock

    def to_new_study(self, body: bytes, patient_tags: dict[str, str], options: ImportOptions) -> dict:
        """POST /neuronova/upload/{patient_id}: a new study of the EMR patient."""
        now = self._clock()
        image, volumes, geometry = self._read(body, options)
        if volumes[0].kind == LABELS:
            raise BadRequest("labels: a label map becomes a Segmentation, which references its source series, and a "
                             "new study has no source series: add it to the study of its source "
                             "(POST /neuronova/studies/{study}/nifti)")
        target = new_study(patient_tags, options.description, now)
        return self._import(target, image, volumes, geometry, options, now, generate_uid(), "new study")

    def to_study(self, body: bytes, study_reference: str, options: ImportOptions) -> dict:
        """POST /neuronova/studies/{study}/nifti: new series in a stored study."""
        now = self._clock()
        image, volumes, geometry = self._read(body, options)
        target = existing_study(self.pacs, study_reference)
        frames = target.frames_of_reference()
        if geometry.template:
            frame, why = generate_uid(), f"new: the volume is in template space ({geometry.space})"
        elif len(frames) == 1:
            frame, why = next(iter(frames)), "the study's"
        else:
            frame, why = generate_uid(), (f"new: the study has {len(frames)} frames of reference" if frames
                                          else "new: the study has none")
        return self._import(target, image, volumes, geometry, options, now, frame, why)

    def _read(self, body: bytes, options: ImportOptions) -> tuple[object, list[Volume], Geometry]:
        image = read_nifti(body, self.settings.limits)
        raws = split_volumes(image, options.separate_volumes)
        geometry = volume_geometry(image.header, raws[0].shape)
        slope, intercept = scaling(image)
        volumes = [classify(raw, image.header, options.labels, slope, intercept) for raw in raws]
        return image, volumes, geometry

    def _import(self, target: Target, image, volumes: list[Volume], geometry: Geometry, options: ImportOptions,
                now: datetime.datetime, frame: str, frame_why: str) -> dict:
        kind = volumes[0].kind
        description = options.description or _descrip(image.header) or "NIfTI import"
        derivation = (f"Converted from NIfTI ({geometry.form}, space {geometry.space}) by NeuroNova ingest; "
                      f"voxels as stored in the file")
        sources, source = [], None
        if kind == LABELS:
            source = self._source_series(target, geometry, options.source_series)
            frame, frame_why = source.frame_of_reference, f"the source series' ({source.uid})"
            sources = source_datasets(self.pacs, source)
        number = target.next_series_number()
        planned: list[_Planned] = []
        for index, volume in enumerate(volumes):
            label = description if len(volumes) == 1 else f"{description} (volume {index + 1} of {len(volumes)})"
            spec = SeriesSpec(number, label[:64], frame)
            number += 1
            if kind == IMAGE:
                planned.append(_Planned("mr", spec, mr_slices(volume, geometry, target.study, spec, derivation, now)))
            elif kind == MAP:
                planned.append(_Planned("parametric-map", spec,
                                        [parametric_map(volume, geometry, target.study, spec, description)]))
                if self.settings.float_companion:
                    companion = SeriesSpec(number, f"{label} (viewable int16)"[:64], frame)
                    number += 1
                    planned.append(_Planned("companion", companion, mr_slices(
                        _int16_companion(volume), geometry, target.study, companion,
                        derivation + "; float values approximated in int16 for viewing (the Parametric Map is exact)",
                        now)))
            else:
                planned.append(_Planned("segmentation", spec, [segmentation(
                    volume, geometry, target.study, spec, sources, options.labelmap, description)]))
        files = [(ds.SOPInstanceUID, _encode(ds)) for plan in planned for ds in plan.datasets]
        answers = self._store_all(files)
        return _answer(target, planned, answers, frame, frame_why, source)

    def _source_series(self, target: Target, geometry: Geometry, named: str):
        if target.orthanc_id is None:
            raise BadRequest("labels: no source series to reference in a new study")
        if named:
            for series in target.series:
                if named in (series.uid, series.orthanc_id):
                    if not series.frame_of_reference:
                        raise BadRequest(f"{HEADER_SOURCE}: series {named} has no Frame of Reference to share")
                    return series
            raise BadRequest(f"{HEADER_SOURCE}: series {named} is not in study {target.study.attributes['StudyInstanceUID']}")
        for series in target.series:
            if series.frame_of_reference and matches_geometry(self.pacs, series, geometry):
                return series
        raise BadRequest("labels: no series of the study has the label map's planes (same grid, positions within "
                         "1e-3 mm), so there is no source series to reference: upload the source volume first, "
                         f"or name one ({HEADER_SOURCE})")

    def _store_all(self, files: list[tuple[str, bytes]]) -> list[dict]:
        stored: list[dict] = []
        try:
            for sop, data in files:
                stored.append(self.store(data, sop))
        except NeuroNovaError:
            for answer in stored:
                try:
                    self.pacs.core_delete(f"/instances/{answer['ID']}")
                except NeuroNovaError as error:  # logged: an operator can remove it by hand
                    log.error("NIfTI import: instance %s could not be removed after a failed store: %s",
                              answer.get("ID"), error)
            if stored:
                log.warning("NIfTI import: a store failed after %d of %d instances; those were removed",
                            len(stored), len(files))
            raise
        return stored


def _descrip(header) -> str:
    try:
        return header["descrip"].tobytes().split(b"\0")[0].decode("utf-8", "replace").strip()
    except (KeyError, ValueError):
        return ""


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _int16_companion(volume: Volume) -> Volume:
    """int16 codes whose Rescale Slope/Intercept give the float values back approximately; not-a-number
    voxels get the lowest code."""
    values = volume.voxels.astype(np.float64)
    finite = np.isfinite(values)
    low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
    slope = (high - low) / 65534 if high > low else 1.0
    intercept = low + 32767 * slope  # code -32767 is the lowest value, -32768 stands for not-a-number
    codes = np.full(values.shape, -32768, dtype=np.int16)
    codes[finite] = np.clip(np.round((values[finite] - intercept) / slope), -32767, 32767).astype(np.int16)
    return Volume(IMAGE, codes, slope, intercept)


def _answer(target: Target, planned: list[_Planned], answers: list[dict], frame: str, frame_why: str, source) -> dict:
    series, offset = [], 0
    for plan in planned:
        mine = answers[offset:offset + len(plan.datasets)]
        offset += len(plan.datasets)
        series.append({"kind": plan.kind, "ID": mine[0].get("ParentSeries"), "SeriesInstanceUID": plan.series.uid,
                       "SeriesNumber": plan.series.number, "SeriesDescription": plan.series.description,
                       "SOPClassUID": str(plan.datasets[0].SOPClassUID),
                       "instances": [answer.get("ID") for answer in mine]})
    answer = {
        "success": True,
        "message": "NIfTI converted and stored",
        "patient_id": target.study.patient.get("PatientID"),
        "study": {"ID": answers[0].get("ParentStudy"), "StudyInstanceUID": target.study.attributes["StudyInstanceUID"],
                  "created": target.orthanc_id is None},
        "frame_of_reference": {"uid": frame, "from": frame_why},
        "series": series,
        "instance_count": len(answers),
    }
    if source is not None:
        answer["source_series"] = {"ID": source.orthanc_id, "SeriesInstanceUID": source.uid}
    return answer
