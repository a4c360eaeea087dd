"""Reading an uploaded file: validate early, and say precisely why a file is refused."""

from __future__ import annotations

from io import BytesIO

from pydicom import Dataset, dcmread
from pydicom.uid import UID

from ..errors import NotDicom
from ..storage.layout import LayoutError, read_meta
from .structure import check_complete, meta_end

_REQUIRED = (
    ((0x0008, 0x0016), "SOPClassUID"),
    ((0x0008, 0x0018), "SOPInstanceUID"),
    ((0x0020, 0x000D), "StudyInstanceUID"),
    ((0x0020, 0x000E), "SeriesInstanceUID"),
)


def read_dicom(data: bytes, max_inflated: int) -> Dataset:
    """Parse a DICOM Part 10 file completely, or raise NotDicom naming what is wrong. The structure
    is walked first (truncation, nesting, inflation), so that pydicom only ever parses what it can."""
    if not data:
        raise NotDicom("empty body: expected a DICOM file or a ZIP of DICOM files")
    if len(data) < 132 or data[128:132] != b"DICM":
        raise NotDicom("not a DICOM file: no 'DICM' prefix at byte 128 (DICOM Part 10 file expected)")
    try:
        transfer_syntax = read_meta(data).syntax
    except LayoutError as error:
        raise NotDicom(f"unreadable file meta information: {error}") from None
    if not transfer_syntax:
        raise NotDicom("(0002,0010) TransferSyntaxUID: required in the file meta information, missing")
    check_complete(data, meta_end(data), transfer_syntax, max_inflated)
    try:
        dataset = dcmread(BytesIO(data))
        for _ in dataset.iterall():  # pydicom converts values lazily: an unknown VR fails here, not later
            pass
    except Exception as error:  # pydicom raises many types for malformed input
        raise NotDicom(f"unreadable DICOM file: {error}") from None
    for (group, element), keyword in _REQUIRED:
        if not str(dataset.get(keyword, "")).strip():
            raise NotDicom(f"({group:04X},{element:04X}) {keyword}: required, missing or empty")
    _check_pixel_encoding(dataset, transfer_syntax)
    return dataset


def _check_pixel_encoding(dataset: Dataset, transfer_syntax: str) -> None:
    """Pixel Data encapsulated exactly when the transfer syntax says so (PS3.5 A.4): a file whose meta
    says JPEG over native pixels cannot be read, nor written back by anyone."""
    element = dataset.get((0x7FE0, 0x0010))
    if element is None:
        return
    encapsulated = element.is_undefined_length
    if UID(transfer_syntax).is_encapsulated != encapsulated:
        name = UID(transfer_syntax).name
        raise NotDicom(f"(7FE0,0010) PixelData: {'encapsulated' if encapsulated else 'native'} pixel data under "
                       f"transfer syntax {transfer_syntax} ({name}), which requires "
                       f"{'encapsulated' if not encapsulated else 'native'} pixel data (PS3.5 A.4)")
