"""Real DICOM test files (pydicom and pydicom-data) and small helpers to read what Orthanc stored."""

from __future__ import annotations

import io
import zipfile
from io import BytesIO

from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file


def read_bytes(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as f:
        return f.read()


def parse(data: bytes) -> Dataset:
    return dcmread(BytesIO(data))


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tiny_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, "JPEG")
    return buffer.getvalue()


def make_series(directory, count: int, base: str = "MR_small.dcm", study_uid: str | None = None,
                **patient) -> list[str]:
    """Write `count` instances of one new series (new SOP/series UIDs, given study) with the given patient tags."""
    import os

    from pydicom.uid import generate_uid

    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    paths = []
    for index in range(count):
        dataset = parse(read_bytes(base))
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.InstanceNumber = index + 1
        for keyword, value in patient.items():
            setattr(dataset, keyword, value)
        path = os.path.join(str(directory), f"{series_uid}-{index}.dcm")
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
