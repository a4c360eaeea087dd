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
