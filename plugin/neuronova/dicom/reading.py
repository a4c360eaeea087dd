"""Reading an uploaded file: validate early, and say precisely why a file is refused."""

from __future__ import annotations

from io import BytesIO

from pydicom import Dataset, dcmread

from ..errors import NotDicom
from .structure import check_complete, meta_end

_REQUIRED = (
    ((0x0008, 0x0016), "SOPClassUID"),
    ((0x0008, 0x0018), "SOPInstanceUID"),
    ((0x0020, 0x000D), "StudyInstanceUID"),
    ((0x0020, 0x000E), "SeriesInstanceUID"),
)


def read_dicom(data: bytes) -> Dataset:
    """Parse a DICOM Part 10 file completely, or raise NotDicom naming what is wrong."""
    if not data:
        raise NotDicom("empty body: expected a DICOM file or a ZIP of DICOM files")
    if len(data) < 132 or data[128:132] != b"DICM":
        raise NotDicom("not a DICOM file: no 'DICM' prefix at byte 128 (DICOM Part 10 file expected)")
    try:
        dataset = dcmread(BytesIO(data))
    except Exception as error:  # pydicom raises many types for malformed input
        raise NotDicom(f"unreadable DICOM file: {error}") from None
    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID")
    if not transfer_syntax:
        raise NotDicom("(0002,0010) TransferSyntaxUID: required in the file meta information, missing")
    check_complete(data, meta_end(data), transfer_syntax)
    for (group, element), keyword in _REQUIRED:
        if not str(dataset.get(keyword, "")).strip():
            raise NotDicom(f"({group:04X},{element:04X}) {keyword}: required, missing or empty")
    return dataset
